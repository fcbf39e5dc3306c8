"""What Slurm says about one job, asked often and cheaply.

submitit's own watcher asks ``sacct`` with a back-off that grows to a minute,
fine for notebooks but too slow for a launcher that must notice a dead job in
seconds. Here: ``squeue`` while the job is queued or running (it has the
PENDING reason and the node), ``sacct`` once it has left the queue (the final
state, exit code and elapsed time). Parsers are pure and tested as text; only
``query`` runs commands.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

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
    }
)
SQUEUE_FORMAT = "%i|%T|%r|%N|%M"
SACCT_FIELDS = "JobID,State,ExitCode,NodeList,Elapsed"
COMMAND_TIMEOUT_S = 20


@dataclass(frozen=True)
class JobState:
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, ... ; UNKNOWN if Slurm has no record (yet)
    reason: str = ""  # why it is pending (Priority, Resources, ...); empty otherwise
    node: str = ""
    elapsed: str = ""
    exit_code: str = ""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def describe(self) -> str:
        parts = [self.state]
        if self.state == "PENDING" and self.reason and self.reason != "None":
            parts.append(f"({self.reason})")
        if self.node and self.state != "PENDING":
            parts.append(f"on {self.node}")
        if self.exit_code and self.final and self.state != "COMPLETED":
            parts.append(f"exit code {self.exit_code}")
        return " ".join(parts)


def parse_squeue(text: str, job_id: str) -> JobState | None:
    """Parse ``squeue -h -o SQUEUE_FORMAT``; None when the job is not in the queue."""
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) == 5 and fields[0] == job_id:
            _, state, reason, node, elapsed = fields
            return JobState(state=state, reason=reason, node=node, elapsed=elapsed)
    return None


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


def query_array(array_id: str) -> ArrayStates | None:
    """Every task of one array now: ``squeue -r`` for queued and running tasks, sacct for
    the rest; None when neither command answered (no Slurm here, or SLURM_CONF unset)."""
    accounted = _run(["sacct", "-n", "-P", "-X", "-j", array_id, "-o", SACCT_FIELDS])
    queued = _run(["squeue", "-h", "-r", "-j", array_id, "-o", SQUEUE_FORMAT])
    if accounted is None and queued is None:
        return None
    found = parse_array(accounted or "", array_id, sacct=True)
    if queued is not None:
        live = parse_array(queued, array_id, sacct=False)
        found.tasks.update({k: v for k, v in live.tasks.items() if not v.final})
    return found


def _run(command: list[str]) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def query(job_id: str) -> JobState:
    """The job's state now: squeue first (cheap, live), sacct for jobs that left the queue."""
    queued = _run(["squeue", "-h", "-j", job_id, "-o", SQUEUE_FORMAT])
    if queued is not None:
        state = parse_squeue(queued, job_id)
        if state is not None and not state.final:
            return state
    accounted = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", SACCT_FIELDS])
    if accounted is not None:
        state = parse_sacct(accounted, job_id)
        if state is not None:
            return state
    return JobState(state="UNKNOWN")
