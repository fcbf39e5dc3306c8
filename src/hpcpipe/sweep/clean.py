"""``hpcpipe sweep clean NAME``: remove a finished sweep's folders, keep what it produced.

What goes: the sweep's folder under ``.hpcpipe/sweeps/NAME/`` (each point's workspace,
its checkout, its job logs and its record, which frees the name) and, for a sweep made
by an earlier hpcpipe, the git worktree records of its points. What stays: its
experiments (git refs in the project) and their outputs (the project's DVC cache,
which the workspaces only linked).

Refused, in one line, while anything would be lost: a point still queued or running
(its results would land in a removed folder), a finished point not yet saved as an
experiment (its results are only in its workspace), or a W&B run of a point not yet
uploaded (``hpcpipe sync``). Finished points are saved first, as ``sweep status`` does.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sys
from pathlib import Path

from hpcpipe.console import say
from hpcpipe.sweep import record, workspace
from hpcpipe.sweep.watch import DONE, live, refresh
from hpcpipe.validation import ConfigError


def _numbers(points: list[record.Point]) -> str:
    shown = ", ".join(str(p.number) for p in points[:10])
    return shown + (f" and {len(points) - 10} more" if len(points) > 10 else "")


def _unsynced_runs(root: Path, name: str) -> int:
    from hpcpipe.tracking.sync import find_runs

    roots = sorted((record.sweep_dir(root, name) / "points").glob("*/wandb"))
    return sum(1 for run in find_runs(roots) if not run.synced) if roots else 0


def clean(root: Path, name: str) -> int:
    sweep = record.load(root, name)
    with contextlib.redirect_stderr(io.StringIO()) as seen:  # a refusal is one line; else said below
        refresh(root, sweep)
    record.save(root, sweep)
    running = live(sweep.points)
    if running:
        jobs = sorted({p.attempts[-1].job_id.split("_")[0] for p in running})
        raise ConfigError(
            f"sweep {name}: {len(running)} point(s) still queued or running ({_numbers(running)}; "
            f"job {', '.join(jobs)}); wait for them or cancel them, then clean again"
        )
    unsaved = [p for p in sweep.points if p.state == DONE and not p.experiment]
    if unsaved:
        raise ConfigError(
            f"sweep {name}: point(s) {_numbers(unsaved)} finished but are not saved as experiments "
            f"(their results are only in their workspaces); see: hpcpipe sweep status {name}"
        )
    unsynced = _unsynced_runs(root, name)
    if unsynced:
        raise ConfigError(
            f"sweep {name}: {unsynced} W&B run(s) of its points are not uploaded yet; "
            "run hpcpipe sync first (or remove their wandb/ folders yourself)"
        )
    sys.stderr.write(seen.getvalue())  # the points saved just now
    folder = record.sweep_dir(root, name)
    workspace.discard(root, [root / p.workspace for p in sweep.points])
    shutil.rmtree(folder)
    saved = sum(1 for p in sweep.points if p.experiment)
    say(
        f"sweep {name}: removed its {len(sweep.points)} workspaces and records; its {saved} "
        "experiments stay (dvc exp show), their outputs in the DVC cache"
    )
    return 0
