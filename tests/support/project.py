"""The example project for tests: a throwaway copy, shrunk to run in seconds.

`project` copies what DVC and the launcher need (dvc.yaml, params.yaml, configs/,
src/ for the stages' code deps, .dvc/config) into a temp dir, `git init`s it, puts
the images of `project_sample` in data/raw with the matching data/raw.dvc, and sets
params (`SMALL`) that make a whole repro take seconds on a CPU: the 400 images
prepare keeps (300 train, 100 test), 1 epoch. The raw folder holds exactly those,
so no `dvc add`, fingerprint or prepare hashes or decodes images nobody uses.
tests/conftest.py makes the fixtures here available to every test. ``make_project``,
the plain function under them, is how the benchmarks (sweep.py, fingerprint.py) build
the same project.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import REPO, sample
from tests.support.commands import GIT_IDENTITY, git

# data/raw.dvc is not copied: each copy gets the one of the raw folder it really has
PROJECT_FILES = ("dvc.yaml", "params.yaml", "configs", "src", ".dvc/config", ".gitignore", ".dvcignore")


def update_params(root: Path, **sections: dict) -> None:
    """Set keys in root/params.yaml, e.g. update_params(root, train={"lr": 0.1})."""
    path = root / "params.yaml"
    params = yaml.safe_load(path.read_text())
    for section, values in sections.items():
        params.setdefault(section, {}).update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def write_params(folder: Path, **changes: dict | None) -> Path:
    """The repository's params.yaml with ``changes`` (section -> keys to set, or None to drop
    the section), written to ``folder``/params.yaml; returns its path."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in changes.items():
        if values is None:
            params.pop(section)
        else:
            params[section].update(values)
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


SMALL = {
    "prepare": {"train_size": 300, "test_size": 100},
    "train": {"epochs": 1, "batch_size": 32},
}
CLASSES = 10
# what prepare keeps under SMALL, and no more: 30 train and 10 test images per class
PER_CLASS = {split: SMALL["prepare"][f"{split}_size"] // CLASSES for split in ("train", "test")}


@dataclass(frozen=True)
class RawData:
    folder: Path  # train/<class>/*.jpg, test/<class>/*.jpg
    dvc_file: str  # the data/raw.dvc that `dvc add` writes for it


@pytest.fixture(scope="session")
def committed_sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All 12,000 images of the committed CIFAR-10 sample, unpacked once per session
    (read-only by convention). Only for tests about the sample itself: the rest take
    ``project_sample``."""
    return sample.extract(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="session")
def project_sample(tmp_path_factory: pytest.TempPathFactory) -> RawData:
    """The 400 real CIFAR-10 images the shrunk example project uses (``PER_CLASS``), and
    their data/raw.dvc, made once per session (read-only by convention)."""
    folder = sample.extract(tmp_path_factory.mktemp("project-sample"), PER_CLASS)
    return RawData(folder, sample.dvc_file(folder, tmp_path_factory.mktemp("raw-dvc")))


def make_project(
    root: Path,
    raw: Path,
    *,
    raw_dvc: str | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = SMALL,
    files: Iterable[str] = PROJECT_FILES,
) -> Path:
    """The example project in ``root``: ``files`` copied from this checkout, the images of
    ``raw`` (train/, test/) as data/raw, ``params`` set in params.yaml, under git; not committed.

    A plain function, so the fixtures below and the benchmarks build the same project.
    ``raw_dvc``: the data/raw.dvc ``dvc add`` writes for ``raw`` (see ``sample.dvc_file``);
    None leaves the ``dvc add`` to the caller (a benchmark times DVC's hashing, or runs it
    against a state cache of its own). ``params=None`` keeps params.yaml byte for byte.
    ``files=()`` when the caller put the files there itself (a ``git archive`` of the repo)."""
    for name in files:
        src = REPO / name
        dst = root / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(src, dst)
    # hard links: nothing in the pipeline writes to raw data
    shutil.copytree(raw, root / "data" / "raw", copy_function=os.link)
    if raw_dvc is not None:
        (root / "data" / "raw.dvc").write_text(raw_dvc)
    if params:
        update_params(root, **params)
    git(root, "init", "-q", "-b", "main")  # DVC (so the launcher) opens a project only inside git
    return root


def copy_project(root: Path, raw: RawData) -> Path:
    """The example project's files in ``root``, with ``raw`` as its data/raw, under git; the
    repository's params (``make_project`` with ``params=None``)."""
    return make_project(root, raw.folder, raw_dvc=raw.dvc_file, params=None)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, project_sample: RawData) -> Path:
    root = make_project(tmp_path / "project", project_sample.folder, raw_dvc=project_sample.dvc_file)
    work_in(root, monkeypatch)
    return root


def work_in(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``root`` the cwd, as its user's shell on a laptop: the local executor, no Slurm
    job around, a git identity for commits."""
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HPCPIPE_CLUSTER", "local")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.chdir(root)


@pytest.fixture
def fake_stage_project(project: Path) -> Path:
    """The project plus tests/support/fake_stages.py, importable by the job process."""
    shutil.copy2(REPO / "tests" / "support" / "fake_stages.py", project / "fake_stages.py")
    (project / "source.txt").write_text("hello from the source\n")
    return project
