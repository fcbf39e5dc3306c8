"""The executor kinds behind one small interface, and the one place that picks between them.

- ``slurm``: submitit's Slurm executor (sbatch, one job per stage, an array per sweep).
- ``local``: submitit's local executor (a subprocess on this machine).
- ``inline``: the stage runs in this process. Used inside an allocation
  (``sbatch slurm/repro.sbatch``), where submitting a job from the job would
  queue behind itself. submitit's own ``debug`` executor is not used for this:
  on failure it opens pdb on a terminal that ``dvc repro`` does not have.

Each kind is a ``Backend``: ``executor`` (what submits), ``watch`` (poll, outcome and
cancel of a job this process holds), ``states`` and ``cancel`` (of jobs recorded
earlier, by id: ``hpcpipe status``/``cancel``, sweeps), and ``reattach`` (a recorded
job still worth waiting for). Callers ask ``backend(kind)`` and never branch on the
kind themselves. All jobs have the small part of submitit's Job interface the
launcher uses (``job_id``, ``state``, ``done()``, ``result()``, ``cancel()``, ``paths``),
so the stage code cannot tell which one ran it. ``arrays`` says how a sweep's job
array runs on the kind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hpcpipe.config import Profile
from hpcpipe.launch import slurm_state
from hpcpipe.launch.interrupts import signals_held
from hpcpipe.launch.profiles import executor_parameters
from hpcpipe.launch.watch import LocalWatch, SlurmWatch, recorded_outcome
from hpcpipe.liveness import running_command
from hpcpipe.queue_cache import QueueCache

JobState = slurm_state.JobState
LOCAL_CONTROLLER = "submitit.local._local"  # the module submitit runs a local job under (python -m)


class InlineJob:
    """A finished in-process run, shaped like a submitit Job."""

    def __init__(self, func: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.job_id = f"inline-{os.getpid()}"
        self.paths = None  # output goes straight to this process's terminal
        self._error: BaseException | None = None
        self._result: Any = None
        cwd = os.getcwd()
        try:
            self._result = func(*args)
        except Exception as err:  # the launcher reports it like a failed job
            self._error = err
        finally:
            os.chdir(cwd)  # the job side chdirs into the project; undo for the caller

    @property
    def state(self) -> str:
        return "FAILED" if self._error else "COMPLETED"

    def done(self) -> bool:
        return True

    def result(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> None:
        """Nothing to cancel: by the time the caller has the job, it has finished."""


class InlineExecutor:
    def submit(self, func: Callable[..., Any], *args: Any) -> InlineJob:
        return InlineJob(func, args)


class Backend:
    """One executor kind. The defaults suit kinds whose jobs end with their launcher."""

    kind = ""
    # A job submitted from inside an allocation must not inherit the allocation's SLURM_*
    # variables (SLURM_MEM_PER_NODE, SLURM_CPUS_PER_TASK, ...): sbatch would apply them.
    strips_slurm_env = False
    runs_in_this_process = False  # "submitting" runs the stage itself (inline)

    def signals_while_submitting(self) -> contextlib.AbstractContextManager[None]:
        """How SIGINT/SIGTERM are held while a job is submitted and recorded (see
        ``interrupts``): noted, and raised once the job is in hand."""
        return signals_held(block=False)

    # How a job array (a sweep's points) runs on this kind: "queued" (one submission; the
    # scheduler starts tasks as slots free up, and keeps them after the submitter ends),
    # "paced" (the submitter starts each task as a slot frees up, so it must stay), or ""
    # (not at all: the kind runs its one job in the submitting process).
    arrays = ""

    def executor(self, profile: Profile, stage: str, folder: Path, requeue: bool = False) -> Any:
        raise NotImplementedError

    def watch(self, job: Any, poll_s: float = 2.0) -> LocalWatch | SlurmWatch:
        """``poll_s``: how often the scheduler may be asked about the job."""
        return LocalWatch(job)

    def state(self, job_id: str, folder: Path) -> JobState:
        return JobState("UNKNOWN")

    def states(
        self, jobs: Iterable[tuple[str, Path]], max_age_s: float = 0.0, newer_than: float = 0.0
    ) -> dict[str, JobState]:
        """Recorded jobs' states by id, asking the scheduler as few times as it can; an
        answer up to ``max_age_s`` old (a watcher's poll_s; 0: asked now) and asked at or
        after ``newer_than`` (the latest submission: an older one cannot know it) will do."""
        return {job_id: self.state(job_id, folder) for job_id, folder in jobs}

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel recorded jobs (queued or running) by id."""

    def reattach(self, job_id: str, folder: Path) -> tuple[Any, JobState] | None:
        """A recorded job that may still be running, as a job to watch again, with its state."""
        return None


class SlurmBackend(Backend):
    kind = "slurm"
    strips_slurm_env = True
    arrays = "queued"

    def signals_while_submitting(self) -> contextlib.AbstractContextManager[None]:
        """Blocked, so that sbatch (which inherits the mask) is not killed half-way either."""
        return signals_held(block=True)

    def executor(self, profile: Profile, stage: str, folder: Path, requeue: bool = False) -> Any:
        import submitit  # here, not at module level: `hpcpipe --help` and config errors stay fast

        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.max_timeouts)
        executor.update_parameters(**executor_parameters(profile, stage, requeue))
        return executor

    def watch(self, job: Any, poll_s: float = 2.0) -> SlurmWatch:
        return SlurmWatch(job, poll_s)

    def state(self, job_id: str, folder: Path) -> JobState:
        return slurm_state.query(job_id, QueueCache.for_folder(folder))

    def states(
        self, jobs: Iterable[tuple[str, Path]], max_age_s: float = 0.0, newer_than: float = 0.0
    ) -> dict[str, JobState]:
        """The project's one squeue answer for all of them (``queue_cache``), one sacct for
        those that left it."""
        jobs = list(jobs)
        if not jobs:
            return {}
        queue = QueueCache.for_folder(jobs[0][1])
        return slurm_state.query_many([job_id for job_id, _ in jobs], queue, max_age_s, newer_than)

    def cancel(self, job_ids: Sequence[str]) -> None:
        """scancel; a refusal raises (CalledProcessError), so nobody is told "cancelled" wrongly."""
        if job_ids:
            subprocess.run(["scancel", *job_ids], capture_output=True, check=True, timeout=30)

    def reattach(self, job_id: str, folder: Path) -> tuple[Any, JobState] | None:
        state = slurm_state.query(job_id, QueueCache.for_folder(folder))
        if state.final or state.state == "UNKNOWN":
            return None
        import submitit

        return submitit.SlurmJob(folder=folder, job_id=job_id), state


