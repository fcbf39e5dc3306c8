"""A sweep's points: their entries in the record, and their workspaces on disk.

Each point gets a number, a name from its values and a folder under
``.hpcpipe/sweeps/NAME/points/``, linked from the sweep's one checkout
(``snapshot``, ``workspace``). A sweep that never had a job leaves none of them
behind (``remove_unsubmitted``).
"""

from __future__ import annotations

import posixpath
import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcpipe.sweep import record, snapshot, workspace
from hpcpipe.sweep.grid import point_name
from hpcpipe.sweep.params_text import PointParams
from hpcpipe.sweep.pipeline import StageNode
from hpcpipe.sweep.record import Point


def points_of(name: str, grid: Sequence[dict[str, Any]]) -> list[Point]:
    """The record's points of a grid: numbered from 1, named by their values, each a folder."""
    names = [point_name(p) for p in grid]
    counts = Counter(names)
    points = []
    for number, (overrides, short) in enumerate(zip(grid, names, strict=True), start=1):
        unique = short if counts[short] == 1 else f"{short}-p{number}"
        folder = record.SWEEPS_DIR / name / "points" / f"{number:03d}-{unique}"
        points.append(Point(number=number, name=unique, overrides=overrides, workspace=str(folder)))
    return points


def index_path(root: Path, name: str) -> Path:
    return record.sweep_dir(root, name) / snapshot.INDEX_FILE


def make_workspaces(
    root: Path,
    name: str,
    points: Sequence[Point],
    tree_files: Sequence[str],
    nodes: Sequence[StageNode],
    affected: Sequence[str],
) -> list[str]:
    """The sweep's checkout of what its points need, then one linked folder per point.
    Returns the files each point holds (from the snapshot)."""
    files = snapshot.needed(tree_files, nodes, affected)
    base = record.sweep_dir(root, name) / snapshot.BASE_DIR
    if not base.exists():
        snapshot.check_out(root, index_path(root, name), files, base)
    outs = {o for n in nodes for o in n.outs}
    copied = {f for f in files if posixpath.basename(f) == "dvc.lock" or any(_inside(f, o) for o in outs)}
    params = PointParams(workspace.load_round_trip(root / "params.yaml"), list(points[0].overrides), name)
    for point in points:
        text = params.text(point.overrides)
        workspace.create(base, root / point.workspace, files, copied=copied, params=text)
    return files


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def remove_unsubmitted(root: Path, name: str, points: Sequence[Point]) -> None:
    """The workspaces and folder of a sweep that never had a job."""
    workspace.discard(root, [root / p.workspace for p in points])
    shutil.rmtree(record.sweep_dir(root, name), ignore_errors=True)
