"""A sweep's points: their entries in the record, and their workspaces on disk.

Each point gets a number, a name from its values and a folder under
``.hpcpipe/sweeps/NAME/points/``, where its git worktree is made (``workspace``): a
few at a time, since each is mostly waiting on git. A sweep that never had a job
leaves none of them behind (``remove_unsubmitted``).
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hpcpipe.sweep import record, workspace
from hpcpipe.sweep.grid import point_name
from hpcpipe.sweep.record import Point


def points_of(name: str, grid: Sequence[dict[str, Any]]) -> list[Point]:
    """The record's points of a grid: numbered from 1, named by their values, each a folder."""
    names = [point_name(p) for p in grid]
    points = []
    for number, (overrides, short) in enumerate(zip(grid, names, strict=True), start=1):
        unique = short if names.count(short) == 1 else f"{short}-p{number}"
        folder = record.SWEEPS_DIR / name / "points" / f"{number:03d}-{unique}"
        points.append(Point(number=number, name=unique, overrides=overrides, workspace=str(folder)))
    return points


def make_workspaces(root: Path, name: str, points: Sequence[Point], commit: str) -> None:
    """One worktree per point; a few at a time, since each is mostly waiting on git."""
    patch = workspace.uncommitted_patch(root)
    params = workspace.load_round_trip(root / "params.yaml")

    def make(point: Point) -> None:
        workspace.create(
            root,
            root / point.workspace,
            commit=commit,
            patch=patch,
            params=params,
            point=point.overrides,
            group=name,
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(make, points))  # list(): re-raise the first failure here


def remove_unsubmitted(root: Path, name: str, points: Sequence[Point]) -> None:
    """The worktrees and folder of a sweep that never had a job."""
    workspace.discard(root, [root / p.workspace for p in points])
    shutil.rmtree(record.sweep_dir(root, name), ignore_errors=True)
