"""Job side: outputs are written to staging paths and published only on success."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from hpcpipe.config import TrainParams
from hpcpipe.launch.distributed import Placement
from hpcpipe.launch.job import _run_follower, run_stage, staging_path
from hpcpipe.launch.ranks import RankBoard
from tests.support import REPO
from tests.support.launch_project import FAKE_PATHS as PATHS
from tests.support.launch_project import fake_params
from tests.support.launch_project import fake_spec as spec


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "source.txt").write_text("abc")
    return tmp_path


@pytest.fixture
def params():
    """What the launcher hands a fake stage: params.yaml's train section, checked."""
    return fake_params(REPO / "params.yaml")


def test_success_publishes_every_output_and_leaves_no_staging(workdir, params, monkeypatch):
    monkeypatch.chdir(REPO)  # so `tests.support` imports; run_stage chdirs to workdir itself
    assert isinstance(params.train, TrainParams)  # a section with a schema arrives as its dataclass
    metrics = run_stage(spec("write_outputs"), params, PATHS, str(workdir))
    assert metrics == {"chars": 3}
    assert (workdir / "out" / "result.txt").read_text() == "ABC"
    summary = json.loads((workdir / "out" / "report" / "summary.json").read_text())
    assert summary == {"chars": 3, "lr": params.train.lr}
    assert sorted(p.name for p in (workdir / "out").iterdir()) == ["report", "result.txt"]


@pytest.mark.parametrize(
    ("stage", "error", "match"),
    [
        ("fail_halfway", RuntimeError, "on purpose"),  # raised after writing part of its outputs
        # wrote one of its two outputs: neither replaces the previous one (each was renamed on
        # its own before, so the written one overwrote an earlier good output)
        ("forget_output", FileNotFoundError, "did not write its output out/report"),
    ],
)
def test_a_failed_stage_leaves_the_previous_outputs_whole(stage, error, match, workdir, params, monkeypatch):
    monkeypatch.chdir(REPO)
    out = workdir / "out"
    (out / "report").mkdir(parents=True)
    (out / "result.txt").write_text("previous result")
    (out / "report" / "summary.json").write_text("previous report")
    with pytest.raises(error, match=match):
        run_stage(spec(stage), params, PATHS, str(workdir))
    assert (out / "result.txt").read_text() == "previous result"
    assert (out / "report" / "summary.json").read_text() == "previous report"
    assert sorted(p.name for p in out.iterdir()) == ["report", "result.txt"]


def test_directory_output_is_replaced_whole(workdir, params, monkeypatch):
    monkeypatch.chdir(REPO)
    old_report = workdir / "out" / "report"
    old_report.mkdir(parents=True)
    (old_report / "stale.txt").write_text("from an older run")
    run_stage(spec("write_outputs"), params, PATHS, str(workdir))
    assert sorted(p.name for p in old_report.iterdir()) == ["summary.json"]


def test_a_missing_output_fails_and_publishes_nothing(workdir, params, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(FileNotFoundError, match="did not write its output out/report"):
        run_stage(spec("forget_output"), params, PATHS, str(workdir))
    assert not (workdir / "out" / "report").exists()
    assert not (workdir / "out" / "result.txt").exists()  # the output it did write: not published


def test_leftovers_of_a_killed_run_are_removed(workdir, params, monkeypatch):
    monkeypatch.chdir(REPO)
    (workdir / "out").mkdir()
    leftover = staging_path(workdir / "out" / "result.txt", "999-1")
    leftover.write_text("half written by a killed job")
    run_stage(spec("write_outputs"), params, PATHS, str(workdir))
    assert not leftover.exists()


def test_log_follower_keeps_lines_and_characters_whole_across_reads(tmp_path):
    import io

    from hpcpipe.launch.launcher import LogFollower

    log = tmp_path / "job.out"
    out = io.StringIO()
    follower = LogFollower(log, out)
    follower.pump()  # no file yet: nothing, no error
    encoded = "epoch 1 ✓\nepo".encode()
    log.write_bytes(encoded[:9])  # ends inside the three bytes of ✓
    follower.pump()
    assert out.getvalue() == ""
    log.write_bytes(encoded)
    follower.pump()
    assert out.getvalue() == "epoch 1 ✓\n"
    log.write_bytes(encoded + b"ch 2")
    follower.pump(final=True)
    assert out.getvalue() == "epoch 1 ✓\nepoch 2\n"


@pytest.mark.parametrize(
    ("stage", "warned", "why"),
    [
        ("stop_at_warning", True, "ended at the warning (raised RuntimeError: stopped at the warning"),
        ("fail_halfway", False, "raised RuntimeError: the stage broke on purpose"),
    ],
)
def test_a_rank_that_stops_at_the_warning_is_not_a_failed_rank(
    stage, warned, why, workdir, params, monkeypatch, tmp_path
):
    """Rank 1 of 2 stops at Slurm's warning as the training loop does (raising), and its end
    is recorded as at the warning, not as a failure that rank 0 would report; an error
    without the warning still is one. The handler before (submitit's, which on a rank
    other than 0 only logs) is a no-op here and must still be called."""
    monkeypatch.chdir(REPO)
    heard: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: heard.append(signum))
    try:
        board = RankBoard(tmp_path / "ranks", Placement(1, 2, 1, 2, "localhost", 15000, node="n1"))
        assert _run_follower(spec(stage), params, PATHS, str(workdir), None, board) == {}
    finally:
        signal.signal(signal.SIGUSR2, previous)
    end = board.ends()[1]
    assert (end.warned, end.failed) == (warned, not warned)
    assert end.why.startswith(why)
    assert heard == ([signal.SIGUSR2] if warned else [])
    assert not (workdir / "out").exists()  # a follower publishes nothing
