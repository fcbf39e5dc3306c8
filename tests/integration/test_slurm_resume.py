"""A train job that Slurm warns of its time limit, or requeues, resumes, and ends bitwise where an
uninterrupted one ends.

Real jobs on the one-node test cluster (slurm/testcluster), the real train stage through
``hpcpipe run train``: once uninterrupted (the reference); once warned of its time limit
while it trains; once requeued from outside with ``scontrol requeue`` (no warning:
SIGTERM, then SIGKILL). Each interrupted job must be requeued (same job id, Restarts >= 1),
its next attempt must resume from the per-epoch checkpoint, and its weights must be
``torch.equal`` to the reference's, its loss/accuracy history identical.

The time-limit warning is sent by the test, as soon as the job has saved its first epoch:
``scancel --signal=USR2 JOBID`` is what ``#SBATCH --signal=USR2@N`` makes Slurm send N
seconds before the limit, USR2 to the processes of the job's steps. (Not ``--batch`` or
``--full``: those also signal the batch shell, which dies of USR2 and takes the job with
it, which Slurm's warning does not do.) submitit's handler then takes the job's
time-limit path: with a limit under 10 minutes it counts every warning as a time-out,
calls ``run_resumable_stage.checkpoint`` and ``scontrol requeue``s the job. Waiting for a
real limit instead would need a run calibrated to outlast a minute of training.

The warned job runs twice: on the shared test cluster, and on a second one started with
``JobRequeue=0``, a site where a job is requeueable only if it asked to be: hpcpipe
submits resumable stages with ``--requeue``, without which submitit's ``scontrol requeue``
is refused there and the job dies at its limit.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from hpcpipe.config import load_params
from tests.support.commands import wait_for
from tests.support.project import RawData, copy_project, update_params
from tests.support.slurm import second_cluster

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The fast recipe, narrow, on the fixture's 300 training images: 0.3 s an epoch on 2 idle
# cores, several seconds on a loaded machine. Six epochs: after the first checkpoint five
# more (>= 1.5 s) keep the job training while the test reacts to it (~0.2 s), and every
# run (the reference, each resumed one) trains for 6 epochs, not 10.
RECIPE = {"model": "fast", "width": 0.25, "batch_size": 50, "lr": 0.5, "epochs": 6}
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


def resume_project(root: Path, project_sample: RawData) -> Path:
    """The example project with its data already prepared: only train runs as a job."""
    copy_project(root, project_sample)
    update_params(root, prepare={"train_size": 0, "test_size": 0}, train=RECIPE)
    from hpcpipe.stages.prepare import prepare

    params = load_params(root / "params.yaml")
    data = dataclasses.replace(params.data, path=str(project_sample.folder))
    prepare(dataclasses.replace(params, data=data), prepared=root / "data" / "prepared")
    return root


@pytest.fixture(scope="module")
def resume_root(tmp_path_factory, project_sample: RawData, slurm_cluster) -> Path:
    return resume_project(tmp_path_factory.mktemp("resume") / "project", project_sample)


@pytest.fixture(scope="module")
def no_requeue_conf(tmp_path_factory, slurm_cluster) -> Iterator[Path]:
    """A second test cluster started with JobRequeue=0, for this module only."""
    with second_cluster(tmp_path_factory.mktemp("tc-no-requeue"), job_requeue="0") as conf:
        out = subprocess.run(
            ["scontrol", "show", "config"], env=slurm_env(conf), capture_output=True, text=True
        )
        assert re.search(r"^JobRequeue\s*=\s*0$", out.stdout, re.MULTILINE), out.stdout + out.stderr
        yield conf


def slurm_env(conf: Path | None) -> dict[str, str]:
    """This process's environment, for the cluster of ``conf`` (None: the shared one)."""
    env = {**os.environ}
    if conf is not None:
        env["SLURM_CONF"] = str(conf)
    env.pop("SLURM_JOB_ID", None)
    return env


def hpcpipe(
    root: Path, *args: str, conf: Path | None = None, cluster: str = "testcluster"
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "hpcpipe", *args],
        cwd=root,
        env={**slurm_env(conf), "HPCPIPE_CLUSTER": cluster},
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
    stderr: str
    state_dict: dict[str, torch.Tensor]
    history: list[tuple[str, str, str, str]]  # epoch, loss, accuracy, lr: not the timings
    metrics: dict


def finish(root: Path, launcher: subprocess.Popen, conf: Path | None = None, timeout: float = 900) -> Trained:
    out, err = launcher.communicate(timeout=timeout)
    assert launcher.returncode == 0, out + err
    (job_id,) = set(re.findall(r"train: job (\d+) submitted", err))
    shown = subprocess.run(
        ["scontrol", "show", "job", job_id], env=slurm_env(conf), capture_output=True, text=True
    ).stdout
    restarts = int(re.search(r"Restarts=(\d+)", shown).group(1))
    with (root / "metrics" / "train_history.csv").open() as f:
        history = [tuple(row[:4]) for row in csv.reader(f)]
    metrics = json.loads((root / "metrics" / "train.json").read_text())
    state = torch.load(root / "models" / "model.pt", weights_only=True)["state_dict"]
    leftovers = list((root / ".hpcpipe" / "jobs" / "train").glob("checkpoint-*"))
    assert leftovers == []  # removed once the outputs were published
    return Trained(job_id, restarts, out, err, state, history, metrics)


