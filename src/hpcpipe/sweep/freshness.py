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

from collections.abc import Sequence
from pathlib import Path

from hpcpipe.files import read_json_memo, signature, write_json_atomically
from hpcpipe.sweep.pipeline import DvcProject, StageNode

MEMO = Path(".hpcpipe") / "upstream-fresh.json"
ALWAYS_HASHED = ("dvc.yaml", "dvc.lock")


def _store(root: Path, key: str, value: str) -> None:
    write_json_atomically(root / MEMO, {**read_json_memo(root / MEMO), key: value})


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
    if read_json_memo(project.root / MEMO).get(key) == before:
        return False
    if project.changed(stages):
        return True
    # Signed before DVC looked: a file changed while it looked gives a signature that
    # matches neither state, so the next sweep asks DVC again.
    _store(project.root, key, before)
    return False
