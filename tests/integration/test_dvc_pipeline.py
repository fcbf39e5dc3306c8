"""The README's walk-through with the real `dvc` CLI on a temp git copy of the project.

Every stage runs through `hpcpipe run` on submitit's local executor (a real
subprocess per stage) on real CIFAR-10 images from tests/data, shrunk as the
`project` fixture shrinks it to a few hundred images and one epoch. The first repro,
from scratch, is made once (``reproduced``); each test goes on in a copy of it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.commands import commit_all, dvc, git
from tests.support.project import SMALL, RawData, copy_project, update_params, work_in

pytestmark = pytest.mark.slow

STAGES = ("prepare", "train", "evaluate")


def ran(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def job_count(root: Path) -> int:
    jobs = root / ".hpcpipe" / "jobs"
    return len(list(jobs.glob("*/*_submitted.pkl"))) if jobs.exists() else 0


def metrics(root: Path) -> dict:
    return json.loads(dvc(root, "metrics", "show", "--json").stdout)[""]["data"]


@dataclass(frozen=True)
class Reproduced:
    root: Path  # read-only by convention: tests take copies
    first: subprocess.CompletedProcess  # the first `dvc repro`, from scratch


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory: pytest.TempPathFactory, project_sample: RawData) -> Reproduced:
    """The shrunk example project after `dvc add data/raw` and a first `dvc repro`, made once
    for this module's tests (a whole repro of the example is their longest step)."""
    root = copy_project(tmp_path_factory.mktemp("reproduced") / "project", project_sample)
    update_params(root, **SMALL)
    with pytest.MonkeyPatch.context() as monkeypatch:
        work_in(root, monkeypatch)
        dvc(root, "add", "-q", "data/raw")
        return Reproduced(root, dvc(root, "repro"))


def copy_of(reproduced: Reproduced, dest: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the reproduced project (its git history, DVC cache and job folders too), the cwd."""
    shutil.copytree(reproduced.root, dest, symlinks=True)
    work_in(dest, monkeypatch)
    return dest


def test_walkthrough(reproduced: Reproduced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    # from scratch: all three stages run, each as one job
    project = copy_of(reproduced, tmp_path / "project", monkeypatch)
    first = reproduced.first
    assert ran(first.stdout) == set(STAGES)
    assert job_count(project) == 3
    assert "test accuracy:" in first.stdout + first.stderr
    shown = metrics(project)
    accuracy = shown["metrics/evaluate.json"]["data"]["test_accuracy"]
    assert 0.0 <= accuracy <= 1.0
    assert set(shown["metrics/evaluate.json"]["data"]["per_class_accuracy"]) >= {"cat", "truck"}
    commit_all(project, "baseline")
    git(project, "tag", "baseline")
    baseline_model = (project / "models" / "model.pt").read_bytes()
    baseline_metrics = (project / "metrics" / "evaluate.json").read_text()

    # nothing changed: nothing runs, no job is submitted
    again = dvc(project, "repro")
    assert ran(again.stdout) == set()
    assert job_count(project) == 3

    # a train param: train and evaluate rerun, prepare does not
    update_params(project, train={"lr": 0.01})
    changed = dvc(project, "repro")
    assert ran(changed.stdout) == {"train", "evaluate"}
    assert "Stage 'prepare' didn't change" in changed.stdout
    params_diff = dvc(project, "params", "diff", "baseline").stdout
    assert "train.lr" in params_diff
    metrics_diff = json.loads(dvc(project, "metrics", "diff", "baseline", "--json").stdout)
    assert "metrics/train.json" in metrics_diff
    commit_all(project, "lower lr")

    # a prepare param: everything reruns
    update_params(project, prepare={"train_size": 200})
    assert ran(dvc(project, "repro").stdout) == set(STAGES)
    commit_all(project, "fewer images")
    assert (project / "models" / "model.pt").read_bytes() != baseline_model

    # back to the baseline: git checkout + dvc checkout restore model and metrics
    git(project, "checkout", "-q", "baseline")
    dvc(project, "checkout")
    assert (project / "models" / "model.pt").read_bytes() == baseline_model
    assert (project / "metrics" / "evaluate.json").read_text() == baseline_metrics
    assert "Data and pipelines are up to date" in dvc(project, "status").stdout

    # a local remote: push, fresh clone, pull, clean status
    git(project, "checkout", "-q", "main")
    dvc(project, "checkout")
    remote = tmp_path / "remote"
    dvc(project, "remote", "add", "-d", "storage", str(remote))
    commit_all(project, "remote")
    dvc(project, "push")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(project), str(clone))
    dvc(clone, "pull")
    status = dvc(clone, "status")
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    assert (clone / "models" / "model.pt").read_bytes() == (project / "models" / "model.pt").read_bytes()


def test_plots_render_the_curves_and_the_confusion_matrix(
    reproduced: Reproduced, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    project = copy_of(reproduced, tmp_path / "project", monkeypatch)
    dvc(project, "plots", "show", "-o", "plots-html")
    html = (project / "plots-html" / "index.html").read_text()
    assert "training curves" in html and "confusion matrix" in html
    history = (project / "metrics" / "train_history.csv").read_text().splitlines()
    assert history[0].split(",")[:3] == ["epoch", "loss", "accuracy"]
