"""A second example: a plain DVC project in the shape of iterative/example-get-started.

tests/support/tutorial/ is the project a user brings to hpcpipe: a dvc.yaml with
plain `python src/STAGE.py ...` commands (no hpcpipe in it), params.yaml and a
second params file (features.yaml), one numpy script per stage. Its data is made
from a seed by the first stage, so nothing is downloaded or committed, and a whole
`dvc repro` takes seconds:

    generate -> split -> featurize -> train -> evaluate@train, evaluate@test  (a foreach)

`make_tutorial_project(dest)` copies it into dest as a fresh git + DVC repository
with one commit; the `tutorial_project` fixture does that in a temp dir and chdirs
there, with the local executor as the cluster profile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

TUTORIAL = Path(__file__).resolve().parent / "tutorial"
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@e",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@e",
}
# dvc repro's names for the stages, in the order it runs them (a foreach gives NAME@ITEM)
STAGES = ("generate", "split", "featurize", "train", "evaluate@train", "evaluate@test")
RUNNING = re.compile(r"^Running stage '([^']+)'", re.MULTILINE)


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


def stages_run(output: str) -> list[str]:
    """The stages dvc repro says it ran ("Running stage 'NAME':"), in order."""
    return RUNNING.findall(output)


@pytest.fixture
def tutorial_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh copy of the tutorial project, the cwd, with HPCPIPE_CLUSTER=local."""
    root = make_tutorial_project(tmp_path / "tutorial")
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    monkeypatch.setenv("HPCPIPE_CLUSTER", "local")
    for key in ("SLURM_JOB_ID", "HPCPIPE_STAGE", "HPCPIPE_CHECKPOINT_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(root)
    return root
