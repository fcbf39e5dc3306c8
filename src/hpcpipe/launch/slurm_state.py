"""What Slurm says about the launcher's jobs, asked on a budget.

submitit's own watcher asks ``sacct`` with a back-off that grows to a minute, fine for
notebooks but too slow for a launcher that must notice a dead job in seconds; asking
``squeue -j`` for every job every two seconds is too much for a shared scheduler.
Here: the project's one shared ``squeue`` answer (``hpcpipe.queue_cache``: every job
of the user, at most one call per poll for the whole project) while a job is queued or
running (it has the PENDING reason, the node and the restart count) and for
MinJobAge after its end (squeue ``-t all`` keeps the final state), and ``sacct`` only
for jobs that have left that answer (one call for all of them: the final state, exit
code and elapsed time). Parsers are pure and tested as text.

Not every site runs accounting, and slurmdbd is sometimes down: then a job that left
squeue's answer has no record at all, and ``states_in`` says so (``NO_RECORD``) apart
from Slurm not answering at all (``UNREACHABLE``): the watcher then reads the job's
own result file and gives up after a limit instead of polling forever (see ``watch``).
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from hpcpipe.queue_cache import Answer, QueueCache, Queued

# States after which the job will not run again on its own (sacct/squeue names).
FINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "OUT_OF_MEMORY",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "LOST",  # not Slurm's: hpcpipe's word for a job nobody can account for (see watch)
    }
)
NO_RECORD = "no record"  # JobState("UNKNOWN").reason: Slurm answered and knows no such job
UNREACHABLE = "Slurm not answering"  # ... neither squeue nor sacct answered at all
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Elapsed"
COMMAND_TIMEOUT_S = 20


@dataclass(frozen=True)
class JobState:
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, ... ; UNKNOWN if Slurm has no record (yet)
    reason: str = ""  # why it is pending (Priority, Resources, ...); empty otherwise
    node: str = ""
    elapsed: str = ""
    exit_code: str = ""
    restarts: int = 0  # times Slurm requeued the job (squeue's RestartCnt)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def describe(self) -> str:
        parts = [self.state]
        if self.state in ("PENDING", "UNKNOWN", "LOST") and self.reason and self.reason != "None":
            parts.append(f"({self.reason})")
        if self.node and self.state != "PENDING":
            parts.append(f"on {self.node}")
        if self.exit_code and self.final and self.state != "COMPLETED":
            parts.append(f"exit code {self.exit_code}")
        return " ".join(parts)


def parse_sacct(text: str, job_id: str) -> JobState | None:
    """Parse ``sacct -n -P -X -o SACCT_FIELDS``; None when sacct has no record of the job.

    ``CANCELLED by 0`` is reported as ``CANCELLED``; a requeued job's latest line wins.
    """
    found = None
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 5 and fields[0] == job_id:
            _, state, exit_code, node, elapsed = fields
            found = JobState(state=state.split()[0], node=node, elapsed=elapsed, exit_code=exit_code)
    return found


_ARRAY_ID = re.compile(r"^(\d+)_(\d+|\[[^\]]*\])$")


def _task_ids(spec: str) -> list[int]:
    """``[0-3,7%2]`` (a pending array's tasks, as Slurm folds them) -> [0, 1, 2, 3, 7]."""
    ids: list[int] = []
    for part in spec.strip("[]").split("%")[0].split(","):
        first, _, last = part.partition("-")
        if first.isdigit() and (not last or last.isdigit()):
            ids.extend(range(int(first), int(last or first) + 1))
    return ids


@dataclass(frozen=True)
class ArrayStates:
    """The tasks of one job array: each task's own record, and ``rest``, the array's
    record for tasks that never got one (sacct shows tasks cancelled before they
    started as one line with the bare array id)."""

    tasks: dict[str, JobState]
    rest: JobState | None = None

    def get(self, task: str) -> JobState:
        return self.tasks.get(task) or self.rest or JobState("UNKNOWN")


def parse_array(text: str, array_id: str, *, sacct: bool) -> ArrayStates:
    """``squeue -r -o SQUEUE_FORMAT`` or (``sacct``) ``sacct -X -o SACCT_FIELDS`` lines of
    one job array -> each task's state, keyed "ID_TASK".

    Folded pending lines (``123_[2-3%2]``) are unfolded; a later line for a task wins
    (sacct lists a requeued task's attempts in order).
    """
    states: dict[str, JobState] = {}
    rest = None
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        state = fields[1].split()[0] if fields[1] else "UNKNOWN"
        if sacct:  # the third field is the exit code
            record = JobState(state=state, node=fields[3], elapsed=fields[4], exit_code=fields[2])
        else:
            record = JobState(state=state, reason=fields[2], node=fields[3], elapsed=fields[4])
        if fields[0] == array_id:
            rest = record
            continue
        match = _ARRAY_ID.match(fields[0])
        if not match or match.group(1) != array_id:
            continue
        tasks = _task_ids(match.group(2)) if match.group(2).startswith("[") else [int(match.group(2))]
        for task in tasks:
            states[f"{array_id}_{task}"] = record
    return ArrayStates(states, rest)


def _ask(command: list[str]) -> tuple[int | None, str, str]:
    """(exit status, stdout, stderr); status None when the command could not run or timed out."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, "", str(err)
    return result.returncode, result.stdout, result.stderr


def _run(command: list[str]) -> str | None:
    status, out, _ = _ask(command)
    return out if status == 0 else None


def from_queue(job: Queued) -> JobState:
    return JobState(job.state, reason=job.reason, node=job.node, elapsed=job.elapsed, restarts=job.restarts)


def states_in(answer: Answer, job_ids: Iterable[str]) -> dict[str, JobState]:
    """Each job's state: squeue's word where ``answer`` has the job (a final one included),
    else ``sacct``'s, asked once for all the jobs that left the answer (an array once for
    all its tasks); ``UNKNOWN`` (``NO_RECORD`` or ``UNREACHABLE``) where neither knows it."""
    found: dict[str, JobState] = {}
    left = []
    for job_id in job_ids:
        queued = answer.jobs.get(job_id) if answer.jobs is not None else None
        if queued is not None:
            found[job_id] = from_queue(queued)
        else:
            left.append(job_id)
    if not left:
        return found
    ids = sorted({job_id.split("_")[0] for job_id in left})
    accounted = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", SACCT_FIELDS])
    arrays: dict[str, ArrayStates] = {}
    for job_id in left:
        state = None
        if accounted is not None and "_" in job_id:
            array_id = job_id.split("_")[0]
            if array_id not in arrays:
                arrays[array_id] = parse_array(accounted, array_id, sacct=True)
            state = arrays[array_id].tasks.get(job_id) or arrays[array_id].rest
        elif accounted is not None:
            state = parse_sacct(accounted, job_id)
        if state is None:
            answered = answer.jobs is not None or accounted is not None
            state = JobState("UNKNOWN", reason=NO_RECORD if answered else UNREACHABLE)
        found[job_id] = state
    return found


def query_many(
    job_ids: Iterable[str], queue: QueueCache | None = None, max_age_s: float = 0.0, newer_than: float = 0.0
) -> dict[str, JobState]:
    """The jobs' states from an answer at most ``max_age_s`` old (0: asked now, for a
    one-off question such as ``hpcpipe status``), shared through ``queue``."""
    answer = (queue or QueueCache(None)).answer(max_age_s, newer_than)
    return states_in(answer, job_ids)


def query(job_id: str, queue: QueueCache | None = None) -> JobState:
    """One job's state now (see ``states_in``)."""
    return query_many([job_id], queue)[job_id]


# sacct's state for an attempt that Slurm ended by requeueing the job, in words
REQUEUE_CAUSES = {
    "REQUEUED": "requeued (scontrol requeue, or at the time-limit warning after a checkpoint)",
    "PREEMPTED": "preempted",
    "NODE_FAIL": "its node failed",
    "TIMEOUT": "time limit reached",
    "BOOT_FAIL": "its node failed to boot",
}


def requeue_cause(job_id: str) -> str:
    """Why the job's last attempt ended in a requeue, from ``sacct -D`` (every attempt);
    "reason unknown" without accounting."""
    accounted = _run(["sacct", "-n", "-P", "-X", "-D", "-j", job_id, "-o", SACCT_FIELDS])
    attempts = [
        line.split("|")[1].split()[0]
        for line in (accounted or "").splitlines()
        if line.split("|")[0] == job_id and len(line.split("|")) == 5
    ]
    ended = [state for state in attempts if state not in ("PENDING", "RUNNING", "REQUEUED_HOLD")]
    if not ended:
        return "reason unknown: no accounting record"
    return REQUEUE_CAUSES.get(ended[-1], ended[-1].lower())
