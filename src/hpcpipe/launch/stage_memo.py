"""DVC's last answer about a stage, kept, and brought up to date without DVC where that is exact.

``dvc repro`` starts ``hpcpipe run`` once per stage, a fresh Python each time, right
after DVC has parsed dvc.yaml and hashed the stage's deps. Asking DVC again costs about
0.45 s (importing ``dvc.repo``, then resolving the stage) before the job is submitted.
The answer (the resolved stage and its fingerprint) depends only on:

- "inputs": the bytes of dvc.yaml, .dvcignore and DVC's config;
- "data": what the vars files hold (params.yaml, which DVC always loads, and those
  ``vars`` names) and what the stage's params files hold;
- "deps": each dep's content, which DVC trusts while every file's (inode, mtime, size)
  are unchanged (its state cache), and so does this memo (``hpcpipe.files.signature``);
- the DVC release, and which foreach member ``dvc repro`` is running ($DVC_STAGE).

Each is remembered under its own signature, taken before it was read. On the next launch:

- nothing changed: DVC's last answer, without importing DVC;
- a data file changed (a params edit: the usual reason ``dvc repro`` reruns a stage): the
  stage still resolves the same while every value DVC interpolated into it (DVC's own
  ``tracked_vars``) and the file's key structure are unchanged, so only the params values
  and the fingerprint are brought up to date, read as DVC reads them (``params_files``);
- a dep file of at most SMALL_FILE bytes changed (an edit of code): its md5, which is DVC
  3's hash of a file, is taken here, faster than opening DVC's state;
- anything else (dvc.yaml or DVC's config edited, a folder or a large dep changed, the data
  of a foreach/matrix stage, a data file that is not YAML, a glob key): DVC is asked again.

Errors are never kept: a stage that failed to resolve is resolved again next time.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcpipe.files import read_json_memo, signature, small_file_md5, write_json_atomically
from hpcpipe.launch import params_files

MEMO = Path(".dvc") / "tmp" / "hpcpipe-stages.json"
FORMAT = 2  # bump when StageDef's fields, the entry's layout or the fingerprint's recipe change
SMALL_FILE = 4 << 20  # a dep file this size or smaller is hashed here (md5 of 4 MiB: ~10 ms)
ALWAYS_READ = (".dvcignore", ".dvc/config", ".dvc/config.local")
ABSENT = "absent"


def dvc_release() -> str:
    """DVC's version without importing DVC (0.2 s): the bytes of its generated _version.py."""
    spec = importlib.util.find_spec("dvc")
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        try:
            return (Path(folder) / "_version.py").read_text()
        except OSError:
            continue
    return "unknown"


def _digest(content: bytes | None) -> str:
    return ABSENT if content is None else hashlib.sha256(content).hexdigest()


def _read_bytes(root: Path, rel: str) -> bytes | None:
    try:
        return (root / rel).read_bytes()
    except OSError:  # absent, a folder, unreadable: DVC will say which when asked
        return None


def dep_signature(root: Path, rel: str) -> str:
    """The state of one dep: every file's (inode, mtime, size) below it, and .dvcignore."""
    return signature(root, [rel], [".dvcignore"])


@dataclass
class Snapshot:
    """What one resolve was based on, each signature taken BEFORE DVC read the file: a
    file changed meanwhile leaves a signature that matches neither state, so the next
    launch looks again."""

    inputs: dict[str, str]
    data: dict[str, str]
    deps: dict[str, str]
    data_bytes: dict[str, bytes | None] = field(default_factory=dict, repr=False)


def take(root: Path, inputs: Iterable[str], data: Iterable[str], deps: Iterable[str]) -> Snapshot:
    texts = {rel: _read_bytes(root, rel) for rel in sorted(set(data))}
    return Snapshot(
        inputs={rel: _digest(_read_bytes(root, rel)) for rel in sorted({*inputs, *ALWAYS_READ})},
        data={rel: _digest(text) for rel, text in texts.items()},
        deps={rel: dep_signature(root, rel) for rel in sorted(set(deps))},
        data_bytes=texts,
    )


@dataclass
class Recalled:
    """A remembered stage as it stands now. ``changed``: data or deps moved since DVC's
    answer, and ``params``/``deps`` hold their current values (the fingerprint is stale)."""

    stage: dict[str, Any]
    cmd: Any  # DVC's cmd as written: a string or a list of them
    params: dict[str, Any]  # params file -> DVC's values of the stage's keys in it
    deps: dict[str, Any]  # dep path -> its hash
    changed: bool
    entry: dict[str, Any]  # the memo entry brought up to date (store it with ``keep``)


def _key(name: str, environ: Mapping[str, str], running_env: str) -> str:
    return f"{name}\0{environ.get(running_env, '')}"


def recall(root: Path, name: str, environ: Mapping[str, str], running_env: str) -> Recalled | None:
    """The stage remembered for ``name``, brought up to date where that is exact (see the
    module docstring); None when DVC must be asked."""
    entry = read_json_memo(root / MEMO).get(_key(name, environ, running_env))
    try:
        return _recall(root, entry)
    except (KeyError, TypeError, AttributeError, ValueError):  # an older or damaged memo
        return None