def local_controller_alive(job_id: str, folder: Path | None = None) -> bool:
    """Whether ``job_id`` is the pid of submitit's local job controller (for ``folder``,
    when given). A pid alone is not enough: once the job has ended, the system may give its
    pid to any process, which ``hpcpipe cancel`` must never signal."""
    # a list, or `sh -c "... python -m submitit.local._local FOLDER"`
    joined = running_command(int(job_id)) if job_id.isdigit() else None
    if joined is None or LOCAL_CONTROLLER not in joined:
        return False
    return folder is None or str(folder.resolve()) in joined or str(folder.absolute()) in joined


class LocalBackend(Backend):
    """A local job's id is its controller's pid: alive (and still that controller) means
    running; its result pickle says how it ended; neither means it was killed (CANCELLED)."""

    kind = "local"
    arrays = "paced"

    def executor(self, profile: Profile, stage: str, folder: Path, requeue: bool = False) -> Any:
        import submitit

        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=profile.max_timeouts)
        executor.update_parameters(**executor_parameters(profile, stage, requeue))
        return executor

    def state(self, job_id: str, folder: Path) -> JobState:
        if local_controller_alive(job_id, folder):
            return JobState("RUNNING", node="localhost")
        outcome = recorded_outcome(folder / f"{job_id}_0_result.pkl")
        if outcome is not None:
            return JobState("COMPLETED" if outcome else "FAILED", node="localhost")
        return JobState("CANCELLED")

    def cancel(self, job_ids: Sequence[str]) -> None:
        for job_id in job_ids:  # the local controller turns SIGINT into stopping its task
            if local_controller_alive(job_id):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(job_id), signal.SIGINT)


class InlineBackend(Backend):
    kind = "inline"
    runs_in_this_process = True

    def signals_while_submitting(self) -> contextlib.AbstractContextManager[None]:
        """Not held: "submitting" runs the stage itself, which Ctrl-C must stop."""
        return contextlib.nullcontext()

    def executor(self, profile: Profile, stage: str, folder: Path, requeue: bool = False) -> Any:
        return InlineExecutor()


BACKENDS: dict[str, Backend] = {b.kind: b for b in (SlurmBackend(), LocalBackend(), InlineBackend())}


def backend(kind: str) -> Backend:
    return BACKENDS[kind]


def make_executor(profile: Profile, stage: str, folder: Path, requeue: bool = False) -> Any:
    """An executor for ``stage`` with the profile's resources applied (``requeue``: see
    ``profiles.executor_parameters``)."""
    return backend(profile.executor).executor(profile, stage, folder, requeue)
