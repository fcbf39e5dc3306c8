"""The tutorial project (tests/support/tutorial) on the real one-node Slurm test cluster.

A plain DVC project taken to Slurm the way a user would: `hpcpipe init`, a
configs/cluster/testcluster.yaml of its own that sends `train` to the imitated
GPU partition, and `dvc repro` with HPCPIPE_CLUSTER=testcluster. Every stage is
one real Slurm job (sbatch, slurmctld, slurmd, sacct), named `hpcpipe-NAME`.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.support.commands import dvc
from tests.support.slurm import now, sacct_row
from tests.support.tutorial_project import (
    RESULTS,
    STAGES,
    base,
    groups,
    hpcpipe_init,
    jobs,
    set_param,
    stages_run,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# the project's own addition to the shipped testcluster profile
PROFILE = """\
stages:
  train:
    partition: gpu
    constraint: gpu
    gpus: 1
"""


def tutorial_jobs(since: str, workdir: Path) -> dict[str, str]:
    """Job id -> stage group of every hpcpipe job of a tutorial stage that sacct has since
    `since`, submitted from ``workdir`` (the test cluster may run another session's tutorial)."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", since, "-o", "JobID,JobName,WorkDir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    wanted = set(groups(STAGES))
    here = workdir.resolve()
    found = {}
    for line in out.splitlines():
        job_id, name, where = line.split("|", 2)
        group = base(name.removeprefix("hpcpipe-"))
        if name.startswith("hpcpipe-") and group in wanted and Path(where).resolve() == here:
            found[job_id] = group
    return found


def new_jobs(since: str, earlier: set[str], workdir: Path) -> dict[str, str]:
    return {job_id: group for job_id, group in tutorial_jobs(since, workdir).items() if job_id not in earlier}


def wait_for_jobs(
    since: str, earlier: set[str], expected: Counter, workdir: Path, timeout_s: float = 30
) -> dict[str, str]:
    """new_jobs once sacct has all of them: slurmdbd gets a job's record a little after it ends."""
    deadline = time.monotonic() + timeout_s
    found = new_jobs(since, earlier, workdir)
    while Counter(found.values()) != expected and time.monotonic() < deadline:
        time.sleep(0.5)
        found = new_jobs(since, earlier, workdir)
    return found


def test_each_stage_is_one_completed_job_and_a_noop_repro_submits_none(
    tutorial_project: Path, slurm_cluster, monkeypatch: pytest.MonkeyPatch, plain_results: dict[str, bytes]
):
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
    (tutorial_project / "configs" / "cluster").mkdir(parents=True)
    (tutorial_project / "configs" / "cluster" / "testcluster.yaml").write_text(PROFILE)
    hpcpipe_init(tutorial_project)

    since = now()
    # sacct's -S has 1 s steps: an earlier job from this folder may be in it
    earlier = set(tutorial_jobs(since, tutorial_project))
    first = dvc(tutorial_project, "repro")
    assert stages_run(first.stdout) == list(STAGES)
    assert jobs(first.stderr, "COMPLETED") == groups(STAGES)
    ours = wait_for_jobs(since, earlier, groups(STAGES), tutorial_project)
    assert Counter(ours.values()) == groups(STAGES), ours
    rows = {job_id: sacct_row(job_id) for job_id in ours}
    assert {job_id: state for job_id, (state, _) in rows.items()} == dict.fromkeys(ours, "COMPLETED")
    partitions = {ours[job_id]: partition for job_id, (_, partition) in rows.items()}
    assert partitions == dict.fromkeys(groups(STAGES), "cpu") | {"train": "gpu"}
    for name in RESULTS:  # the scripts, unchanged, give bitwise the plain run's results
        assert (tutorial_project / name).read_bytes() == plain_results[name], name

    again = dvc(tutorial_project, "repro")
    assert stages_run(again.stdout) == []
    assert jobs(again.stderr, "submitted") == Counter()
    time.sleep(3)  # a job submitted by it would have reached sacct by now
    assert new_jobs(since, earlier, tutorial_project) == ours


# train's 8 epochs at 1 s each (a sleep: the same on a loaded machine): after the epoch-2
# checkpoint the test reacts to, 6 s of training are left to requeue it in the middle
EPOCH_S = 1
RESUMED = re.compile(r"^train: resuming after epoch (\d+) from ", re.MULTILINE)
EPOCH_LINE = re.compile(r"^epoch (\d+)/8: loss ", re.MULTILINE)


def checkpointed_epoch(root: Path) -> int:
    """The last epoch train.py saved into $HPCPIPE_CHECKPOINT_DIR (0: none yet)."""
    epochs = [0]
    for state in (root / ".hpcpipe" / "jobs" / "train").glob("checkpoint-*/state.json"):
        with contextlib.suppress(OSError, ValueError):  # replaced while read
            epochs.append(json.loads(state.read_text())["epoch"])
    return max(epochs)


def test_scontrol_requeue_after_epoch_2_resumes_train_to_the_same_model(
    tutorial_project: Path,
    slurm_cluster,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    plain_results: dict[str, bytes],  # the reference: plain DVC, no requeue
):
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
    set_param(tutorial_project, "train.epoch_seconds", EPOCH_S)  # the model does not depend on it
    hpcpipe_init(tutorial_project)
    dvc(tutorial_project, "repro", "featurize")  # the stages above train, first

    out, err = tmp_path / "repro.out", tmp_path / "repro.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        launcher = subprocess.Popen(
            ["dvc", "repro", "train"], cwd=tutorial_project, stdout=stdout, stderr=stderr, text=True
        )
        try:
            deadline = time.monotonic() + 120
            while checkpointed_epoch(tutorial_project) < 2:
                assert launcher.poll() is None, err.read_text()
                assert time.monotonic() < deadline, "train saved no epoch 2 in 120 s"
                time.sleep(0.1)
            ledger = tutorial_project / ".hpcpipe" / "jobs" / "ledger" / "train.json"
            job_id = json.loads(ledger.read_text())["job_id"]
            subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True, text=True)
            launcher.wait(timeout=300)
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    repro_out, repro_err = out.read_text(), err.read_text()
    assert launcher.returncode == 0, repro_out + repro_err
    assert stages_run(repro_out) == ["train"]
    assert jobs(repro_err, "submitted") == Counter(["train"])  # one submission: Slurm requeued it

    # one job id that ran twice: its first run REQUEUED, its second COMPLETED
    assert sacct_row(job_id)[0] == "COMPLETED"
    runs = subprocess.run(
        ["sacct", "-j", job_id, "--duplicates", "-X", "-n", "-P", "-o", "JobID,State"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert runs == [f"{job_id}|REQUEUED", f"{job_id}|COMPLETED"], runs

    # the job's log (both runs, as the launcher streamed it): the second went on from the
    # first's checkpoint, not from epoch 1
    log = (tutorial_project / ".hpcpipe" / "jobs" / "train" / f"{job_id}_0_log.out").read_text()
    (resumed,) = map(int, RESUMED.findall(log))
    assert 2 <= resumed < 8, log
    before, after = (list(map(int, EPOCH_LINE.findall(part))) for part in RESUMED.split(log, 1)[::2])
    assert 2 <= len(before) <= resumed and before == list(range(1, len(before) + 1)), log
    assert after == list(range(resumed + 1, 9)), log
    assert RESUMED.search(repro_out), repro_out
    assert (tutorial_project / "models" / "model.json").read_bytes() == plain_results["models/model.json"]
    assert list((tutorial_project / ".hpcpipe" / "jobs" / "train").glob("checkpoint-*")) == []
