"""A stage as DVC sees it: its command, deps, outs, params values, and its fingerprint.

DVC is the source of truth for what a stage reads and writes. The launcher asks DVC's
own parser (an in-process ``dvc.repo.Repo``), so ``${}`` interpolation, ``vars``,
``foreach``/``matrix`` members (``name@key``) and params files other than params.yaml
behave exactly as in ``dvc repro``. Nothing here knows any stage by name.

The fingerprint is the stage's content: the command, every dep's hash (DVC's own,
taken from its state cache when the file's inode, size and mtime are unchanged, so
nothing is hashed twice: ``dvc repro`` has just hashed them before running the
command) and the declared params' values. It decides reattach, checkpoint resume and
the W&B run identity. It holds no path mtime: ``git stash && git stash pop`` or a
``dvc checkout`` of identical content leaves it unchanged, and any edit of any dep
changes it. Resources are not part of it (see ``ledger``).

Opening DVC's repo from inside a running stage is safe: ``dvc repro`` releases its
repo lock while a stage's command runs (``unlocked_repo`` in dvc/stage/run.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcpipe.files import read_json_memo, small_file_md5, write_json_atomically
from hpcpipe.launch import stage_memo
from hpcpipe.validation import ConfigError

# folder deps' DVC hashes by file signature: a cache beside DVC's own (git-ignored by DVC)
DEP_HASH_MEMO = Path(".dvc") / "tmp" / "hpcpipe-dep-hashes.json"
DVC_STAGE_ENV = "DVC_STAGE"  # set by dvc repro for every stage command it runs: the stage's address


@dataclass(frozen=True)
class StageDef:
    """One resolved stage of dvc.yaml."""

    name: str  # DVC's address: "train", "fold@2", "sub/dvc.yaml:train"
    cmd: str
    deps: tuple[str, ...]  # paths relative to the project root
    outs: tuple[str, ...]  # outs, metrics and plots: every path the stage must leave behind
    params: Mapping[str, Any] = field(default_factory=dict)  # declared params, nested by section
    params_files: tuple[str, ...] = ()
    fingerprint: str = ""
    project_stages: tuple[str, ...] = ()  # every stage of its dvc.yaml, to check profiles against


@contextlib.contextmanager
def in_directory(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def _nest(flat: Mapping[str, Any], into: dict[str, Any]) -> None:
    """DVC's ``{"train.lr": 0.1, "data": {...}}`` -> ``{"train": {"lr": 0.1}, "data": {...}}``."""
    for key, value in flat.items():
        parts = key.split(".")
        node = into
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value


def _rel(root: Path, path: str) -> str:
    try:
        return os.path.relpath(path, root)
    except ValueError:  # another drive
        return path


def _pick(repo: Any, name: str, environ: Mapping[str, str]) -> Any:
    """The stage ``name`` names. A foreach/matrix group's base name picks the member that
    ``dvc repro`` is running ($DVC_STAGE), so `hpcpipe init` can wrap a group's command."""
    from dvc.stage.exceptions import StageNotFound

    try:
        found = repo.stage.collect(name)
    except (StageNotFound, Exception) as err:  # StageNotFound, or DVC's own parse error
        if not isinstance(err, StageNotFound) and "not found" not in str(err).lower():
            raise ConfigError(f"dvc.yaml: {err}") from None
        known = ", ".join(stage_names(repo))
        raise ConfigError(f"dvc.yaml has no stage {name!r}; its stages are: {known}") from None
    if len(found) == 1:
        return found[0]
    running = environ.get(DVC_STAGE_ENV, "")
    for stage in found:
        if stage.addressing == running or stage.addressing.endswith(f":{running}"):
            return stage
    members = ", ".join(s.addressing for s in found)
    raise ConfigError(f"stage {name!r} is a foreach/matrix group; name one member: {members}")


def stage_names(repo: Any) -> list[str]:
    """Every pipeline stage's address (foreach members expanded); .dvc files left out."""
    from dvc.stage import PipelineStage

    return sorted(s.addressing for s in repo.index.stages if isinstance(s, PipelineStage))