def _recall(root: Path, entry: Any) -> Recalled | None:
    if entry["format"] != FORMAT or entry["release"] != dvc_release():
        return None
    if any(_digest(_read_bytes(root, rel)) != sig for rel, sig in entry["inputs"].items()):
        return None
    changed = False
    data: dict[str, Any] = {}
    for rel, known in entry["data"].items():
        text = _read_bytes(root, rel)
        if _digest(text) != known["sig"]:
            known = _refreshed_data(known, text, entry["refreshable"])
            if known is None:
                return None
            changed = True
        data[rel] = known
    deps: dict[str, Any] = {}
    for rel, (sig, value) in entry["deps"].items():
        now = dep_signature(root, rel)
        if now != sig:
            md5 = small_file_md5(str(root / rel), SMALL_FILE)
            if md5 is None:
                return None
            value = {"md5": md5}
            changed = True
        deps[rel] = [now, value]
    entry = {**entry, "data": data, "deps": deps}
    params = {rel: d["values"] for rel, d in data.items() if d["keys"] is not None}
    return Recalled(
        stage=entry["stage"],
        cmd=entry["cmd"],
        params=params,
        deps={rel: value for rel, (_, value) in deps.items()},
        changed=changed,
        entry=entry,
    )


def _refreshed_data(known: Mapping[str, Any], text: bytes | None, refreshable: bool) -> dict[str, Any] | None:
    """A changed data file's entry, if the stage provably resolves the same; else None."""
    if not refreshable or known["shape"] is None or text is None:
        return None
    try:
        config = params_files.load_yaml(text)
    except Exception:  # DVC's own error, when it is asked
        return None
    if params_files.shape(config) != known["shape"]:
        return None
    for key, value in known["tracked"].items():
        now = params_files.lookup(config, key)
        if params_files.is_absent(now) or params_files.canonical(now) != params_files.canonical(value):
            return None
    values = known["values"]
    if known["keys"] is not None:
        values = params_files.select(config, known["keys"])
        if values is None or params_files.canonical(values) is None:
            return None
    return {**known, "sig": _digest(text), "values": values}


def remember(
    root: Path,
    name: str,
    environ: Mapping[str, str],
    running_env: str,
    *,
    snapshot: Snapshot,
    stage: Mapping[str, Any],
    cmd: Any,
    params: Mapping[str, tuple[list[str], Any]],
    tracked: Mapping[str, Mapping[str, Any]],
    deps: Mapping[str, Any],
    refreshable: bool,
) -> None:
    """Keep DVC's answer: ``params`` maps each params file to (the stage's keys, DVC's
    values), ``tracked`` each data file to the values DVC interpolated from it, ``deps``
    each dep to its hash. ``refreshable``: data edits may be refreshed without DVC."""
    data: dict[str, Any] = {}
    for rel, sig in snapshot.data.items():
        keys, values = params.get(rel, (None, None))
        from_file = dict(tracked.get(rel, {}))
        data[rel] = {
            "sig": sig,
            "shape": _shape(rel, snapshot.data_bytes.get(rel)),
            "tracked": from_file,
            "keys": keys,
            "values": values,
        }
        if params_files.canonical(from_file) is None or params_files.canonical(values) is None:
            refreshable = False
    if set(tracked) - set(snapshot.data):  # DVC read a value from a file not known here
        refreshable = False
    entry = {
        "format": FORMAT,
        "release": dvc_release(),
        "stage": dict(stage),
        "cmd": cmd,
        "inputs": snapshot.inputs,
        "data": data,
        "deps": {rel: [snapshot.deps[rel], deps[rel]] for rel in snapshot.deps if rel in deps},
        "refreshable": refreshable,
    }
    keep(root, name, environ, running_env, entry)


def _shape(rel: str, text: bytes | None) -> str | None:
    if text is None or not rel.endswith(params_files.YAML_SUFFIXES):
        return None
    try:
        return params_files.shape(params_files.load_yaml(text))
    except Exception:
        return None


def keep(
    root: Path, name: str, environ: Mapping[str, str], running_env: str, entry: Mapping[str, Any]
) -> None:
    memo = read_json_memo(root / MEMO)
    memo[_key(name, environ, running_env)] = dict(entry)
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
    return [os.path.normpath(p) for p in found]


def generated_from_data(dvc_yaml: Mapping[str, Any]) -> bool:
    """Whether a foreach/matrix group of this dvc.yaml takes its members from vars
    (``foreach: ${models}``): then a params edit can add or drop stages, and DVC decides."""
    stages = dvc_yaml.get("stages")
    if not isinstance(stages, Mapping):
        return False
    for definition in stages.values():
        if isinstance(definition, Mapping):
            for word in ("foreach", "matrix"):
                if word in definition and "${" in json.dumps(definition[word], default=str):
                    return True
    return False
