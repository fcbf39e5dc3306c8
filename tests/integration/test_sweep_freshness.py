"""The sweep's memo of DVC's "reused stages are up to date" (hpcpipe.sweep.freshness).

A tiny real DVC project (git + ``dvc init`` + one stage reproduced by the dvc CLI).
``CountingProject`` wraps the real ``DvcProject`` only to count how often DVC itself
was asked; its answers are DVC's own.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from hpcpipe.sweep import freshness
from hpcpipe.sweep.pipeline import DvcProject
from tests.support.commands import git

DVC_YAML = """\
stages:
  copy:
    cmd: mkdir -p out && cp raw/* out/
    deps: [raw]
    params: [prep.size]
    outs: [out]
  use:
    cmd: cat out/* > result.txt
    deps: [out]
    params: [train.lr]
    outs: [result.txt]
"""


class CountingProject(DvcProject):
    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.asked = 0

    def changed(self, stages: Sequence[str]) -> bool:
        self.asked += 1
        return super().changed(stages)


@pytest.fixture
def tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "tiny"
    (root / "raw").mkdir(parents=True)
    for i in range(3):
        (root / "raw" / f"{i}.txt").write_text(f"image {i}\n")
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "params.yaml").write_text("prep:\n  size: 1\ntrain:\n  lr: 0.1\n")
    git(root.parent, "init", "-q", "-b", "main", str(root))
    subprocess.run(["dvc", "init", "-q"], cwd=root, check=True)
    subprocess.run(["dvc", "repro", "-q"], cwd=root, check=True, capture_output=True)
    monkeypatch.chdir(root)  # hpcpipe sweep runs in the project root, and DVC resolves stage names there
    return root


def ask(root: Path) -> tuple[bool, int]:
    """(stale, how many times DVC was asked) for the reused stage ``copy``."""
    with CountingProject(root) as project:
        answer = freshness.stale(project, project.nodes(), ["copy"])
        return answer, project.asked


def touch_later(path: Path) -> None:
    later = time.time_ns() + 5_000_000_000
    os.utime(path, ns=(later, later))


def test_an_up_to_date_answer_is_remembered_for_the_same_files(tiny: Path):
    assert ask(tiny) == (False, 1)  # DVC checked, and said up to date
    assert ask(tiny) == (False, 0)  # same files: DVC not asked again
    assert (tiny / freshness.MEMO).is_file()


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda root: (root / "raw" / "1.txt").write_text("another image\n"), id="edited input"),
        pytest.param(lambda root: (root / "raw" / "9.txt").write_text("new\n"), id="new input"),
        pytest.param(lambda root: (root / "raw" / "0.txt").unlink(), id="removed input"),
        pytest.param(
            lambda root: (root / "params.yaml").write_text("prep:\n  size: 2\ntrain:\n  lr: 0.1\n"),
            id="its param",
        ),
        pytest.param(lambda root: (root / "out" / "0.txt").unlink(), id="removed output"),
    ],
)
def test_any_change_to_what_the_stage_reads_or_writes_asks_dvc_again(tiny: Path, change):
    assert ask(tiny) == (False, 1)
    change(tiny)
    assert ask(tiny) == (True, 1)  # DVC was asked, and says the stage must rerun
    assert ask(tiny) == (True, 1)  # "stale" is never remembered


def test_same_content_with_a_new_mtime_asks_dvc_and_is_remembered_again(tiny: Path):
    """A touched file is what DVC's own state treats as "look again": so does the memo."""
    assert ask(tiny) == (False, 1)
    touch_later(tiny / "raw" / "2.txt")
    assert ask(tiny) == (False, 1)
    assert ask(tiny) == (False, 0)


def test_a_downstream_param_does_not_invalidate_the_reused_stage(tiny: Path):
    assert ask(tiny) == (False, 1)
    (tiny / "params.yaml").write_text("prep:\n  size: 1\ntrain:\n  lr: 0.5\n")
    # params.yaml's bytes changed, so DVC is asked once; it says `copy` is still up to date
    assert ask(tiny) == (False, 1)
    assert ask(tiny) == (False, 0)
