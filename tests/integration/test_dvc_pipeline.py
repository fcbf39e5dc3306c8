"""The README's walk-through with the real `dvc` CLI on a temp git copy of the project.

Every stage runs through `hpcpipe run` on submitit's local executor (a real
subprocess per stage) on real CIFAR-10 images from tests/data, shrunk by the
`project` fixture to a few hundred images and one epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.commands import commit_all, dvc, git
from tests.support.project import update_params

pytestmark = pytest.mark.slow

STAGES = ("prepare", "train", "evaluate")


def ran(output: str) -> set[str]:
    return {stage for stage in STAGES if f"Running stage '{stage}'" in output}


def job_count(root: Path) -> int:
    jobs = root / ".hpcpipe" / "jobs"
    return len(list(jobs.glob("*/*_submitted.pkl"))) if jobs.exists() else 0


def metrics(root: Path) -> dict:
    return json.loads(dvc(root, "metrics", "show", "--json").stdout)[""]["data"]


def test_walkthrough(project: Path, tmp_path: Path):
    # from scratch: all three stages run, each as one job
    dvc(project, "add", "-q", "data/raw")
    first = dvc(project, "repro")
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


def test_plots_render_the_curves_and_the_confusion_matrix(project: Path):
    dvc(project, "add", "-q", "data/raw")
    dvc(project, "repro")
    dvc(project, "plots", "show", "-o", "plots-html")
    html = (project / "plots-html" / "index.html").read_text()
    assert "training curves" in html and "confusion matrix" in html
    history = (project / "metrics" / "train_history.csv").read_text().splitlines()
    assert history[0].split(",")[:3] == ["epoch", "loss", "accuracy"]
