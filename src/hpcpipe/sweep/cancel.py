"""Ctrl-C of a sweep: cancel what is queued or running, as the stage launcher does.

A point is marked CANCELLED only when its executor said the cancel worked. When
``scancel`` is refused or times out, the point keeps the state last seen, so
``status`` goes on asking Slurm about it and ``resume`` never submits it again while
it may still run; the caller says which points were not reached.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from hpcpipe.launch.executors import backend
from hpcpipe.launch.submission import last_line
from hpcpipe.sweep.record import Point
from hpcpipe.sweep.submit import Submitter
from hpcpipe.sweep.watch import live


def cancel(points: Sequence[Point], submitter: Submitter | None) -> list[str]:
    """Cancel the live points, each kind through its backend; returns one line per kind
    whose cancel failed (its job ids and the scheduler's reason), empty when all worked."""
    if submitter is not None:
        submitter.cancel()
    failures = []
    reached = live(points)
    for kind in sorted({p.attempts[-1].executor for p in reached}):
        of_kind = [p for p in reached if p.attempts[-1].executor == kind]
        ids = [p.attempts[-1].job_id for p in of_kind]
        try:
            backend(kind).cancel(ids)
        except (OSError, subprocess.SubprocessError) as err:
            failures.append(f"{kind} jobs {' '.join(ids)}: {_reason(err)}")
            continue
        for point in of_kind:
            point.state = "CANCELLED"
    return failures


def _reason(err: Exception) -> str:
    """The scheduler's own words (scancel's last stderr line), else the error."""
    stderr = getattr(err, "stderr", None)
    if isinstance(stderr, bytes):
        stderr = stderr.decode(errors="replace")
    return last_line(stderr) if stderr and stderr.strip() else str(err)
