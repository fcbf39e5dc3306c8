"""How the launcher asks a submitted job where it stands and how it ended, per executor.

- Slurm: ``squeue``/``sacct`` through ``slurm_state`` every poll (submitit's
  watcher backs off to a minute), and the job's result pickle read directly
  once Slurm says the job is over, so a dead job is reported within a poll or two.
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

RESULT_GRACE_S = 10.0  # a shared filesystem may show the result pickle a little after sacct says COMPLETED
NO_RECORD_LIMIT_S = 60.0  # Slurm knows no such job and it left no result (yet: shared filesystem lag)
UNREACHABLE_LIMIT_S = 1800.0  # slurmctld down: a restart or failover takes minutes, not half an hour
CANCEL_TIMEOUT_S = 30.0


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
    so its end is seen as soon as it is written; Slurm is asked at most every ``interval_s``
    (the profile's poll_s), which is how a job that dies without a result is seen."""

    def __init__(self, job: Any, interval_s: float = 2.0) -> None:
        self.job = job
        self.interval_s = interval_s
        self.last = slurm_state.JobState("UNKNOWN")
        self._silent_since: float | None = None
        self._restarts = 0
        self._asked_at = float("-inf")

    def poll(self) -> tuple[str, bool]:
        ended = self._ended_by_job()
        if ended is not None:
            self.last = ended
            return ended.describe(), True
        now = time.monotonic()
        if now - self._asked_at < self.interval_s:
            return self.last.describe(), False
        self._asked_at = now
        state = slurm_state.query(str(self.job.job_id))
        if state.state == "UNKNOWN":
            state = self._without_slurm(state)
        else:
            self._silent_since = None
        self.last = state
        return state.describe(), state.final

    def _ended_by_job(self) -> slurm_state.JobState | None:
        """The job wrote that it succeeded (submitit moves its result into place whole): it
        is over. A failure is not taken on its word: an attempt that Slurm kills to requeue
        it (``scontrol requeue``, preemption) also writes one before the next attempt runs,
        so a failure waits for Slurm to say the job is over."""
        pickle_path = Path(self.job.paths.result_pickle)
        if not pickle_path.exists():
            return None
        if recorded_outcome(pickle_path):
            return slurm_state.JobState("COMPLETED", reason="from its result file")
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
