"""What a sweep shows the user: the points table, the closing summary, ``sweep status``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hpcpipe.config import load_profile
from hpcpipe.console import render_table, say
from hpcpipe.launch import usage
from hpcpipe.sweep import record
from hpcpipe.sweep.grid import describe
from hpcpipe.sweep.record import Point, Sweep
from hpcpipe.sweep.watch import DONE, refresh

EXIT_FAILED = 1


def status(root: Path, name: str) -> int:
    """``hpcpipe sweep status NAME``: each point now; finished ones are saved as experiments."""
    sweep = record.load(root, name)
    refresh(root, sweep)
    record.save(root, sweep)
    print(table(sweep))
    for line in usage_lines(root, sweep):
        print(line)
    return 0


def usage_lines(root: Path, sweep: Sweep) -> list[str]:
    """Below the table: what each point's Slurm job used (one ``sacct`` call for the sweep's
    arrays) and, if the points used far less than they asked, the profile entries to lower."""
    on_slurm = [p for p in sweep.points if p.attempts and p.attempts[-1].executor == "slurm"]
    # an array id brings every task of it: one short sacct command, however many points
    found = usage.query(p.attempts[-1].job_id.split("_")[0] for p in on_slurm)
    if found is None:
        return [usage.UNKNOWN_HERE] if on_slurm else []
    lines, used = [], []
    for point in on_slurm:
        job_id = point.attempts[-1].job_id
        if job_id in found:
            used.append(found[job_id])
            lines.append(f"point {point.number} (job {job_id}): used {usage.describe(found[job_id])}")
    if used and len(used) == len(on_slurm):
        profile = load_profile(sweep.profile, root)
        # the points ask for the profile's `sweep` entry, else for the most of their stages'
        keys = ["sweep"] if "sweep" in profile.stages else sweep.affected
        keys = list(dict.fromkeys(usage.profile_key(profile, k) for k in keys))
        tip = usage.advice(used, profile, f"sweep {sweep.name}", keys)
        lines.extend([tip] if tip else [])
    return lines


def table(sweep: Sweep) -> str:
    """One row per point: its last job, state, params, the last stage's metrics, experiment."""
    header = ("point", "job", "state", "params", "metrics", "experiment")
    rows = []
    # the last stage's metrics (evaluate's test accuracy...); all of them: dvc exp show
    last = f"{Path(sweep.metrics[-1]).stem}." if sweep.metrics else ""
    for p in sweep.points:
        shown = {k.removeprefix(last): v for k, v in p.metrics.items() if k.startswith(last)}
        metrics = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        job = p.attempts[-1].job_id if p.attempts else "-"
        rows.append((str(p.number), job, p.state, describe(p.overrides), metrics or "-", p.experiment or "-"))
    return render_table(header, rows)


def summary(sweep: Sweep, points: Sequence[Point]) -> int:
    """The closing lines of a waited-for sweep; its exit status (1 if any point is not saved)."""
    done = [p for p in points if p.state == DONE and p.experiment]
    failed = [p for p in points if p not in done]
    say(
        f"sweep {sweep.name}: {len(done)} of {len(points)} points saved as experiments"
        + (f", {len(failed)} not ({', '.join(str(p.number) for p in failed)})" if failed else "")
        + "; compare them with: dvc exp show"
    )
    if failed:
        say(f"sweep {sweep.name}: rerun only those with: hpcpipe sweep resume {sweep.name}")
        return EXIT_FAILED
    return 0
