"""Finished points -> DVC experiments of the project, saved from the login node one at a time.

``dvc exp save`` in a point's worktree writes the experiment's git refs into the
project's shared git directory, based on the project's HEAD, so ``dvc exp show``
in the project lists it and ``dvc exp apply NAME`` brings it in (its outputs are
in the shared cache). Saves are serialised here rather than done by each array
task: DVC keeps its in-progress experiment refs (``refs/exps/exec/...``) once per
git directory, so two saves at once in worktrees of one repo would clobber each
other.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from hpcpipe.launch.launcher import say
from hpcpipe.sweep.record import Point, Sweep
from hpcpipe.sweep.workspace import git
from hpcpipe.validation import ConfigError


def import_point(root: Path, sweep: Sweep, point: Point, label: str) -> None:
    """A finished point's metrics into the record, and its workspace saved as an experiment.
    A failed save is kept as the point's error (its results stay in its workspace)."""
    where = root / point.workspace
    point.metrics = read_metrics(where, sweep.metrics)
    wanted = sweep.experiment_name(point)
    try:
        name = free_name(where, wanted)
    except ConfigError as err:
        name, why = wanted, str(err)
    else:
        why = save_experiment(where, name, sweep.affected)
    if why:
        point.error = why
        say(f"sweep {sweep.name}: point {label}: finished, but not saved as an experiment: {why}")
        return
    point.experiment, point.error = name, ""
    kept = f" (an experiment {wanted} exists already, and is kept)" if name != wanted else ""
    say(f"sweep {sweep.name}: point {label}: saved as experiment {name}{kept}")


def free_name(workspace: Path, name: str) -> str:
    """``name``, or ``name-2``, ``name-3``... if an experiment of that name exists on any
    baseline: one left by an earlier sweep whose record was removed, or a user's own.
    An experiment is never overwritten, and ``dvc exp apply NAME`` stays unambiguous."""
    refs = git(workspace, "for-each-ref", "--format=%(refname)", "refs/exps/").decode().split()
    # refs/exps/<2 hex>/<38 hex>/NAME; refs/exps/exec/... are DVC's own, not experiments
    taken = {ref.split("/")[-1] for ref in refs if len(ref.split("/")) == 5 and ref.split("/")[2] != "exec"}
    candidate, number = name, 1
    while candidate in taken:
        number += 1
        candidate = f"{name}-{number}"
    return candidate


def save_experiment(workspace: Path, name: str, stages: Sequence[str]) -> str:
    """Save the workspace as experiment ``name``; returns "" on success, else why not (one line)."""
    try:
        git(workspace, "add", "--all")  # metrics kept in git (cache: false) and the new dvc.lock
    except Exception as err:
        return str(err)
    # Targets: only the stages the point ran; committing an upstream stage would ask for
    # its inputs (the raw data), which the workspace never linked.
    proc = subprocess.run(
        ["dvc", "exp", "save", "--name", name, *stages],  # never --force: see free_name
        cwd=workspace,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
        return f"dvc exp save failed: {lines[-1].strip() if lines else proc.returncode}"
    return ""


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
