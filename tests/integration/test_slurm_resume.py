"""A train job cut by Slurm resumes, and ends bitwise where an uninterrupted one ends.

Real jobs on the one-node test cluster (slurm/testcluster), the real train stage
through ``hpcpipe run train``: once uninterrupted (the reference), once with a
1-minute time limit (Slurm's USR2 warning -> submitit calls ``run_resumable_stage.checkpoint``
-> ``scontrol requeue``), once requeued from outside with ``scontrol requeue`` while
it trains (no warning: SIGTERM, then SIGKILL). Each requeued attempt resumes from the
per-epoch checkpoint; the weights must be ``torch.equal`` to the reference's and the
loss/accuracy history identical.

How long training takes depends on the machine's load (the test cluster's node is
this shared machine), and a time-limit cut needs a job longer than one attempt
(~40 s of training). So the reference job doubles as the calibration: if its
training took under a minute, the epoch count is raised to aim at 90 s and the
reference rerun. The 1-minute profile allows 30 requeues, so a load that slows
training several times over still finishes.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from hpcpipe.config import load_params
from tests.conftest import PROJECT_FILES, REPO, git, update_params
from tests.integration.test_launcher_local import wait_for

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

TRAIN_IMAGES = 1000
RECIPE = {"model": "fast", "width": 0.25, "batch_size": 250, "lr": 0.5}
TARGET_TRAINING_S = 90
FIRST_GUESS_EPOCHS = 40
TRAIN = [
    "run",
    "train",
    "--fn",
    "hpcpipe.stages.train:train",
    "--prepared",
    "data/prepared",
    "--model",
    "models/model.pt",
    "--metrics",
    "metrics/train.json",
    "--history",
    "metrics/train_history.csv",
]


@pytest.fixture(scope="module")
def resume_project(tmp_path_factory, committed_sample: Path, slurm_cluster) -> Path:
    """The example project with 1,000 prepared training images and a 1-minute profile."""
    root = tmp_path_factory.mktemp("resume") / "project"
    for name in PROJECT_FILES:
        src, dst = REPO / name, root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    git(root, "init", "-q", "-b", "main")  # DVC (so the launcher) opens a project only inside git
    update_params(
        root,
        prepare={"train_size": TRAIN_IMAGES, "test_size": 100},
        train={**RECIPE, "epochs": FIRST_GUESS_EPOCHS},
    )
    from hpcpipe.stages.prepare import prepare

    params = load_params(root / "params.yaml")
    params = dataclasses.replace(params, data=dataclasses.replace(params.data, path=str(committed_sample)))
    prepare(params, prepared=root / "data" / "prepared")
    short = {"extends": "testcluster", "defaults": {"time_min": 1}, "max_timeouts": 30}
    (root / "configs" / "cluster" / "testcluster-1min.yaml").write_text(yaml.safe_dump(short))
    return root


def hpcpipe(root: Path, *args: str, profile: str) -> subprocess.Popen:
    env = {**os.environ, "HPCPIPE_CLUSTER": profile}
    env.pop("SLURM_JOB_ID", None)
    return subprocess.Popen(
        [sys.executable, "-m", "hpcpipe", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@dataclasses.dataclass(frozen=True)
class Trained:
    job_id: str
    restarts: int
    stdout: str
    state_dict: dict[str, torch.Tensor]
    history: list[tuple[str, str, str, str]]  # epoch, loss, accuracy, lr: not the timings
    metrics: dict


def finish(root: Path, launcher: subprocess.Popen, timeout: float = 1800) -> Trained:
    out, err = launcher.communicate(timeout=timeout)
    assert launcher.returncode == 0, out + err
    (job_id,) = set(re.findall(r"train: job (\d+) submitted", err))
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    restarts = int(re.search(r"Restarts=(\d+)", shown).group(1))
    with (root / "metrics" / "train_history.csv").open() as f:
        history = [tuple(row[:4]) for row in csv.reader(f)]
    metrics = json.loads((root / "metrics" / "train.json").read_text())
    state = torch.load(root / "models" / "model.pt", weights_only=True)["state_dict"]
    leftovers = list((root / ".hpcpipe" / "jobs" / "train").glob("checkpoint-*"))
    assert leftovers == []  # removed once the outputs were published
    return Trained(job_id, restarts, out, state, history, metrics)


def assert_bitwise_equal(resumed: Trained, reference: Trained) -> None:
    assert resumed.history == reference.history
    assert {k: v for k, v in resumed.metrics.items() if k in ("train_loss", "train_accuracy", "epochs")} == {
        k: v for k, v in reference.metrics.items() if k in ("train_loss", "train_accuracy", "epochs")
    }
    assert resumed.state_dict.keys() == reference.state_dict.keys()
    unequal = [k for k, v in reference.state_dict.items() if not torch.equal(v, resumed.state_dict[k])]
    assert unequal == []


@pytest.fixture(scope="module")
def reference(resume_project: Path) -> Trained:
    """The uninterrupted run, with an epoch count that takes over a minute of training here."""
    epochs = FIRST_GUESS_EPOCHS
    for _ in range(3):
        trained = finish(resume_project, hpcpipe(resume_project, *TRAIN, profile="testcluster"))
        assert trained.restarts == 0 and "resuming from" not in trained.stdout
        if trained.metrics["seconds"] >= 60:
            return trained
        epochs = round(epochs * TARGET_TRAINING_S / max(1.0, trained.metrics["seconds"]))
        update_params(resume_project, train={"epochs": epochs})
    raise AssertionError(f"training stayed under a minute: {trained.metrics}")


def test_a_job_cut_by_its_time_limit_is_requeued_and_resumes_bitwise(resume_project: Path, reference):
    resumed = finish(resume_project, hpcpipe(resume_project, *TRAIN, profile="testcluster-1min"))
    assert resumed.job_id != reference.job_id
    assert resumed.restarts >= 1, (
        "training fit in one attempt: nothing was cut (machine faster than calibrated)"
    )
    assert "resuming from" in resumed.stdout
    assert_bitwise_equal(resumed, reference)


def test_scontrol_requeue_mid_training_resumes_bitwise(resume_project: Path, reference):
    launcher = hpcpipe(resume_project, *TRAIN, profile="testcluster")
    folder = resume_project / ".hpcpipe" / "jobs" / "train"
    wait_for(lambda: any(folder.glob("checkpoint-train-*.pt")), timeout=300)  # an epoch is done
    ledger = json.loads((resume_project / ".hpcpipe" / "jobs" / "ledger" / "train.json").read_text())
    subprocess.run(["scontrol", "requeue", ledger["job_id"]], check=True, capture_output=True)
    resumed = finish(resume_project, launcher)
    assert resumed.job_id == ledger["job_id"] and resumed.restarts == 1
    assert "resuming from" in resumed.stdout
    assert_bitwise_equal(resumed, reference)
