"""Cancelling a sweep's points when Slurm refuses: nothing is marked CANCELLED that was not.

`scancel` is a PATH shim that exits 1 with Slurm's own message (a refusal cannot be
had from the shared test cluster without taking a job away from its owner); the rest
is the real code path: the Slurm backend's cancel, the sweep's cancel and its message.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcpipe.sweep import drive
from hpcpipe.sweep.cancel import cancel
from hpcpipe.sweep.record import Attempt, Point, Sweep

REFUSAL = "scancel: error: Kill job error on job id 4242_0: Access/permission denied"


@pytest.fixture
def refusing_scancel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scancel = bin_dir / "scancel"
    scancel.write_text(f'#!/bin/bash\necho "{REFUSAL}" >&2\nexit 1\n')
    scancel.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")


def points(tmp_path: Path, states: list[str]) -> list[Point]:
    return [
        Point(number=i + 1, name=f"p{i}", overrides={}, workspace=f"w{i}", state=state,
              attempts=[Attempt(f"4242_{i}", "slurm", str(tmp_path), 0.0)])
        for i, state in enumerate(states)
    ]  # fmt: skip


def test_a_refused_scancel_leaves_the_points_as_last_seen(tmp_path: Path, refusing_scancel, capsys):
    live = points(tmp_path, ["RUNNING", "PENDING", "COMPLETED"])
    failures = cancel(live, None)
    assert failures == [f"slurm jobs 4242_0 4242_1: {REFUSAL}"]
    assert [p.state for p in live] == ["RUNNING", "PENDING", "COMPLETED"]  # resume leaves them be

    sweep = Sweep("s", "testcluster", "abc", [], ["train"], [], [], 2, points=live)
    drive._say_stopped(sweep, "SIGINT", failures)
    said = capsys.readouterr().err
    assert f"cancelling failed: slurm jobs 4242_0 4242_1: {REFUSAL}" in said
    assert "not marked cancelled" in said and "cancelled its queued" not in said


def test_a_cancel_that_works_marks_only_the_live_points(tmp_path: Path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scancel").write_text(f'#!/bin/bash\necho "$@" > {tmp_path}/asked\n')
    (bin_dir / "scancel").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    some = points(tmp_path, ["RUNNING", "NEW", "FAILED"])
    assert cancel(some, None) == []
    assert [p.state for p in some] == ["CANCELLED", "NEW", "FAILED"]
    assert (tmp_path / "asked").read_text().split() == ["4242_0"]