def project_stage_names(root: Path) -> list[str]:
    from dvc.exceptions import DvcException
    from dvc.repo import Repo

    try:
        with Repo(str(root)) as repo, in_directory(root):
            return stage_names(repo)
    except DvcException as err:
        raise ConfigError(f"dvc.yaml: {err}") from None


def _hash_deps(
    stage: Any, root: Path, snapshot: stage_memo.Snapshot
) -> tuple[dict[str, Any], dict[str, tuple[list[str], Any]], list[str]]:
    """(each dep's hash, each params file's (keys, DVC's values), missing deps)."""
    from dvc.dependency.param import ParamsDependency

    hashed: dict[str, Any] = {}
    params: dict[str, tuple[list[str], Any]] = {}
    missing: list[str] = []
    for dep in stage.deps:
        rel = _rel(root, dep.fs_path)
        if isinstance(dep, ParamsDependency):
            try:
                params[rel] = (list(dep.params or []), dep.read_params())
            except Exception as err:  # missing file or key: DVC's own message
                raise ConfigError(f"stage {stage.addressing}: params: {err}") from None
            continue
        if not dep.exists:
            missing.append(rel)
            continue
        hashed[rel] = _dep_hash(dep, root, rel, snapshot.deps.get(rel))
    return hashed, params, missing


def _dep_hash(dep: Any, root: Path, rel: str, taken: str | None) -> dict[str, Any]:
    """One dep's hash: a small file's md5 taken here (DVC 3's hash of a file, cheaper
    than opening DVC's state; ``stage_memo`` takes it the same way), else DVC's own.

    A folder's is also remembered per signature of its files (``taken``, before DVC
    looked): DVC's state holds each file's hash, but it still walks, stats and matches
    every file against .dvcignore to build the folder's (2 s for 60,000 files)."""
    md5 = small_file_md5(dep.fs_path, stage_memo.SMALL_FILE)
    if md5 is not None:
        return {"md5": md5}
    if taken is None or not os.path.isdir(dep.fs_path):
        return dep.get_hash().to_dict()
    key = hashlib.sha256(f"{stage_memo.dvc_release()}\0{taken}".encode()).hexdigest()
    memo_path = root / DEP_HASH_MEMO
    memo = read_json_memo(memo_path)
    known = memo.get(rel)
    if isinstance(known, list) and len(known) == 2 and known[0] == key:
        return known[1]
    value = dep.get_hash().to_dict()
    with contextlib.suppress(OSError):  # only a shortcut
        write_json_atomically(memo_path, {**memo, rel: [key, value]})
    return value


def fingerprint_of(cmd: Any, deps: Mapping[str, Any], params: Mapping[str, Any]) -> str:
    """The stage's content: its command as DVC holds it, each dep's hash, the params values."""
    record = {"cmd": cmd, "deps": sorted([path, value] for path, value in deps.items()), "params": params}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _parse_inputs(stage: Any, root: Path) -> tuple[list[str], list[str], bool]:
    """(the files DVC read to resolve ``stage`` as text: its dvc.yaml; as data:
    params.yaml (DVC's default ``vars``), the files its ``vars`` name and what its
    global context imported; whether a foreach/matrix group takes members from data)."""
    from hpcpipe.config import read_yaml

    dvcfile = _rel(root, stage.dvcfile.path)
    folder = os.path.dirname(dvcfile) or "."
    data = [os.path.join(folder, "params.yaml")]
    from_data = True  # unknown: a params edit asks DVC
    with contextlib.suppress(Exception):  # DVC has just parsed it; any surprise only shortens the list
        raw = read_yaml(root / dvcfile) or {}
        data += stage_memo.vars_files(raw, folder)
        from_data = stage_memo.generated_from_data(raw)
    with contextlib.suppress(Exception):
        data += [_rel(root, os.path.join(folder, p)) for p in stage.dvcfile.resolver.context.imports]
    return [os.path.normpath(dvcfile)], [os.path.normpath(p) for p in data], from_data


def _from_memo(fields: Mapping[str, Any]) -> StageDef | None:
    try:
        return StageDef(
            name=fields["name"],
            cmd=fields["cmd"],
            deps=tuple(fields["deps"]),
            outs=tuple(fields["outs"]),
            params=fields["params"],
            params_files=tuple(fields["params_files"]),
            fingerprint=fields["fingerprint"],
            project_stages=tuple(fields["project_stages"]),
        )
    except (KeyError, TypeError):
        return None


