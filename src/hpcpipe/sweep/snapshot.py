"""The files a sweep's points are made of: one snapshot of the project, checked out once.

Why: a full git worktree per point costs the whole repository per point (4.5 MB on the
example, 3.9 MB of it test data no stage reads; 200 MB of notebooks would be 200 MB per
point) and a ``git worktree add`` each (1,000 points: minutes). Instead:

1. ``snapshot``: the project's HEAD plus its uncommitted changes to tracked files (what
   ``dvc exp run`` takes), written as a git tree object, in a private index file that
   the sweep keeps (``tree.index``); the experiments are built on it later.
2. ``needed``: which of that tree's files a point needs (pure): the DVC files (every
   dvc.yaml, dvc.lock, ``.dvc`` file, ``.dvc/`` itself, the ignore files), every params
   and ``vars`` file the stages read, hpcpipe's own ``configs/cluster/``, and the
   git-tracked dependencies of the stages the points run (a folder: what git tracks
   under it). A Python dependency brings its importable neighbours: its whole top-level
   package, or, for a plain script, the scripts and packages beside it, since a script
   imports those without listing them. Nothing else: a 50 MB file no stage reads is
   never copied.
3. ``check_out``: those files, once, into the sweep's ``base/``, from which every point's
   workspace is linked (``workspace``).
"""

from __future__ import annotations

import os
import posixpath
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml

from hpcpipe.sweep.pipeline import StageNode
from hpcpipe.sweep.workspace import git

INDEX_FILE = "tree.index"
BASE_DIR = "base"
DVC_NAMES = ("dvc.yaml", "dvc.lock", ".gitignore", ".dvcignore")
ALWAYS = (".dvc/", "configs/cluster/")  # DVC's own folder; hpcpipe's cluster profiles


def _env(index: Path) -> dict[str, str]:
    return {**os.environ, "GIT_INDEX_FILE": str(index)}


def git_dir(root: Path) -> Path:
    return (root / git(root, "rev-parse", "--git-dir").decode().strip()).resolve()


def snapshot(root: Path, commit: str, index: Path) -> str:
    """The tree of ``commit`` plus the work tree's changes to tracked files; ``index`` is left
    holding it (a private index: the project's own is never written)."""
    index.parent.mkdir(parents=True, exist_ok=True)
    own = git_dir(root) / "index"
    if own.exists():
        shutil.copyfile(own, index)  # its stat data: `add -u` hashes only what changed
        git(root, "add", "-u", env=_env(index))
    else:
        git(root, "read-tree", commit, env=_env(index))
    return git(root, "write-tree", env=_env(index)).decode().strip()


def tree_files(root: Path, index: Path) -> list[str]:
    return [f for f in git(root, "ls-files", "-z", env=_env(index)).decode().split("\0") if f]


def _under(path: str, folder: str) -> bool:
    folder = folder.rstrip("/")
    return path == folder or path.startswith(folder + "/")


def vars_files(root: Path, files: Iterable[str]) -> list[str]:
    """Files a dvc.yaml's ``vars:`` names (DVC needs them to read the file at all)."""
    found = []
    for name in files:
        if posixpath.basename(name) != "dvc.yaml":
            continue
        try:
            data = yaml.safe_load((root / name).read_text())
        except (OSError, yaml.YAMLError):
            continue
        for entry in (data or {}).get("vars", []) if isinstance(data, dict) else []:
            if isinstance(entry, str):
                found.append(posixpath.normpath(posixpath.join(posixpath.dirname(name), entry.split(":")[0])))
    return found


def _python_neighbours(dep: str, files: Sequence[str], packages: set[str]) -> list[str]:
    """What a Python dependency may import without listing it: its top-level package, or the
    scripts and packages beside a plain script."""
    folder = posixpath.dirname(dep)
    if folder in packages:
        while posixpath.dirname(folder) in packages:
            folder = posixpath.dirname(folder)
        return [f for f in files if _under(f, folder)]
    prefix = f"{folder}/" if folder else ""
    beside = [f for f in files if posixpath.dirname(f) == folder and f.endswith(".py")]
    inner = [p for p in packages if posixpath.dirname(p) == folder]
    return beside + [f for f in files if f.startswith(prefix) and any(_under(f, p) for p in inner)]


def needed(
    files: Sequence[str], nodes: Sequence[StageNode], affected: Sequence[str], extra: Iterable[str] = ()
) -> list[str]:
    """The files of the snapshot a point needs (module docstring), in the tree's order."""
    wanted: set[str] = set(extra)
    packages = {posixpath.dirname(f) for f in files if posixpath.basename(f) == "__init__.py"}
    param_files = {p for n in nodes for p in n.param_files}
    for f in files:
        base = posixpath.basename(f)
        if (
            base in DVC_NAMES
            or base.endswith(".dvc")
            or f in param_files
            or any(_under(f, a) for a in ALWAYS)
        ):
            wanted.add(f)
    for node in nodes:
        if node.name not in affected:
            continue
        for dep in node.deps:
            inside = [f for f in files if _under(f, dep)]
            wanted.update(inside)
            for f in inside:
                if f.endswith(".py"):
                    wanted.update(_python_neighbours(f, files, packages))
    return [f for f in files if f in wanted]


def check_out(root: Path, index: Path, files: Sequence[str], base: Path) -> None:
    """``files`` of the snapshot (its blobs, not the work tree's copies) into ``base``."""
    base.mkdir(parents=True, exist_ok=True)
    listed = "".join(f"{f}\0" for f in files).encode()
    git(root, "checkout-index", "-z", "--stdin", f"--prefix={base}/", stdin=listed, env=_env(index))
