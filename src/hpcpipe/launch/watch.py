"""How the launcher asks a submitted job where it stands and how it ended, per executor.

- Slurm: the job's own result file is looked at on every poll (a stat, every quarter
  second), so a job that finished is seen at once; Slurm is asked through the project's
  shared squeue answer (``hpcpipe.queue_cache``, read through ``slurm_state``) when the
  answer this watcher holds is older than the profile's ``poll_s`` (10 s on the site
  profiles: one squeue per 10 s for every launcher, sweep and sync of the project),
  and, while the job stays PENDING long, less often (``PENDING_BACKOFF``: up to a
  minute, as submitit's own watcher). A job that writes a failure (its command or
  function killed, by scancel or on its node) makes the watcher ask Slurm at once, to
  tell a failure from a requeue: it is reported within a second or two of Slurm
  knowing. One that dies without a word (a node lost, OOM-killed whole) is seen at
  the next answer: within ``poll_s`` and one squeue round trip. The first answer is
  one asked after the submission (an older one cannot know the job).
  When Slurm has no record of the job (no accounting, and squeue has forgotten it)
  the result pickle alone tells how it ended; with neither, the job is LOST after
  ``NO_RECORD_LIMIT_S`` (``UNREACHABLE_LIMIT_S`` while Slurm does not answer at all),
  so the launcher never polls forever. A requeue (RestartCnt going up) is said once,
  with its cause from ``sacct -D``.
- local: the subprocess, through submitit's LocalJob.
- inline: already finished when submitted.

``executors.backend(kind).watch(job)`` picks the one for a job.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpipe.launch import slurm_state
from hpcpipe.queue_cache import REFRESH_S, QueueCache

RESULT_GRACE_S = 10.0  # a shared filesystem may show the result pickle a little after sacct says COMPLETED
NO_RECORD_LIMIT_S = 60.0  # Slurm knows no such job and it left no result (yet: shared filesystem lag)
UNREACHABLE_LIMIT_S = 1800.0  # slurmctld down: a restart or failover takes minutes, not half an hour
CANCEL_TIMEOUT_S = 30.0
# (pending at least this long, poll_s times this between answers): a job that waits in the
# queue for hours needs no answer every 10 s; another watcher's fresher answer is used anyway
PENDING_BACKOFF = ((600.0, 6.0), (120.0, 3.0))
# after the job writes a failure, Slurm is asked at once and then this often for a while:
# it says whether the job is over (reported) or requeued (a few calls, once per attempt)
FAILURE_RECHECK_S = 1.0
FAILURE_WINDOW_S = 10.0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    state: str
    reason: str = ""  # why it failed, one line


def outcome_from_result(pickle_path: Path, state: str) -> Outcome | None:
    """The job's own account of how it ended (submitit's result pickle), if it wrote one."""
    if not pickle_path.exists():
        return None
    from submitit.core.utils import pickle_load

    status, value = pickle_load(pickle_path)
    if status == "success":
        return Outcome(True, state)
    reason = _last_line(str(value))  # the exception line of the job's traceback
    # submitit ends a non-checkpointable job at the time-limit warning signal with this
    # error, so Slurm records FAILED; the user needs to hear it ran out of time.
    return Outcome(False, "TIMEOUT" if "timed-out" in reason else "FAILED", reason)


class SlurmWatch:
    """Polled often (``poll``): the job's own result file is looked at every time, a stat,
    so its end is seen as soon as it is written; Slurm's answer is renewed when the one
    held is older than ``interval_s`` (the profile's poll_s), through the project's
    shared answer (``queue``, by default the cache of the project holding the job's
    folder), which is how a job that dies without a result is seen."""

    def __init__(self, job: Any, interval_s: float = REFRESH_S, queue: QueueCache | None = None) -> None:
        self.job = job
        self.interval_s = interval_s
        self.queue = queue or QueueCache.for_folder(Path(job.paths.result_pickle).parent)
        self.since = time.time()  # an answer asked before this may not know the job yet
        self.last = slurm_state.JobState("UNKNOWN")
        self._silent_since: float | None = None
        self._pending_since: float | None = None
        self._restarts = 0
        self._answered_at = float("-inf")  # when the answer ``last`` comes from was asked
        self._failure_written: tuple[int, int] | None = None  # the failure result last seen
        self._failed_at = 0.0  # when it was seen: Slurm's answer must be newer

    def poll(self) -> tuple[str, bool]:
        ended = self._ended_by_job()
        if ended is not None:
            self.last = ended
            return ended.describe(), True
        max_age = self._max_age()
        if time.time() - self._answered_at < max_age and self._answered_at >= self._failed_at:
            return self.last.describe(), False
        answer = self.queue.answer(max_age, newer_than=max(self.since, self._failed_at))
        self._answered_at = answer.asked_at
        job_id = str(self.job.job_id)
        state = slurm_state.states_in(answer, [job_id])[job_id]
        if state.state == "UNKNOWN":
            state = self._without_slurm(state)
        else:
            self._silent_since = None
        if state.state != "PENDING":
            self._pending_since = None
        elif self._pending_since is None:
            self._pending_since = time.monotonic()
        self.last = state
        return state.describe(), state.final

    def _max_age(self) -> float:
        """poll_s; less just after the job wrote a failure; more while it has been PENDING
        long (``PENDING_BACKOFF``)."""
        if time.time() - self._failed_at < FAILURE_WINDOW_S:
            return FAILURE_RECHECK_S
        if self._pending_since is not None:
            pending_for = time.monotonic() - self._pending_since
            for after, factor in PENDING_BACKOFF:
                if pending_for >= after:
                    return self.interval_s * factor
        return self.interval_s

    def _ended_by_job(self) -> slurm_state.JobState | None:
        """The job wrote that it succeeded (submitit moves its result into place whole): it
        is over. A failure is not taken on its word: an attempt that Slurm kills to requeue
        it (``scontrol requeue``, preemption) also writes one before the next attempt runs,
        so a failure waits for Slurm to say the job is over, and makes the watcher ask
        Slurm at once and then every ``FAILURE_RECHECK_S`` for ``FAILURE_WINDOW_S``: a job
        cancelled by someone else or killed on its node (its command or function gets the
        signal, and the job writes its failure) is reported within seconds whatever poll_s."""
        pickle_path = Path(self.job.paths.result_pickle)
        try:
            found = pickle_path.stat()
        except FileNotFoundError:
            return None
        written = (found.st_ino, found.st_mtime_ns)  # each result is a new file moved into place
        if written == self._failure_written:  # the failure already seen: Slurm is being asked
            return None
        if recorded_outcome(pickle_path):
            return slurm_state.JobState("COMPLETED", reason="from its result file")
        self._failure_written, self._failed_at = written, time.time()
        return None

    def _without_slurm(self, state: slurm_state.JobState) -> slurm_state.JobState:
        """Slurm cannot say: the job's own result file can; else wait, up to a limit."""
        recorded = recorded_outcome(Path(self.job.paths.result_pickle))
        if recorded is not None:
            return slurm_state.JobState("COMPLETED" if recorded else "FAILED", reason="from its result file")
        now = time.monotonic()
        self._silent_since = self._silent_since or now
        limit = NO_RECORD_LIMIT_S if state.reason == slurm_state.NO_RECORD else UNREACHABLE_LIMIT_S
        if now - self._silent_since > limit:
            why = f"{state.reason} for {limit:.0f} s, and the job left no result"
            return slurm_state.JobState("LOST", reason=why)
        return state

    def news(self) -> list[str]:
        """One line per requeue since the last call: Slurm sent the job back to the queue."""
        if self.last.restarts <= self._restarts:
            return []
        self._restarts = self.last.restarts
        cause = slurm_state.requeue_cause(str(self.job.job_id))
        return [f"job {self.job.job_id} requeued by Slurm ({cause}); attempt {self._restarts + 1}"]

    def outcome(self) -> Outcome:
        pickle_path = Path(self.job.paths.result_pickle)
        if self.last.state == "COMPLETED":
            deadline = time.monotonic() + RESULT_GRACE_S
            while not pickle_path.exists() and time.monotonic() < deadline:
                time.sleep(0.5)
        recorded = outcome_from_result(pickle_path, self.last.state)
        if recorded is not None and recorded.ok and self.last.state != "COMPLETED":
            # cancelled or out of time after the stage returned: Slurm's word wins
            why = f"Slurm says {self.last.describe()}, although the job's result file says it finished"
            return Outcome(False, self.last.state, why)
        if recorded is not None:
            return recorded
        return Outcome(False, self.last.state, f"Slurm state {self.last.describe()}; the job left no result")

    def cancel(self) -> None:
        """scancel; a refusal or a timeout raises, so nobody is told "cancelled" wrongly."""
        subprocess.run(
            ["scancel", str(self.job.job_id)],
            capture_output=True,
            text=True,
            check=True,
            timeout=CANCEL_TIMEOUT_S,
        )


class LocalWatch:
    def __init__(self, job: Any) -> None:
        self.job = job

    def poll(self) -> tuple[str, bool]:
        finished = self.job.done()
        return self.job.state, finished

    def news(self) -> list[str]:
        return []

    def outcome(self) -> Outcome:
        paths = getattr(self.job, "paths", None)  # None: an inline job, which has no result file
        if paths is not None and not Path(paths.result_pickle).exists():
            # A local task writes its result on this machine before its controller ends, so
            # none now is none ever (cancelled, killed). submitit's result() would wait 15 s
            # for it, as for a shared filesystem. The job's last stderr line says why.
            return Outcome(False, "FAILED")
        try:
            self.job.result()
        except Exception as err:  # submitit's own error types, or the stage's for inline
            paths = getattr(self.job, "paths", None)
            recorded = outcome_from_result(Path(paths.result_pickle), "FAILED") if paths else None
            return recorded or Outcome(False, "FAILED", _last_line(str(err)) or type(err).__name__)
        return Outcome(True, "COMPLETED")

    def cancel(self) -> None:
        self.job.cancel()


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def recorded_outcome(pickle_path: Path) -> bool | None:
    """Whether a job's result pickle says it succeeded; None when it wrote none."""
    if not pickle_path.exists():
        return None
    from submitit.core.utils import pickle_load

    status, _ = pickle_load(pickle_path)
    return status == "success"
