"""Finished points -> DVC experiments of the project, made with git's plumbing.

An experiment, as ``dvc exp save`` makes it, is a git commit of the workspace whose
parent is the baseline commit, under ``refs/exps/<baseline[:2]>/<baseline[2:]>/NAME``,
with the message ``dvc: commit experiment <sha256 of the stages' dvc.lock entries>``;
the outputs themselves are in the DVC cache, where the point's ``dvc repro`` put them.
``dvc exp show`` lists it, ``dvc exp apply NAME`` brings it in.

Why not ``dvc exp save``: a point's workspace is no git repository (``workspace``), and
one ``dvc exp save`` costs 1-2 s of a login node (a fresh DVC process, its repo
opened, its in-progress refs ``refs/exps/exec/...`` kept once per git directory, so
saves cannot overlap). Here one point is 5 short git commands in the project's git
directory with a private index file: the sweep's snapshot (HEAD + uncommitted
changes), plus every file of the point's folder that is new or changed and not
ignored (its params.yaml, dvc.lock, metrics kept in git), never a DVC-cached output.
The ref is created only if absent (``update-ref REF NEW ""``): an experiment is never
overwritten, even by two login-node commands saving at once.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hpcpipe.console import say
from hpcpipe.sweep.record import Point, Sweep
from hpcpipe.sweep.workspace import git
from hpcpipe.validation import ConfigError


def import_point(root: Path, sweep: Sweep, point: Point, label: str) -> None:
    """A finished point's metrics into the record, and its workspace saved as an experiment.
    A failed save is kept as the point's error (its results stay in its workspace)."""
    where = root / point.workspace
    point.metrics = read_metrics(where, sweep.metrics)
    wanted = sweep.experiment_name(point)
    name, why = save_experiment(root, sweep, where, wanted)
    if why:
        point.error = why
        say(f"sweep {sweep.name}: point {label}: finished, but not saved as an experiment: {why}")
        return
    point.experiment, point.error = name, ""
    kept = f" (an experiment {wanted} exists already, and is kept)" if name != wanted else ""
    say(f"sweep {sweep.name}: point {label}: saved as experiment {name}{kept}")


def taken_names(root: Path) -> set[str]:
    """Names of every experiment, on any baseline (one ``for-each-ref`` for all)."""
    refs = git(root, "for-each-ref", "--format=%(refname)", "refs/exps/").decode().split()
    # refs/exps/<2 hex>/<38 hex>/NAME; refs/exps/exec/... are DVC's own, not experiments
    return {ref.split("/")[-1] for ref in refs if len(ref.split("/")) == 5 and ref.split("/")[2] != "exec"}


def free_name(taken: set[str], name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... if an experiment of that name exists on any
    baseline: one left by an earlier sweep whose record was removed, or a user's own.
    An experiment is never overwritten, and ``dvc exp apply NAME`` stays unambiguous."""
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def exp_ref(baseline: str, name: str) -> str:
    return f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"


def exp_hash(workspace: Path, stages: Sequence[str]) -> str:
    """What ``dvc exp save`` puts in its commit message: the sha256 of the stages' lock entries."""
    from dvc.utils import dict_sha256

    lock = yaml.safe_load((workspace / "dvc.lock").read_text()) or {}
    entries = lock.get("stages", {})
    return dict_sha256({stage: entries[stage] for stage in stages if stage in entries})


PRIVATE = (".dvc/config.local", ".dvc/tmp", ".dvc/cache", ".hpcpipe")  # never in an experiment


def _not_ignored(workspace: Path, paths: Sequence[str], env: dict[str, str]) -> list[str]:
    present = [path for path in paths if (workspace / path).exists()]
    if not present:
        return []
    listed = "".join(f"{path}\n" for path in present).encode()
    proc = subprocess.run(
        ["git", "check-ignore", "--stdin"], cwd=workspace, input=listed, capture_output=True, env=env
    )
    ignored = set(proc.stdout.decode().splitlines())
    return [path for path in present if path not in ignored]


def ignore_outputs(workspace: Path, cached: Sequence[str], env: dict[str, str]) -> list[str]:
    """What ``dvc repro`` does in a git workspace, and cannot in a point's (``no_scm``):
    each DVC-cached output there that git does not ignore yet gets its ``/NAME`` line in
    the ``.gitignore`` beside it, so the experiment, applied, leaves no untracked output.
    Returns the pathspecs that keep DVC's and hpcpipe's private files (``.dvc/config.local``,
    ``.dvc/tmp``...) out of it where no ignore file does (git refuses to exclude an
    ignored path, so only those)."""
    for out in _not_ignored(workspace, cached, env):
        folder, name = posixpath.split(out)
        gitignore = workspace / folder / ".gitignore"
        text = gitignore.read_text() if gitignore.exists() else ""
        gitignore.unlink(missing_ok=True)  # a link to the sweep's checkout: never written through
        gitignore.write_text(text + ("" if not text or text.endswith("\n") else "\n") + f"/{name}\n")
    return [f":(exclude){path}" for path in _not_ignored(workspace, PRIVATE, env)]


def save_experiment(root: Path, sweep: Sweep, workspace: Path, name: str) -> tuple[str, str]:
    """Save the point's folder as experiment ``name`` (or the next free ``name-N``).
    Returns (the name it got, ""), or (name, why not) in one line."""
    from hpcpipe.sweep.points import index_path
    from hpcpipe.sweep.snapshot import git_dir

    template = index_path(root, sweep.name)
    index = template.with_name(f".{workspace.name}.{os.getpid()}.index")
    try:
        if template.exists():
            shutil.copyfile(template, index)
        else:  # a sweep recorded before snapshots: its worktrees hold HEAD + the changes
            git(root, "read-tree", sweep.base_commit, env={**os.environ, "GIT_INDEX_FILE": str(index)})
        env = {**os.environ, "GIT_DIR": str(git_dir(root)), "GIT_WORK_TREE": str(workspace),
               "GIT_INDEX_FILE": str(index)}  # fmt: skip
        private = ignore_outputs(workspace, sweep.cached_outs, env)  # never an output in git
        git(workspace, "add", "--ignore-removal", "--", ".", *private, env=env)
        tree = git(workspace, "write-tree", env=env).decode().strip()
        message = f"dvc: commit experiment {exp_hash(workspace, sweep.affected)}"
        commit = git(workspace, "commit-tree", tree, "-p", sweep.base_commit, "-m", message, env=env)
        taken = taken_names(root)
        for _ in range(100):  # another command may take a name between the look and the write
            got = free_name(taken, name)
            try:
                git(root, "update-ref", exp_ref(sweep.base_commit, got), commit.decode().strip(), "")
                return got, ""
            except ConfigError:
                taken.add(got)
        return name, f"no free experiment name like {name}"
    except (ConfigError, OSError, ValueError, KeyError, yaml.YAMLError) as err:
        return name, f"saving the experiment failed: {err}"
    finally:
        index.unlink(missing_ok=True)


def read_metrics(workspace: Path, files: Sequence[str]) -> dict[str, Any]:
    """Top-level numbers of the point's metrics files, as ``FILE_STEM.KEY`` (train.train_loss)."""
    found: dict[str, Any] = {}
    for name in files:
        path = workspace / name
        try:
            data = (
                json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text())
            )
        except (OSError, ValueError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            for key, value in data.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    found[f"{path.stem}.{key}"] = value
    return found
