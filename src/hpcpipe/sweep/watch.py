"""Where each point of a sweep stands: ask its executor, say what changed, import what finished.

The states come through the executor interface (``backend(kind).states``), one query per
kind whatever the number of points: on Slurm, the project's shared squeue answer
(``hpcpipe.queue_cache``), which the foreground sweep accepts up to its profile's
``poll_s`` old, so it costs nothing while a launcher or sync of the project keeps the
answer fresh, and one ``sacct`` for the points that left squeue's answer.
A point that finished is saved as a DVC experiment here, as soon as it is seen finished
(``experiments.import_point``), from whichever login-node command saw it: the foreground
sweep, ``status`` or ``resume``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hpcpipe.console import say
from hpcpipe.launch import slurm_state
from hpcpipe.launch.executors import backend
from hpcpipe.launch.watch import outcome_from_result
from hpcpipe.sweep.experiments import import_point
from hpcpipe.sweep.record import Point, Sweep

DONE = "COMPLETED"
NOT_STARTED = ("NEW", "WAITING")  # WAITING: a local point waiting for a free slot


def final(state: str) -> bool:
    return state in slurm_state.FINAL_STATES


def live(points: Sequence[Point]) -> list[Point]:
    """Points submitted and not known to be over: what a cancel has to reach."""
    return [p for p in points if p.attempts and not final(p.state) and p.state not in NOT_STARTED]


def label(sweep: Sweep, point: Point) -> str:
    return f"{point.number}/{len(sweep.points)} {point.name}"


def refresh(root: Path, sweep: Sweep, points: Sequence[Point] | None = None, max_age_s: float = 0.0) -> None:
    """Ask where each unfinished point stands (an answer up to ``max_age_s`` old will do;
    0: asked now); save finished ones as experiments."""
    points = sweep.points if points is None else points
    unfinished = [p for p in points if p.attempts and not final(p.state)]
    states: dict[str, slurm_state.JobState] = {}
    for kind in {p.attempts[-1].executor for p in unfinished}:
        of_kind = [p.attempts[-1] for p in unfinished if p.attempts[-1].executor == kind]
        jobs = [(a.job_id, Path(a.folder)) for a in of_kind]
        latest = max(a.submitted_at for a in of_kind)  # an answer asked before cannot know it
        states.update(backend(kind).states(jobs, max_age_s, newer_than=latest))
    unanswered = 0
    for point in points:
        if point.attempts and not final(point.state):
            state = states[point.attempts[-1].job_id]
            if state.state == "UNKNOWN":
                unanswered += 1
                continue
            if state.describe() != point.detail and not final(state.state):
                say(f"sweep {sweep.name}: point {label(sweep, point)}: {state.describe()}")
            point.detail = state.describe()
            if final(state.state):
                _finish(sweep, point, state.state)
            else:
                point.state = state.state
        if point.state == DONE and not point.experiment:
            import_point(root, sweep, point, label(sweep, point))
    if unanswered:
        say(
            f"sweep {sweep.name}: Slurm has no record of {unanswered} point(s) (squeue/sacct failed, "
            "or SLURM_CONF is not this cluster's); their states are the last seen"
        )


def _finish(sweep: Sweep, point: Point, state: str) -> None:
    """A point's final state: the scheduler's, unless its result pickle says it failed."""
    from submitit.core.utils import JobPaths

    attempt = point.attempts[-1]
    paths = JobPaths(attempt.folder, job_id=attempt.job_id, task_id=0)
    outcome = outcome_from_result(Path(paths.result_pickle), state)
    if state == DONE and outcome is not None and not outcome.ok:
        state = outcome.state
    point.state = state
    point.error = "" if state == DONE else ((outcome.reason if outcome else "") or f"Slurm state {state}")
    tail = f": {point.error}; log: {paths.stderr}" if point.error else ""
    say(f"sweep {sweep.name}: point {label(sweep, point)}: {state}{tail}")
