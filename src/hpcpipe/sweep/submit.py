"""Submitting a sweep's points, in the way its executor kind runs a job array.

``backend(kind).arrays`` says which: "queued" (Slurm) is ONE ``sbatch`` of a job array
(``--array=0-N%P``) that the scheduler paces; "paced" (local) is ``LocalPool``, which
starts points here as slots free up. Both have the same three calls, so the code that
drives a sweep never asks which kind it has: ``start`` (the first submission), ``fill``
(each poll: start what may start now) and ``cancel`` (what only this process can reach).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

from hpcpipe.config import Profile
from hpcpipe.console import say
from hpcpipe.launch.executors import backend
from hpcpipe.launch.submission import SubmitRefused, Unrecorded
from hpcpipe.sweep import record
from hpcpipe.sweep.record import Attempt, Point, Sweep


@contextlib.contextmanager
def _unsignalled_children() -> Iterator[None]:
    """Subprocesses started in the block (sbatch) start with SIGINT and SIGTERM blocked
    (a child inherits the signal mask), so the Ctrl-C the terminal sends the whole process
    group cannot kill sbatch between queueing the array and printing its id. Only for
    sbatch: a local job started so would never see its own cancel. Here, a signal waits
    until the block ends, for ``interrupts.signals_held`` to take it.
    """
    signals = {signal.SIGINT, signal.SIGTERM}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _as_one_sweep(err: Unrecorded, before: int, arrays: int) -> Unrecorded:
    """What went wrong with array ``before + 1`` of ``arrays``, said of the sweep."""
    if isinstance(err, SubmitRefused):
        if not before:
            return SubmitRefused(f"sbatch refused the array: {err}")
        return SubmitRefused(
            f"sbatch refused array {before + 1} of {arrays}: {err} "
            "(the arrays queued before it were cancelled)"
        )
    if not before:
        return err
    return Unrecorded(f"{err} (the arrays queued before it were cancelled)", err.cancelled)


class Submitter(Protocol):
    def start(self, points: Sequence[Point]) -> None: ...
    def fill(self, points: Sequence[Point]) -> None: ...
    def cancel(self) -> None: ...


def submitter_for(root: Path, sweep: Sweep, profile: Profile) -> Submitter:
    from hpcpipe.sweep.local_pool import LocalPool

    kinds: dict[str, type] = {"queued": ArraySubmission, "paced": LocalPool}
    return kinds[backend(profile.executor).arrays](root, sweep, profile)


def job_folder(root: Path, name: str) -> Path:
    return record.sweep_dir(root, name) / "jobs"


def tuned(sweep: Sweep, profile: Profile) -> tuple[Profile, str]:
    """The profile with one more entry: what one point's task asks for (all its stages)."""
    from hpcpipe.launch.profiles import sweep_resources

    key = f"sweep-{sweep.name}"  # becomes the job name: hpcpipe-sweep-NAME
    resources = sweep_resources(profile, sweep.affected)
    return dataclasses.replace(profile, stages={**profile.stages, key: resources}), key


class ArraySubmission:
    """ONE sbatch: a job array of the points, at most ``parallelism`` running at once."""

    def __init__(self, root: Path, sweep: Sweep, profile: Profile) -> None:
        self.root, self.sweep, self.profile = root, sweep, profile

    def start(self, points: Sequence[Point]) -> None:
        from hpcpipe.launch.submission import submit_array
        from hpcpipe.sweep.task import run_point

        sweep, root = self.sweep, self.root
        tuned_profile, key = tuned(sweep, self.profile)
        folder, at_once = job_folder(root, sweep.name), min(sweep.parallelism, len(points))
        limit = max_array_size()
        arrays: list[str] = []
        parts = chunks(points, limit)
        for part in parts:
            n = len(part)
            args = [[str(root / p.workspace) for p in part], [sweep.checkout] * n, [sweep.affected] * n]
            after = arrays[-1] if arrays else None  # one array at a time: --parallelism holds over all
            with _unsignalled_children():
                try:
                    jobs = submit_array(
                        root, tuned_profile, key, run_point, args, folder, min(at_once, n), after
                    )
                except Unrecorded as err:  # refused, or queued and then cancelled: nothing is queued
                    if arrays:  # all or nothing: the arrays queued before it are cancelled
                        self._take_back(points[: sum(len(q) for q in parts[: len(arrays)])], arrays)
                    raise _as_one_sweep(err, len(arrays), len(parts)) from None
            now = time.time()
            for point, job in zip(part, jobs, strict=True):
                where = str(Path(job.paths.folder).resolve())
                point.attempts.append(Attempt(str(job.job_id), self.profile.executor, where, now))
                point.state = "PENDING"
            arrays.append(str(jobs[0].job_id).split("_")[0])
        say(f"sweep {sweep.name}: {_submitted(points, arrays, limit)}; at most {sweep.parallelism} at once")

    def _take_back(self, points: Sequence[Point], arrays: Sequence[str]) -> None:
        backend(self.profile.executor).cancel(list(arrays))
        for point in points:
            point.attempts.pop()
            point.state = "NEW"

    def fill(self, points: Sequence[Point]) -> None:
        """Nothing to do: the scheduler starts the array's tasks."""

    def cancel(self) -> None:
        """Nothing held here: the array's tasks are cancelled by id, like any recorded job."""


def max_array_size() -> int | None:
    """The site's MaxArraySize (``scontrol show config``): an array's task indices stay below
    it. None where Slurm does not say (then one array, and sbatch's own word if too big)."""
    from hpcpipe.launch.checks import parse_slurm_config

    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    value = parse_slurm_config(out.stdout).get("MaxArraySize", "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def chunks(points: Sequence[Point], limit: int | None) -> list[Sequence[Point]]:
    """``points`` in arrays of at most ``limit`` tasks (indices 0 to limit-1), in order."""
    size = limit or max(1, len(points))
    return [points[i : i + size] for i in range(0, len(points), size)]


def _submitted(points: Sequence[Point], arrays: Sequence[str], limit: int | None) -> str:
    if len(arrays) > 1:
        return (
            f"{len(points)} points submitted as {len(arrays)} job arrays {', '.join(arrays)}, "
            f"each starting when the one before has ended (the site's MaxArraySize is {limit})"
        )
    first = points[0].attempts[-1].job_id
    # submitit submits an array of one task as a plain job
    what = f"job array {arrays[0]}" if "_" in first else f"job {first}"
    return f"{len(points)} point(s) submitted as {what}"
