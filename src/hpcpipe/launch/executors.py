"""The one place that turns a profile's executor kind into a submitit executor.

- ``slurm``: submitit's Slurm executor (sbatch, one job per stage).
- ``local``: submitit's local executor (a subprocess on this machine).
- ``inline``: the stage runs in this process. Used inside an allocation
  (``sbatch slurm/repro.sbatch``), where submitting a job from the job would
  queue behind itself. submitit's own ``debug`` executor is not used for this:
  on failure it opens pdb on a terminal that ``dvc repro`` does not have.

All three return objects with the small part of submitit's Job interface the
launcher uses (``job_id``, ``state``, ``done()``, ``result()``, ``cancel()``,
``paths``), so the stage code cannot tell which one ran it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcpipe.config import Profile
from hpcpipe.launch.profiles import executor_parameters


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


def make_executor(profile: Profile, stage: str, folder: Path) -> Any:
    """An executor for ``stage`` with the profile's resources applied.

    submitit is imported here, not at module level, so ``hpcpipe --help`` and
    config errors stay fast.
    """
    if profile.executor == "inline":
        return InlineExecutor()
    import submitit

    kind = submitit.SlurmExecutor if profile.executor == "slurm" else submitit.LocalExecutor
    executor = kind(folder=folder, max_num_timeout=profile.max_timeouts)
    executor.update_parameters(**executor_parameters(profile, stage))
    return executor
