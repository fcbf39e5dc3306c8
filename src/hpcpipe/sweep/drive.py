"""A submitted sweep, driven: submit, then (unless detached) wait, import, and report.

Shared by ``start`` and ``resume``. SIGINT/SIGTERM while submitting or waiting cancel
what is queued or running (``cancel``) and leave the record saying so; finished points
stay experiments, and ``hpcpipe sweep resume NAME`` goes on.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from hpcpipe.config import Profile
from hpcpipe.launch.launcher import Interrupted, SignalsAsExceptions, say
from hpcpipe.sweep import record
from hpcpipe.sweep.cancel import cancel
from hpcpipe.sweep.record import Point, Sweep
from hpcpipe.sweep.report import summary, table
from hpcpipe.sweep.submit import Submitter, submitter_for
from hpcpipe.sweep.watch import final, refresh

EXIT_INTERRUPTED = 130


def run(root: Path, sweep: Sweep, profile: Profile, points: list[Point], detach: bool) -> int:
    """Submit ``points`` of ``sweep``; unless ``detach``, wait for them and return the exit status."""
    submitter = None
    with SignalsAsExceptions():
        try:
            submitter = submitter_for(root, sweep, profile)
            submitter.start(points)
            record.save(root, sweep)
            if detach:
                say(f"sweep {sweep.name}: detached; see it with: hpcpipe sweep status {sweep.name}")
                return 0
            _wait(root, sweep, profile, points, submitter)
        except Interrupted as stop:
            cancel(sweep, points, submitter)
            record.save(root, sweep)
            say(
                f"sweep {sweep.name}: {stop} received; cancelled its queued and running points; "
                f"finished ones are kept. Go on with: hpcpipe sweep resume {sweep.name}"
            )
            return EXIT_INTERRUPTED if stop.signum == signal.SIGINT else 128 + stop.signum
    print(table(sweep))
    return summary(sweep, points)


def _wait(root: Path, sweep: Sweep, profile: Profile, points: list[Point], submitter: Submitter) -> None:
    while True:
        refresh(root, sweep, points)
        submitter.fill(points)
        record.save(root, sweep)
        if all(final(p.state) for p in points):
            return
        time.sleep(profile.poll_s)
