"""One workspace per sweep point: the files its stages need, linked from the sweep's snapshot.

Why not a git worktree per point: DVC takes one repo-wide lock (``.dvc/tmp/rwlock``)
per workspace, so each point needs its own folder (DVC issues 7419, 7029, 6097), but
a worktree holds the whole repository and costs a ``git worktree add``. A point's
folder holds only what ``snapshot.needed`` lists, hard-linked from the sweep's
``base/`` checkout (no data copied; a file a stage writes is a copy of its own), plus
its own params.yaml with the point applied, the project's current ``dvc.lock`` (so
stages the sweep does not change are seen as up to date) and ``.dvc/config.local``.

The folder is not a git repository: its ``.dvc/config.local`` says ``core.no_scm``, so
DVC never touches the project's git from a point (with git, DVC would stage its
files in the project's index). The experiment is made from the folder by
``experiments``, against the sweep's snapshot, with git's own plumbing.
The config is otherwise the project's, pointed at the project's cache with links
before copies, so outputs reused from upstream stages cost a link, not a copy.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcpipe.validation import ConfigError

LINK_TYPES = "hardlink,symlink,copy"


def git(root: Path, *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    """Run git in ``root``; a failure becomes one ConfigError line with git's own message."""
    proc = subprocess.run(["git", *args], cwd=root, input=stdin, capture_output=True, env=env)
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


def untracked_files(root: Path) -> list[str]:
    """Files the worktrees will not have (neither tracked nor ignored), to warn about."""
    out = git(root, "ls-files", "--others", "--exclude-standard").decode()
    return [line for line in out.splitlines() if line and not line.startswith(".hpcpipe/")]


def load_round_trip(path: Path) -> Any:
    """params.yaml as ruamel's round-trip document: values, comments and layout."""
    from ruamel.yaml import YAML

    return YAML().load(path.read_text())


def create(
    base: Path,
    workspace: Path,
    files: Sequence[str],
    *,
    copied: set[str],
    params: str,
) -> None:
    """Make ``workspace`` for one point (skipped if it exists: resume reuses it), with
    ``params`` as its params.yaml (``params_text``).

    ``files`` are linked from ``base`` (``copied`` ones are copied: files a stage or DVC
    writes in place, which a link would change for every point). Not DVC-ready yet:
    ``finish`` adds the cache settings and the project's ``dvc.lock`` once the reused
    stages are up to date (their entries are in it).
    """
    if workspace.exists():
        return
    top, into = str(base), str(workspace)  # plain strings: 100,000 links at 1,000 points
    os.makedirs(into)
    for folder in sorted({posixpath.dirname(name) for name in files} - {""}):
        os.makedirs(os.path.join(into, folder), exist_ok=True)
    for name in files:
        if name == "params.yaml":
            continue
        source, target = os.path.join(top, name), os.path.join(into, name)
        if name in copied or os.path.islink(source):
            shutil.copy2(source, target, follow_symlinks=False)
            continue
        try:
            os.link(source, target)
        except OSError:  # a filesystem without hard links
            shutil.copy2(source, target)
    with open(os.path.join(into, "params.yaml"), "w") as handle:
        handle.write(params)


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
    core = config.setdefault("core", {})
    core["no_scm"] = "true"  # not a git repo: DVC must not stage its files in the project's git
    cache = config.setdefault("cache", {})
    cache["dir"] = str(cache_dir)
    cache.setdefault("type", LINK_TYPES)
    config.filename = str(workspace / ".dvc" / "config.local")
    config.write()
    if (root / "dvc.lock").exists():
        (workspace / "dvc.lock").unlink(missing_ok=True)  # never write through a link
        shutil.copy2(root / "dvc.lock", workspace / "dvc.lock")


def _absolute_paths(section: dict[str, Any], config_dir: Path) -> None:
    """DVC reads a relative path in a config file (a local remote's ``url``, a cache
    ``dir``) against that file's folder: in the worktree it must mean the same place."""
    for key in ("url", "dir"):
        value = section.get(key)
        if isinstance(value, str) and value and "://" not in value and not Path(value).is_absolute():
            section[key] = str((config_dir / value).resolve())


def discard(root: Path, workspaces: Sequence[Path]) -> None:
    """Remove points' workspaces (and the git records of the worktrees that sweeps of
    earlier hpcpipe versions made per point: ``sweep clean`` removes those too)."""
    worktrees = False
    for path in workspaces:
        if (path / ".git").is_file():
            worktrees = True
            subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=root, capture_output=True)
        shutil.rmtree(path, ignore_errors=True)
    if worktrees:
        subprocess.run(["git", "worktree", "prune"], cwd=root, capture_output=True)
