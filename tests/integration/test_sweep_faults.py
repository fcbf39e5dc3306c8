"""Sweeps under faults (issue 13, point 9): each case on real components.

The project is the tutorial example (tests/support/tutorial: plain `python src/*.py`
stages, a whole repro in seconds), with the real `dvc` and `git` CLIs. Where Slurm is
part of the case the array goes to the real test cluster: its refusal is a real one
(a sweep task asking for more memory than the node has). Two things cannot be made to
happen on demand, and are stood in for at the process boundary, by a PATH shim: a
Ctrl-C that lands while `sbatch` runs (a shim that runs the real sbatch, then sends
SIGINT to the sweep before printing the job id). A refused `scancel`: tests/unit/test_sweep_cancel.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from hpcpipe.sweep import record, workspace
from tests.conftest import git, run_cli


def experiment_params(root: Path) -> dict[str, dict]:
    """``dvc exp show --json``: experiment name -> its params.yaml, every baseline."""
    out = subprocess.run(
        ["dvc", "exp", "show", "--json", "--all-commits"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for baseline in json.loads(out):
        for branch in baseline.get("experiments") or []:
            for rev in branch["revs"]:
                found[rev["name"]] = rev["data"]["params"]["params.yaml"]["data"]
    return found


def worktrees(root: Path) -> int:
    return len(git(root, "worktree", "list").splitlines())


def shim(folder: Path, name: str, body: str) -> Path:
    """An executable ``name`` in ``folder``, to put first on PATH."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return folder


def slurm_jobs(name: str) -> dict[str, str]:
    """Job id -> state of every job or array task called ``name`` that Slurm knows: from
    slurmctld (squeue, which keeps ended jobs for MinJobAge) and from accounting (sacct,
    which may lag behind a second or two)."""
    found = {}
    for command in (
        ["sacct", "-n", "-P", "-X", "--name", name, "-S", "now-1hour", "-o", "JobID,State"],
        ["squeue", "-h", "-r", "-t", "all", "--name", name, "-o", "%i|%T"],
    ):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        found.update(line.split("|")[:2] for line in out.splitlines() if line)
    return found


@pytest.fixture
def unique_name() -> str:
    """A sweep name no other test session on the shared cluster uses."""
    return f"t{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- workspaces
def test_point_workspaces_get_the_projects_config_local(tutorial_project: Path, tmp_path: Path):
    """The project's own local DVC settings (hardlink locks and a group-shared cache on
    Lustre, a scratch remote given relative to .dvc/) hold in every point's worktree."""
    root = tutorial_project
    store = tmp_path / "store"
    (root / ".dvc" / "config.local").write_text(
        "[core]\n    hardlink_lock = true\n    remote = scratch\n"
        "[cache]\n    shared = group\n"
        f"['remote \"scratch\"']\n    url = {os.path.relpath(store, root / '.dvc')}\n"
    )
    point = root / ".hpcpipe" / "sweeps" / "s" / "points" / "001-x"
    git(root, "worktree", "add", "--detach", "--quiet", str(point), "HEAD")
    cache = root / ".dvc" / "cache"
    workspace.finish(root, point, cache)

    done = subprocess.run(["dvc", "config", "--list"], cwd=point, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert config["core.hardlink_lock"] == "true"
    assert config["cache.shared"] == "group"
    assert Path(config["cache.dir"]) == cache  # the project's cache, absolute
    url = config["remote.scratch.url"]
    assert (point / ".dvc" / url).resolve() == store.resolve()  # the same place, seen from here
    assert "hardlink" in config["cache.type"]


# --------------------------------------------------------------------------- experiments
@pytest.mark.slow
def test_an_experiment_name_that_exists_is_never_overwritten(tutorial_project: Path):
    """The user's own experiment `s-lr-0.1` keeps its params; the sweep's point of that
    name is saved beside it, as `s-lr-0.1-2`, and the sweep says so."""
    root = tutorial_project
    mine = subprocess.run(
        ["dvc", "exp", "run", "-q", "-n", "s-lr-0.1", "-S", "train.lr=0.3"], cwd=root, capture_output=True
    )
    assert mine.returncode == 0, mine.stderr
    subprocess.run(["dvc", "checkout", "-q", "--force"], cwd=root, check=True)  # params as committed
    done = run_cli("sweep", "-S", "train.lr=0.1", "--name", "s", cwd=root)
    assert done.returncode == 0, done.stderr
    assert (
        "saved as experiment s-lr-0.1-2 (an experiment s-lr-0.1 exists already, and is kept)" in done.stderr
    )

    found = experiment_params(root)
    assert found["s-lr-0.1"]["train"]["lr"] == 0.3  # the user's, untouched
    assert found["s-lr-0.1-2"]["train"]["lr"] == 0.1
    assert record.load(root, "s").points[0].experiment == "s-lr-0.1-2"
