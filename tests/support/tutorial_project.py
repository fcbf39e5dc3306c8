"""A second example: a plain DVC project in the shape of iterative/example-get-started.

tests/support/tutorial/ is the project a user brings to hpcpipe: a dvc.yaml with
plain `python src/STAGE.py ...` commands (no hpcpipe in it), params.yaml and a
second params file (features.yaml), one numpy script per stage. Its data is made
from a seed by the first stage, so nothing is downloaded or committed, and a whole
`dvc repro` takes seconds:

    generate -> split -> featurize -> train -> evaluate@train, evaluate@test  (a foreach)

`make_tutorial_project(dest)` copies it into dest as a fresh git + DVC repository
with one commit. The session's `tutorial_template` is one such repository, made once:
`copy_tutorial_project(template, dest)` copies it whole (.git and .dvc included), which
is the same repository without paying `git init`, `dvc init` and a commit (seconds of
DVC's start-up) again. The `tutorial_project` fixture is such a copy in a temp dir, the
cwd, with the local executor as the cluster profile. `plain_results` is what a plain
`dvc repro` of it writes, the reference a run through hpcpipe must match byte for byte.
`hpcpipe_init` runs `hpcpipe init` in a copy and checks what it did; `stages_run` and
`jobs` read what `dvc repro` and the launcher printed; `RESULTS` are the files a whole
repro writes.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from tests.support.commands import GIT_IDENTITY, dvc, run_cli

TUTORIAL = Path(__file__).resolve().parent / "tutorial"
# dvc repro's names for the stages, in the order it runs them (a foreach gives NAME@ITEM)
STAGES = ("generate", "split", "featurize", "train", "evaluate@train", "evaluate@test")
RUNNING = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)
RESULTS = (
    "models/model.json",
    "eval/train/metrics.json",
    "eval/test/metrics.json",
    "eval/train/roc.csv",
    "eval/test/roc.csv",
)
JOB_LINE = re.compile(r"^hpcpipe: ([^:\s]+): job (\S+) (submitted|COMPLETED)", re.MULTILINE)
WRAPPER = re.compile(r"hpcpipe run \S+ -- ")


def make_tutorial_project(dest: Path) -> Path:
    """Copy the tutorial project into dest, `git init` + `dvc init` it, commit; returns dest."""
    shutil.copytree(TUTORIAL, dest, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
    env = {**os.environ, **GIT_IDENTITY, "DVC_NO_ANALYTICS": "1"}
    for command in (
        ["git", "init", "-q", "-b", "main"],
        ["dvc", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "commit", "-qm", "tutorial project"],
    ):
        subprocess.run(command, cwd=dest, env=env, check=True, capture_output=True, text=True)
    return dest


def copy_tutorial_project(template: Path, dest: Path) -> Path:
    """A copy of ``template`` (a ``make_tutorial_project`` repository) at dest; returns dest."""
    shutil.copytree(template, dest, symlinks=True)
    return dest


@pytest.fixture(scope="session")
def tutorial_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tutorial project as ``make_tutorial_project`` makes it, once per session (read-only
    by convention: tests take copies)."""
    return make_tutorial_project(tmp_path_factory.mktemp("tutorial-template") / "tutorial")


@pytest.fixture(scope="session")
def plain_results(tmp_path_factory: pytest.TempPathFactory, tutorial_template: Path) -> dict[str, bytes]:
    """What a plain `dvc repro` of a fresh copy writes (``RESULTS``): the reference, byte for byte."""
    root = copy_tutorial_project(tutorial_template, tmp_path_factory.mktemp("plain") / "tutorial")
    dvc(root, "repro")
    return {name: (root / name).read_bytes() for name in RESULTS}


def set_param(root: Path, key: str, value: object, file: str = "params.yaml") -> None:
    """Set one dotted key in one of the project's params files, e.g. ("train.lr", 0.1)."""
    path = root / file
    params = yaml.safe_load(path.read_text())
    *sections, name = key.split(".")
    table = params
    for section in sections:
        table = table[section]
    table[name] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def base(stage: str) -> str:
    """A foreach stage's group name (evaluate@test -> evaluate): what `hpcpipe run` is given."""
    return stage.split("@")[0]


def groups(stages: Iterable[str]) -> Counter:
    return Counter(base(stage) for stage in stages)


def jobs(stderr: str, event: str) -> Counter:
    """How many jobs per stage group have an `hpcpipe: NAME: job ID <event>` line.

    Distinct ids: on Slurm a job's state change to COMPLETED has a line of its own
    before the launcher's final `COMPLETED in ...`.
    """
    seen = {(name, job_id) for name, job_id, what in JOB_LINE.findall(stderr) if what == event}
    return Counter(base(name) for name, _ in seen)


def cmds(dvc_yaml: Path) -> dict[str, str]:
    """Each stage's (or foreach group's) cmd, uninterpolated, by name."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    return {name: stage["do"]["cmd"] if "do" in stage else stage["cmd"] for name, stage in stages.items()}


def hpcpipe_init(root: Path) -> None:
    """`hpcpipe init`, and what it must have done: each cmd wrapped, nothing else touched."""
    before = (root / "dvc.yaml").read_text()
    init = run_cli("init", cwd=root, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    after = (root / "dvc.yaml").read_text()
    plain = cmds(TUTORIAL / "dvc.yaml")
    assert cmds(root / "dvc.yaml") == {name: f"hpcpipe run {name} -- {cmd}" for name, cmd in plain.items()}
    assert WRAPPER.sub("", after) == before


def stages_run(output: str) -> list[str]:
    """The stages dvc repro says it ran ("Running stage 'NAME':"), in order."""
    return RUNNING.findall(output)


@pytest.fixture
def tutorial_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tutorial_template: Path) -> Path:
    """A fresh copy of the tutorial project, the cwd, with HPCPIPE_CLUSTER=local."""
    root = copy_tutorial_project(tutorial_template, tmp_path / "tutorial")
    work_in(root, monkeypatch)
    return root


def work_in(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``root`` the cwd, as its user's shell on a laptop: the local executor, no
    Slurm job or hpcpipe stage around, a git identity for commits."""
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("HPCPIPE_CLUSTER", "local")
    for key in ("SLURM_JOB_ID", "HPCPIPE_STAGE", "HPCPIPE_CHECKPOINT_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(root)
