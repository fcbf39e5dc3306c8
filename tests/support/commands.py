"""git, dvc and the `hpcpipe` command, run in a test project as its user runs them, and
``wait_for`` for what a test waits on (a job's state, a file, a process's end)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

# who commits in a test project (git refuses to commit without one)
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@e",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@e",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def commit_all(root: Path, message: str = "project") -> None:
    """Commit everything in ``root`` (`dvc exp` and sweeps start from a commit)."""
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)


def dvc(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The real `dvc` CLI in ``root``; with ``check``, a failure shows its output."""
    result = subprocess.run(["dvc", *args], cwd=root, capture_output=True, text=True, timeout=900)
    if check and result.returncode != 0:
        output = f"{result.stdout}\n{result.stderr}"
        raise AssertionError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{output}")
    return result


def experiments(root: Path) -> dict[str, dict]:
    """``dvc exp show --json``: experiment name -> {"params": {...}, "metrics": {...}} of the baseline."""
    out = subprocess.run(
        ["dvc", "exp", "show", "--json"], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    found = {}
    for baseline in json.loads(out):
        for branch in baseline.get("experiments") or []:
            for rev in branch["revs"]:
                data = rev["data"]
                params = data["params"]["params.yaml"]["data"]
                metrics = {k: v["data"] for k, v in (data.get("metrics") or {}).items()}
                found[rev["name"]] = {"params": params, "metrics": metrics}
    return found


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the installed `hpcpipe` console script as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        ["hpcpipe", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )


def wait_for(predicate: Callable[[], object], timeout: float = 60, what: str = "") -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting{f' for {what}' if what else ''}")
        time.sleep(0.1)
