"""DVC's last answer about a stage, kept until a file it depended on changes.

``dvc repro`` starts ``hpcpipe run`` once per stage, a fresh Python each time, right
after DVC itself has parsed dvc.yaml and hashed the stage's deps. Asking DVC again costs
about 0.35 s (importing ``dvc.repo`` and resolving the stage) before the job is even
submitted. The answer, the resolved stage with its fingerprint, depends only on:

- the bytes of dvc.yaml, of every file its ``vars`` name (params.yaml included, which
  DVC always loads), of the stage's params files, of .dvcignore and of DVC's config;
- each dep's content, which DVC itself trusts while the file's (inode, mtime, size) are
  unchanged (its state cache), and so does this memo (``hpcpipe.files.signature``);
- the DVC release, and which foreach member ``dvc repro`` is running ($DVC_STAGE).

So the answer is kept in .dvc/tmp (git-ignored by DVC) under a signature of all of
those, and used only while the signature is the same; any difference asks DVC again.
Errors are never kept: a stage that failed to resolve is resolved again next time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hpcpipe.files import signature, write_json_atomically

MEMO = Path(".dvc") / "tmp" / "hpcpipe-stages.json"
FORMAT = 1  # bump when StageDef's fields or the fingerprint's recipe change
ALWAYS_READ = (".dvcignore", ".dvc/config", ".dvc/config.local")
Taken = tuple[list[str], list[str], str]  # (content files, stat-walked trees, their signature)


def _dvc_release() -> str:
    """DVC's version without importing DVC (0.2 s): the bytes of its generated _version.py."""
    spec = importlib.util.find_spec("dvc")
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        try:
            return (Path(folder) / "_version.py").read_text()
        except OSError:
            continue
    return "unknown"


def _key(name: str, environ: Mapping[str, str], running_env: str) -> str:
    return f"{name}\0{environ.get(running_env, '')}"


def _signature(root: Path, files: Iterable[str], trees: Iterable[str]) -> str:
    return signature(root, trees, [*files, *ALWAYS_READ], f"{FORMAT} {_dvc_release()}")


def _read(root: Path) -> dict[str, Any]:
    try:
        memo = json.loads((root / MEMO).read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def recall(root: Path, name: str, environ: Mapping[str, str], running_env: str) -> dict[str, Any] | None:
    """The stage fields remembered for ``name``, if no file they depended on has changed."""
    entry = _read(root).get(_key(name, environ, running_env))
    if not isinstance(entry, dict) or not isinstance(entry.get("stage"), dict):
        return None
    files, trees = entry.get("files"), entry.get("trees")
    if not isinstance(files, list) or not isinstance(trees, list):
        return None
    if entry.get("signature") != _signature(root, files, trees):
        return None
    return entry["stage"]


def remember_signature(root: Path, files: Iterable[str], trees: Iterable[str]) -> Taken:
    """Take the signature BEFORE DVC hashes the deps: a file changed while DVC reads it
    then leaves a signature that matches neither state, and the next call asks again."""
    files, trees = sorted(set(files)), sorted(set(trees))
    return files, trees, _signature(root, files, trees)


def remember(
    root: Path,
    name: str,
    environ: Mapping[str, str],
    running_env: str,
    taken: Taken,
    stage: Mapping[str, Any],
) -> None:
    """Keep ``stage`` (JSON-able fields) under the signature ``taken`` before it was resolved."""
    files, trees, sig = taken
    memo = _read(root)
    memo[_key(name, environ, running_env)] = {
        "files": files,
        "trees": trees,
        "signature": sig,
        "stage": stage,
    }
    with contextlib.suppress(OSError):  # a read-only project or a full disk: the memo is only a shortcut
        write_json_atomically(root / MEMO, memo)


def vars_files(dvc_yaml: Mapping[str, Any], folder: str) -> list[str]:
    """Every file a ``vars`` list in dvc.yaml names (``file`` or ``file:key,...``), top level
    and per stage (relative to the stage's literal ``wdir`` too), relative to the root."""
    found: list[str] = []

    def walk(node: Any, wdir: str) -> None:
        if isinstance(node, Mapping):
            here = wdir
            if isinstance(node.get("wdir"), str) and "${" not in node["wdir"]:
                here = str(Path(folder) / node["wdir"])
            for key, value in node.items():
                if key == "vars" and isinstance(value, list):
                    for item in value:
                        if isinstance(item, str):
                            path = item.split(":", 1)[0]
                            found.extend({str(Path(folder) / path), str(Path(here) / path)})
                else:
                    walk(value, here)
        elif isinstance(node, list):
            for item in node:
                walk(item, wdir)

    walk(dvc_yaml, folder)
    return [str(Path(p)) for p in found]
