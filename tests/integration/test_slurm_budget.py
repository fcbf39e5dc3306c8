"""Slurm calls on a budget (issue 16.2), on the real test cluster: two launchers and a
sweep watcher of one project, running at once, share one squeue per poll; sacct is not
asked while the jobs are in squeue's answer; a job cancelled by someone else is still
reported, within a few answers.

squeue and sacct are the real ones, behind a shim on PATH that only logs each call and
execs them. The profile is the test cluster's with ``poll_s: 2`` (a site's is 12), so
a short run holds enough polls to tell one shared squeue per poll from one per watcher.
Bounds are counts of calls against the polls the watching window holds, never times.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hpcpipe.launch.watch import FAILURE_RECHECK_S, FAILURE_WINDOW_S
from tests.support.commands import git, wait_for
from tests.support.launch_project import add_command_stage, add_stage, ledger_job
from tests.support.project import update_params
from tests.support.slurm import squeue_state

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

POLL_S = 2.0
NAP = [sys.executable, "-c", "import time; time.sleep(25)"]


def logging_shims(folder: Path, log: Path) -> Path:
    """squeue and sacct that log "TIME NAME ARGS" to ``log`` and run the real command."""
    folder.mkdir()
    for name in ("squeue", "sacct"):
        real = shutil.which(name)
        (folder / name).write_text(f'#!/bin/sh\necho "$(date +%s.%N) {name} $*" >> {log}\nexec {real} "$@"\n')
        (folder / name).chmod(0o755)
    return folder


def calls(log: Path, name: str, since: float = 0.0, until: float = float("inf")) -> list[tuple[float, str]]:
    found = []
    for line in log.read_text().splitlines():
        stamp, command, args = line.split(" ", 2)
        if command == name and since <= float(stamp) <= until:
            found.append((float(stamp), args))
    return found


def test_two_launchers_and_a_sweep_share_one_squeue_per_poll_and_a_cancel_is_still_seen(
    slurm_project: Path, tmp_path: Path
):
    root = slurm_project
    profile = {"extends": "testcluster", "poll_s": POLL_S}
    (root / "configs" / "cluster" / "budget.yaml").write_text(yaml.safe_dump(profile))
    first_args = add_command_stage(root, "nap_a", NAP)
    second_args = add_command_stage(root, "nap_b", NAP)
    update_params(root, nap={"seconds": 1})
    point = shlex.join(["hpcpipe", "run", "nap_s", "--", *NAP[:2], "import time; time.sleep(5)"])
    add_stage(root, "nap_s", {"cmd": point, "params": ["nap"]})  # a sweep point: what -S nap.* changes
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "naps")
    log = tmp_path / "slurm-calls.log"
    log.touch()
    shims = logging_shims(tmp_path / "shims", log)
    env = {**os.environ, "HPCPIPE_CLUSTER": "budget", "PATH": f"{shims}{os.pathsep}{os.environ['PATH']}"}

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["hpcpipe", *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    first, second = start(*first_args), start(*second_args)
    sweep = start("sweep", "-S", "nap.seconds=1,2", "--name", "naps", "--parallelism", "2")
    wait_for(lambda: ledger_job(root, "nap_b") is not None, timeout=180)
    victim = ledger_job(root, "nap_b")
    wait_for(lambda: squeue_state(victim) == "RUNNING", timeout=300)
    cancelled_at = time.time()
    subprocess.run(["scancel", victim], check=True)  # someone else: not its launcher
    _, second_err = second.communicate(timeout=120)
    reported_at = time.time()
    _, first_err = first.communicate(timeout=300)
    _, sweep_err = sweep.communicate(timeout=300)

    assert second.returncode != 0 and f"job {victim} CANCELLED" in second_err, second_err
    assert first.returncode == 0, first_err
    assert sweep.returncode == 0, sweep_err
    squeues = calls(log, "squeue")
    assert all("-t all -u" in args for _, args in squeues)  # every one the shared, whole-user call
    window = squeues[-1][0] - squeues[0][0]
    submissions = 3  # two stages and one array: an answer asked before cannot know the job
    # shared: one per poll over the window; one per watcher would be three times that
    assert len(squeues) <= window / POLL_S + submissions + 4, (len(squeues), window)
    # the cancelled job wrote its failure, and its launcher asked Slurm at once, then every
    # FAILURE_RECHECK_S until Slurm said it was over (COMPLETING first): a few answers
    assert len(calls(log, "squeue", cancelled_at, reported_at)) <= 2 + FAILURE_WINDOW_S / FAILURE_RECHECK_S
    # every job stayed in squeue's answer (MinJobAge), so no state was asked of sacct;
    # the sacct calls are the launchers' usage lines, after their jobs ended
    state_sacct = [args for _, args in calls(log, "sacct") if "JobID,State,ExitCode" in args]
    assert state_sacct == []