def assert_bitwise_equal(resumed: Trained, reference: Trained) -> None:
    assert resumed.history == reference.history
    kept = ("train_loss", "train_accuracy", "epochs")
    assert {k: v for k, v in resumed.metrics.items() if k in kept} == {
        k: v for k, v in reference.metrics.items() if k in kept
    }
    assert resumed.state_dict.keys() == reference.state_dict.keys()
    unequal = [k for k, v in reference.state_dict.items() if not torch.equal(v, resumed.state_dict[k])]
    assert unequal == []


@pytest.fixture(scope="module")
def reference(resume_root: Path) -> Trained:
    """The uninterrupted run."""
    trained = finish(resume_root, hpcpipe(resume_root, *TRAIN))
    assert trained.restarts == 0 and "resuming from" not in trained.stdout
    assert len(trained.history) == RECIPE["epochs"] + 1  # header + one row per epoch
    return trained


def interrupt_after_first_epoch(
    root: Path, how: list[str], conf: Path | None = None, cluster: str = "testcluster"
) -> Trained:
    """Train; once the first epoch's checkpoint is saved, run ``how + [job id]``; wait for the end."""
    launcher = hpcpipe(root, *TRAIN, conf=conf, cluster=cluster)
    folder = root / ".hpcpipe" / "jobs" / "train"
    try:
        wait_for(
            lambda: any(folder.glob("checkpoint-train-*.pt")) or launcher.poll() is not None, timeout=300
        )
    finally:
        if launcher.poll() is not None or not any(folder.glob("checkpoint-train-*.pt")):
            launcher.kill()
            _, err = launcher.communicate()
            raise AssertionError(f"no checkpoint appeared (launcher exit {launcher.returncode}):\n{err}")
    ledger = json.loads((root / ".hpcpipe" / "jobs" / "ledger" / "train.json").read_text())
    subprocess.run([*how, ledger["job_id"]], env=slurm_env(conf), check=True, capture_output=True)
    resumed = finish(root, launcher, conf)
    assert resumed.job_id == ledger["job_id"] and resumed.restarts >= 1, (
        "the job was not requeued (or finished before it was interrupted)"
    )
    assert "resuming from" in resumed.stdout
    return resumed


WARNING = ["scancel", "--signal=USR2"]  # what Slurm sends at --signal=USR2@N before the limit


def test_a_job_warned_of_its_time_limit_is_requeued_and_resumes_bitwise(resume_root: Path, reference):
    resumed = interrupt_after_first_epoch(resume_root, WARNING)
    assert "this job is timed-out" in resumed.stderr  # submitit took its time-limit path
    assert_bitwise_equal(resumed, reference)


def test_the_time_limit_requeue_works_where_the_site_sets_job_requeue_0(
    tmp_path_factory, project_sample: RawData, no_requeue_conf: Path, reference
):
    root = resume_project(tmp_path_factory.mktemp("no-requeue") / "project", project_sample)
    resumed = interrupt_after_first_epoch(root, WARNING, conf=no_requeue_conf)
    assert "this job is timed-out" in resumed.stderr
    assert_bitwise_equal(resumed, reference)


def test_scontrol_requeue_mid_training_resumes_bitwise(resume_root: Path, reference):
    resumed = interrupt_after_first_epoch(resume_root, ["scontrol", "requeue"])
    assert resumed.restarts == 1
    assert_bitwise_equal(resumed, reference)


# train as two tasks, one on each node of the test cluster (gloo over loopback)
TWO_TASKS = {"extends": "testcluster", "stages": {"train": {"nodes": 2, "tasks_per_node": 1}}}


@pytest.fixture(scope="module")
def two_task_root(tmp_path_factory, project_sample: RawData, slurm_cluster) -> Path:
    import yaml

    root = resume_project(tmp_path_factory.mktemp("two-tasks") / "project", project_sample)
    (root / "configs" / "cluster" / "testcluster-2tasks.yaml").write_text(yaml.safe_dump(TWO_TASKS))
    return root


def test_a_two_task_train_warned_of_its_time_limit_resumes_every_rank_bitwise(two_task_root: Path):
    """Issue 14: the warning reaches both ranks, they stop at the same step, rank 0 saves,
    the whole allocation is requeued, and both ranks resume from that one checkpoint: the
    end is bitwise the end of an uninterrupted two-task run (CPU: per-rank BatchNorm, so
    a two-task run is its own reference, not the one-task run's)."""
    reference = finish(two_task_root, hpcpipe(two_task_root, *TRAIN, cluster="testcluster-2tasks"))
    assert reference.restarts == 0 and len(reference.history) == RECIPE["epochs"] + 1
    shown = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", reference.job_id, "-o", "NNodes,NTasks,AllocTRES"],
        capture_output=True,
        text=True,
    ).stdout
    assert shown.startswith("2|"), shown  # really on both nodes
    resumed = interrupt_after_first_epoch(two_task_root, WARNING, cluster="testcluster-2tasks")
    assert_bitwise_equal(resumed, reference)