def _nested(params: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for values in params.values():
        _nest(values, nested)
    return nested


def load_stage(root: Path, name: str, environ: Mapping[str, str] | None = None) -> StageDef:
    """Resolve ``name`` in the project at ``root`` and fingerprint it.

    DVC's answer is kept, and brought up to date after a params edit or a small dep's
    edit without importing DVC (``stage_memo``), so a launcher that ``dvc repro`` starts
    right after DVC parsed and hashed everything does not ask DVC the same again.
    Raises ConfigError (one line) for an unknown name, a dvc.yaml DVC cannot parse, a
    missing params key, or a dep that does not exist (its producing stage has not run).
    """
    env = os.environ if environ is None else environ
    recalled = stage_memo.recall(root, name, env, DVC_STAGE_ENV)
    found = _from_memo(recalled.stage) if recalled is not None else None
    if recalled is not None and found is not None:
        if not recalled.changed:
            return found
        found = dataclasses.replace(
            found,
            params=_nested(recalled.params),
            fingerprint=fingerprint_of(recalled.cmd, recalled.deps, recalled.params),
        )
        entry = {**recalled.entry, "stage": dataclasses.asdict(found)}
        stage_memo.keep(root, name, env, DVC_STAGE_ENV, entry)
        return found
    return _resolve(root, name, env)


def _resolve(root: Path, name: str, env: Mapping[str, str]) -> StageDef:
    """Ask DVC, and remember its answer with what it was based on."""
    from dvc.dependency.param import ParamsDependency
    from dvc.exceptions import DvcException, NotDvcRepoError
    from dvc.repo import Repo

    try:
        repo = Repo(str(root))
    except NotDvcRepoError:
        raise ConfigError(f"{root} is not a DVC project (no .dvc/); run `dvc init` first") from None
    except DvcException as err:  # e.g. SCMError: not a git repository, and not --no-scm
        raise ConfigError(f"{root}: DVC cannot open this project: {err}") from None
    # DVC resolves stage names, and writes their addresses, relative to the working directory
    with repo, in_directory(root):
        try:
            stage = _pick(repo, name, env)
        except DvcException as err:
            raise ConfigError(f"dvc.yaml: {err}") from None
        params_files = [_rel(root, d.fs_path) for d in stage.deps if isinstance(d, ParamsDependency)]
        trees = [_rel(root, d.fs_path) for d in stage.deps if not isinstance(d, ParamsDependency)]
        inputs, data, from_data = _parse_inputs(stage, root)
        snapshot = stage_memo.take(root, inputs, [*data, *params_files], trees)
        deps, params, missing = _hash_deps(stage, root, snapshot)
        if missing:
            raise ConfigError(
                f"stage {stage.addressing}: missing dependencies {', '.join(missing)}; "
                "run the stages that make them first (dvc repro)"
            )
        values = {rel: found for rel, (_, found) in params.items()}
        resolved = StageDef(
            name=stage.addressing,
            cmd=stage.cmd if isinstance(stage.cmd, str) else " && ".join(stage.cmd),
            deps=tuple(deps),
            outs=tuple(_rel(root, out.fs_path) for out in stage.outs),
            params=_nested(values),
            params_files=tuple(params),
            fingerprint=fingerprint_of(stage.cmd, deps, values),
            # the stages of its own dvc.yaml, without building DVC's whole index (a walk of the repo)
            project_stages=tuple(sorted(stage.dvcfile.stages)),
        )
        tracked = {
            os.path.normpath(_rel(root, os.path.abspath(source))): dict(keys)
            for source, keys in (getattr(stage, "tracked_vars", None) or {}).items()
        }
        stage_memo.remember(
            root,
            name,
            env,
            DVC_STAGE_ENV,
            snapshot=snapshot,
            stage=dataclasses.asdict(resolved),
            cmd=stage.cmd,
            params=params,
            tracked=tracked,
            deps=deps,
            refreshable=not from_data and "@" not in stage.addressing.rsplit(":", 1)[-1],
        )
        return resolved
