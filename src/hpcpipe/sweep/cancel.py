"""Ctrl-C of a sweep: cancel what is queued or running, as the stage launcher does."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from hpcpipe.launch.executors import backend
from hpcpipe.launch.launcher import say
from hpcpipe.sweep.record import Point, Sweep
from hpcpipe.sweep.submit import Submitter
from hpcpipe.sweep.watch import live


def cancel(sweep: Sweep, points: Sequence[Point], submitter: Submitter | None) -> None:
    """Cancel the live points, each kind through its backend."""
    if submitter is not None:
        submitter.cancel()
    reached = live(points)
    for kind in {p.attempts[-1].executor for p in reached}:
        try:
            backend(kind).cancel([p.attempts[-1].job_id for p in reached if p.attempts[-1].executor == kind])
        except (OSError, subprocess.SubprocessError) as err:
            say(f"sweep {sweep.name}: cancelling its {kind} jobs failed: {err}")
    for point in reached:
        point.state = "CANCELLED"
