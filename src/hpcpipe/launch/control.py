"""``hpcpipe status``, ``logs`` and ``cancel``: the stages' last jobs, from the ledger and Slurm.

``status`` also shows what each Slurm job used (``usage``: one ``sacct`` call for all of
them) and which profile entries ask for far more than their stage used."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from hpcpipe.cluster_profiles import Profile
from hpcpipe.launch import usage
from hpcpipe.launch.executors import JobState, backend
from hpcpipe.launch.launcher import LogFollower
from hpcpipe.launch.ledger import Entry, Ledger

COLUMNS = ("STAGE", "JOB", "STATE", "NODE", "ELAPSED", "LOG")


def _elapsed(entry: Entry, slurm_elapsed: str) -> str:
    if slurm_elapsed:
        return slurm_elapsed
    seconds = int(entry.age_s)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def status_rows(ledger: Ledger) -> list[tuple[str, ...]]:
    rows = []
    for entry in ledger.entries():
        state = _state(entry)
        rows.append(
            (
                entry.stage,
                entry.job_id,
                state.describe(),
                state.node or "-",
                _elapsed(entry, state.elapsed),
                entry.stdout or "-",
            )
        )
    return rows


def usage_lines(entries: list[Entry], profile: Profile) -> list[str]:
    """Below the table: each Slurm job's figures and advice, from one ``sacct`` call; one
    line if this site has no accounting; nothing for local or inline jobs (no scheduler
    accounted for them)."""
    on_slurm = [e for e in entries if e.executor == "slurm"]
    found = usage.query(e.job_id for e in on_slurm)
    if found is None:
        return [usage.UNKNOWN_HERE] if on_slurm else []
    lines = []
    for entry in on_slurm:
        lines.extend(usage.lines_for(found.get(entry.job_id), profile, entry.stage))
    return lines


def show_logs(entry: Entry, follow: bool, poll_s: float) -> None:
    """Print the job's stdout and stderr; with ``follow``, keep printing until the job is over."""
    followers = [LogFollower(Path(entry.stdout), sys.stdout), LogFollower(Path(entry.stderr), sys.stderr)]
    while True:
        state = _state(entry)
        # a job Slurm has forgotten (or never recorded) will not write more
        finished = not follow or state.final or (state.state == "UNKNOWN" and entry.age_s > 60)
        for follower in followers:
            follower.pump(final=finished)
        if finished:
            return
        time.sleep(poll_s)


def cancel(entry: Entry) -> bool:
    """Cancel the entry's job if it is still queued or running; True if it was."""
    state = _state(entry)
    if state.final or state.state == "UNKNOWN":
        return False
    backend(entry.executor).cancel([entry.job_id])
    return True


def _state(entry: Entry) -> JobState:
    return backend(entry.executor).state(entry.job_id, Path(entry.folder))
