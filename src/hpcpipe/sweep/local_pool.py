"""Local points as submitit subprocesses, at most ``parallelism`` at a time.

Where there is no scheduler, this process is one: each poll reaps the subprocesses that
ended and starts waiting points in their slots. The jobs live only as long as the sweep
command that started them waits for them, which is why a local sweep cannot ``--detach``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcpipe.config import Profile
from hpcpipe.sweep.record import Attempt, Point, Sweep
from hpcpipe.sweep.submit import job_folder, tuned
from hpcpipe.sweep.watch import NOT_STARTED


class LocalPool:
    def __init__(self, root: Path, sweep: Sweep, profile: Profile) -> None:
        from hpcpipe.launch.submission import prepared_executor, private_folder

        self.root, self.sweep, self.kind = root, sweep, profile.executor
        tuned_profile, key = tuned(sweep, profile)
        folder = private_folder(job_folder(root, sweep.name), root)
        self.executor = prepared_executor(tuned_profile, key, folder)
        self.jobs: dict[int, Any] = {}  # point number -> LocalJob, reaped when done

    def start(self, points: Sequence[Point]) -> None:
        self.fill(points)

    def fill(self, points: Sequence[Point]) -> None:
        from hpcpipe.sweep.task import run_point

        for job in self.jobs.values():
            job.done()  # reap ended subprocesses
        running = sum(1 for p in points if p.state == "RUNNING")
        threads = max(1, (os.cpu_count() or 1) // self.sweep.parallelism)
        os.environ["HPCPIPE_POINT_THREADS"] = str(threads)  # the subprocess inherits it
        for point in points:
            if running >= self.sweep.parallelism:
                break
            if point.state in NOT_STARTED:
                job = self.executor.submit(
                    run_point, str(self.root / point.workspace), self.sweep.checkout, self.sweep.affected
                )
                self.jobs[point.number] = job
                folder = str(Path(job.paths.folder).resolve())
                point.attempts.append(Attempt(str(job.job_id), self.kind, folder, time.time()))
                point.state = "RUNNING"
                running += 1
        for point in points:
            if point.state == "NEW":
                point.state = "WAITING"

    def cancel(self) -> None:
        for job in self.jobs.values():
            if not job.done():
                job.cancel()
