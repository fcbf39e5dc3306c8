"""Shared fixtures: a throwaway copy of the example project, shrunk to run in seconds.

`project` copies what DVC and the launcher need (dvc.yaml, params.yaml, configs/,
src/ for the stages' code deps, .dvc/config) into a temp dir, `git init`s it and
unpacks the committed CIFAR-10 sample into data/raw. `shrink` then sets params
that make a whole repro take seconds on a CPU (few images, 1 epoch).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml

from tests.support.slurm import slurm_cluster  # noqa: F401  (a fixture, shared by the Slurm tests)
from tests.support.tutorial_project import tutorial_project  # noqa: F401  (the second example)

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "cifar10-sample.tar.xz"
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    "configs",
    "src",
    ".dvc/config",
    ".gitignore",
    ".dvcignore",
    "data/raw.dvc",
)


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout


def unpack_sample(dest: Path) -> Path:
    """Unpack tests/data's CIFAR-10 sample; returns the raw/ folder (train/, test/)."""
    with tarfile.open(SAMPLE) as archive:
        archive.extractall(dest, filter="data")
    return dest / "raw"


def update_params(root: Path, **sections: dict) -> None:
    """Set keys in root/params.yaml, e.g. update_params(root, train={"lr": 0.1})."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


SMALL = {
    "prepare": {"train_size": 300, "test_size": 100},
    "train": {"epochs": 1, "batch_size": 32},
}


@pytest.fixture(scope="session")
def committed_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CIFAR-10 sample, unpacked once per test session (read-only by convention)."""
    return unpack_sample(tmp_path_factory.mktemp("sample"))


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed_sample: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    for name in PROJECT_FILES:
        src = REPO / name
        dst = root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    # hard links: 12,000 files in a blink; nothing in the pipeline writes to raw data
    shutil.copytree(committed_sample, root / "data" / "raw", copy_function=os.link)
    update_params(root, **SMALL)
    env = {
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@e",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@e",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HPCPIPE_CLUSTER", "local")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    git(root, "init", "-q", "-b", "main")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def fake_stage_project(project: Path) -> Path:
    """The project plus tests/support/fake_stages.py, importable by the job process."""
    shutil.copy2(REPO / "tests" / "support" / "fake_stages.py", project / "fake_stages.py")
    (project / "source.txt").write_text("hello from the source\n")
    return project


def run_cli(
    *args: str, cwd: Path, timeout: float = 600, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run the installed `hpcpipe` console script as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        ["hpcpipe", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env
    )
