"""A submitted sweep, driven: submit, then (unless detached) wait, import, and report.

Shared by ``start`` and ``resume``. SIGINT/SIGTERM while submitting or waiting cancel
what is queued or running (``cancel``) and leave the record saying so; finished points
stay experiments, and ``hpcpipe sweep resume NAME`` goes on.

A signal that comes while a submission is under way waits until the submission has
returned and its job ids are in the record (``signals_held``): a sweep interrupted
there has its array tracked, and cancelled, never queued and forgotten, so ``resume``
cannot submit its points a second time (``submit`` also keeps the terminal's Ctrl-C,
sent to the whole process group, from killing ``sbatch`` itself after it queued the array).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from hpcpipe.config import Profile
from hpcpipe.console import say
from hpcpipe.launch.interrupts import Interrupted, SignalsAsExceptions, signals_held
from hpcpipe.sweep import record
from hpcpipe.sweep.cancel import cancel
from hpcpipe.sweep.record import Point, Sweep
from hpcpipe.sweep.report import EXIT_FAILED, summary, table
from hpcpipe.sweep.submit import Submitter, submitter_for
from hpcpipe.sweep.watch import final, refresh

__all__ = ["EXIT_FAILED", "EXIT_INTERRUPTED", "run"]
EXIT_INTERRUPTED = 130


def run(root: Path, sweep: Sweep, profile: Profile, points: list[Point], detach: bool) -> int:
    """Submit ``points`` of ``sweep``; unless ``detach``, wait for them and return the exit status.

    A refused or unrecorded submission raises ``launch.submission.Unrecorded`` (the caller
    knows what to undo)."""
    submitter = None
    with SignalsAsExceptions():
        try:
            submitter = submitter_for(root, sweep, profile)
            with signals_held(block=False):
                submitter.start(points)
                record.save(root, sweep)
            if detach:
                say(f"sweep {sweep.name}: detached; see it with: hpcpipe sweep status {sweep.name}")
                return 0
            _wait(root, sweep, profile, points, submitter)
        except Interrupted as stop:
            failures = cancel(points, submitter)
            record.save(root, sweep)
            _say_stopped(sweep, str(stop), failures)
            return EXIT_INTERRUPTED if stop.signum == signal.SIGINT else 128 + stop.signum
    print(table(sweep))
    return summary(sweep, points)


def _say_stopped(sweep: Sweep, stop: str, failures: list[str]) -> None:
    if not failures:
        say(
            f"sweep {sweep.name}: {stop} received; cancelled its queued and running points; "
            f"finished ones are kept. Go on with: hpcpipe sweep resume {sweep.name}"
        )
        return
    for failure in failures:
        say(f"sweep {sweep.name}: {stop} received, but cancelling failed: {failure}")
    say(
        f"sweep {sweep.name}: those points may still be queued or running (not marked cancelled); "
        f"see them with: hpcpipe sweep status {sweep.name}"
    )


def _wait(root: Path, sweep: Sweep, profile: Profile, points: list[Point], submitter: Submitter) -> None:
    while True:
        refresh(root, sweep, points, profile.poll_s)
        with signals_held(block=False):  # a local point started is a point recorded
            submitter.fill(points)
            record.save(root, sweep)
        if all(final(p.state) for p in points):
            return
        time.sleep(profile.poll_s)
