"""One workspace per sweep point: a git worktree that shares the project's DVC cache.

Why worktrees: DVC takes one repo-wide lock (``.dvc/tmp/rwlock``) per workspace,
so parallel ``dvc repro`` runs in one workspace fight over it, worse on shared
filesystems (DVC issues 7419, 7029, 6097). A worktree has its own ``.dvc/tmp``
and so its own lock, while its git objects and refs are the project's: an
experiment saved in it shows up in the project's ``dvc exp show``.

Each workspace is the project's HEAD plus the project's uncommitted changes to
tracked files (as ``dvc exp run`` takes them), the project's current ``dvc.lock``
(so stages the sweep does not change are seen as up to date) and its own
params.yaml with the point applied. Its ``.dvc/config.local`` is the project's,
pointed at the project's cache with links before copies, so outputs reused from
upstream stages cost a link, not a copy.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcpipe.validation import ConfigError

LINK_TYPES = "hardlink,symlink,copy"
_WORKTREE_ADD = threading.Lock()


def git(root: Path, *args: str, stdin: bytes | None = None) -> bytes:
    """Run git in ``root``; a failure becomes one ConfigError line with git's own message."""
    proc = subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True)
    if proc.returncode != 0:
        why = proc.stderr.decode(errors="replace").strip().splitlines()
        raise ConfigError(f"git {' '.join(args[:2])} failed in {root}: {why[-1] if why else proc.returncode}")
    return proc.stdout


def base_commit(root: Path) -> str:
    try:
        return git(root, "rev-parse", "--verify", "HEAD^{commit}").decode().strip()
    except ConfigError:
        raise ConfigError(
            "sweep: the project has no git commit; experiments are based on one: commit first"
        ) from None


def uncommitted_patch(root: Path) -> bytes:
    """Staged and unstaged changes to tracked files, against HEAD."""
    return git(root, "diff", "--binary", "HEAD")


def untracked_files(root: Path) -> list[str]:
    """Files the worktrees will not have (neither tracked nor ignored), to warn about."""
    out = git(root, "ls-files", "--others", "--exclude-standard").decode()
    return [line for line in out.splitlines() if line and not line.startswith(".hpcpipe/")]


def load_round_trip(path: Path) -> Any:
    """params.yaml as ruamel's round-trip document: values, comments and layout."""
    from ruamel.yaml import YAML

    return YAML().load(path.read_text())


def write_point_params(base: Any, target: Path, point: Mapping[str, Any], group: str | None) -> None:
    """params.yaml with the point's dotted keys set (and ``wandb.group``), comments kept.

    ``base`` is ``load_round_trip``'s document, parsed once for all points. Round-trip
    YAML, as ``dvc exp run -S`` writes, so ``dvc exp apply`` brings back the user's file
    with only the swept values changed.
    """
    from ruamel.yaml import YAML

    yaml = YAML()
    doc = copy.deepcopy(base)
    for dotted, value in point.items():
        *parents, leaf = dotted.split(".")
        node = doc
        for part in parents:
            node = node[part]
        node[leaf] = value
    if group is not None and isinstance(doc.get("wandb"), dict) and "group" in doc["wandb"]:
        doc["wandb"]["group"] = group
    with target.open("w") as handle:
        yaml.dump(doc, handle)


def create(
    root: Path,
    workspace: Path,
    *,
    commit: str,
    patch: bytes,
    params: Any,
    point: Mapping[str, Any],
    group: str | None,
) -> None:
    """Make ``workspace`` for one point (skipped if it exists: resume reuses it).

    Not DVC-ready yet: ``finish`` adds the cache settings and the project's
    ``dvc.lock`` once the reused stages are up to date (their entries are in it), so
    worktrees can be made while DVC is still checking those.

    Safe to call from several threads for different points: ``git worktree add`` itself
    runs one at a time (two at once in one repo fail now and then: "failed to read
    .git/worktrees/NAME/commondir", seen 4 times in 128 here); the rest runs in parallel.
    """
    if workspace.exists():
        return
    workspace.parent.mkdir(parents=True, exist_ok=True)
    with _WORKTREE_ADD:
        git(root, "worktree", "add", "--detach", "--quiet", str(workspace), commit)
    if patch:
        git(workspace, "apply", "--binary", "--whitespace=nowarn", "-", stdin=patch)
    write_point_params(params, workspace / "params.yaml", point, group)


def finish(root: Path, workspace: Path, cache_dir: Path) -> None:
    """Give the workspace the project's ``.dvc/config.local`` and ``dvc.lock``.

    The config: the project's own local settings (``core.hardlink_lock`` and
    ``cache.shared`` on Lustre, a scratch remote...), since an untracked file is not in
    a worktree, with the cache made the project's (links before copies, unless the
    project chose its own link types) and relative paths made absolute. The lock file:
    so the stages the point reuses are seen as done.
    """
    from configobj import ConfigObj

    config = ConfigObj(str(root / ".dvc" / "config.local"), encoding="utf-8")
    for section in config.values():
        if isinstance(section, dict):
            _absolute_paths(section, root / ".dvc")
    cache = config.setdefault("cache", {})
    cache["dir"] = str(cache_dir)
    cache.setdefault("type", LINK_TYPES)
    config.filename = str(workspace / ".dvc" / "config.local")
    config.write()
    if (root / "dvc.lock").exists():
        shutil.copy2(root / "dvc.lock", workspace / "dvc.lock")


def _absolute_paths(section: dict[str, Any], config_dir: Path) -> None:
    """DVC reads a relative path in a config file (a local remote's ``url``, a cache
    ``dir``) against that file's folder: in the worktree it must mean the same place."""
    for key in ("url", "dir"):
        value = section.get(key)
        if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
            section[key] = str((config_dir / value).resolve())


def discard(root: Path, workspaces: list[Path]) -> None:
    """Remove worktrees made for a sweep that was never submitted (and their git records)."""
    for path in workspaces:
        if path.exists():
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=root, capture_output=True)
            shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True)
