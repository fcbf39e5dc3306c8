"""Whether the stages a sweep reuses are up to date: DVC's answer, remembered.

Why: before submitting, a sweep asks DVC whether the upstream stages it reuses
(``prepare``, for a train-only grid) are up to date, so every point can link their
outputs instead of recomputing them. DVC answers by hashing those stages'
dependencies; with a raw-data folder of 12,000 images that is 0.9 s of the 2 s a
submission may take, asked again by every sweep over the same data.

DVC itself trusts a file's cached hash while the file's (inode, mtime, size) are
unchanged. So does this memo: when DVC says "up to date", the *signature* (that
triple for every file under the stages' dependencies and outputs, plus the bytes
of dvc.yaml, dvc.lock and the params files, and DVC's version) is stored in
``.hpcpipe/upstream-fresh.json``. A later sweep whose signature is the same gets
the same answer without asking; any difference (an edited file, a new image, a
changed command or param, a newer DVC) asks DVC again. "Not up to date" is never
remembered: it is always DVC that decides to reproduce.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from hpcpipe.sweep.pipeline import DvcProject, StageNode
from hpcpipe.sweep.record import write_json_atomically

MEMO = Path(".hpcpipe") / "upstream-fresh.json"
ALWAYS_HASHED = ("dvc.yaml", "dvc.lock")


def _add_tree(digest: hashlib._Hash, root: str, rel: str) -> None:
    """Add (path, inode, mtime, size, mode) of ``rel`` and, for a folder, of every entry below it.

    Plain ``os.scandir`` and strings: 12,000 files in ~0.1 s (pathlib takes several times that).
    """
    top = os.path.join(root, rel)
    try:
        st = os.lstat(top)
    except FileNotFoundError:
        digest.update(f"{rel}\0absent\n".encode())
        return
    digest.update(f"{rel}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_size}\0{st.st_mode}\n".encode())
    if not stat.S_ISDIR(st.st_mode):
        return
    lines = []
    folders = [(top, rel)]
    while folders:
        folder, name = folders.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                child = f"{name}/{entry.name}"
                lines.append(f"{child}\0{st.st_ino}\0{st.st_mtime_ns}\0{st.st_size}\0{st.st_mode}\n")
                if stat.S_ISDIR(st.st_mode):
                    folders.append((entry.path, child))
    lines.sort()  # scandir's order is the filesystem's
    digest.update("".join(lines).encode())


def signature(root: Path, paths: Iterable[str], files: Iterable[str], version: str) -> str:
    """A digest that changes when any file under ``paths`` or the bytes of ``files`` change."""
    digest = hashlib.sha256(f"dvc {version}\n".encode())
    for name in sorted(set(files)):
        path = root / name
        content = path.read_bytes() if path.is_file() else b"\0absent"
        digest.update(f"{name}\0{len(content)}\n".encode() + content)
    for rel in sorted(set(paths)):
        _add_tree(digest, str(root), rel)
    return digest.hexdigest()


def _load(root: Path) -> dict[str, str]:
    try:
        memo = json.loads((root / MEMO).read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _store(root: Path, key: str, value: str) -> None:
    write_json_atomically(root / MEMO, {**_load(root), key: value})


def stale(project: DvcProject, nodes: Sequence[StageNode], stages: Sequence[str]) -> bool:
    """Whether any of ``stages`` is out of date: DVC's ``status``, unless its last
    "up to date" for exactly this state of their files is remembered (module docstring)."""
    if not stages:
        return False
    import dvc

    wanted = [n for n in nodes if n.name in stages]
    paths = [p for n in wanted for p in (*n.deps, *n.outs)]
    files = [*ALWAYS_HASHED, *(f for n in wanted for f in n.param_files)]
    key = ",".join(sorted(stages))
    before = signature(project.root, paths, files, dvc.__version__)  # taken first: see below
    if _load(project.root).get(key) == before:
        return False
    if project.changed(stages):
        return True
    # Signed before DVC looked: a file changed while it looked gives a signature that
    # matches neither state, so the next sweep asks DVC again.
    _store(project.root, key, before)
    return False
