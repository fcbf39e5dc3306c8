"""All outputs or none (issue 13, point 5): a stage of two outputs that fails, is told to
stop, or is killed between publishing them leaves the previous set whole.

The failures are injected at ``publish._move``, the one rename the publication does:
an error raised there, or a real SIGKILL of a real job process (a subprocess running
``job.run_stage``) sent from there, lands exactly between two renames, which no real
fault can be timed to do. Everything else is real: the files, the journal, the rollback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpipe.launch import publish
from hpcpipe.launch.job import run_stage
from hpcpipe.launch.publish import Publisher
from hpcpipe.launch.termination import Terminated
from tests.support import REPO
from tests.support.launch_project import FAKE_PATHS as PATHS
from tests.support.launch_project import MOVES, fake_params, is_move
from tests.support.launch_project import fake_spec as spec


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(REPO)  # so `tests.support` imports; run_stage chdirs to the workdir itself
    (tmp_path / "source.txt").write_text("abc")
    return tmp_path


@pytest.fixture
def params():
    return fake_params(REPO / "params.yaml")


def previous_set(workdir: Path, with_report: bool = True) -> dict[str, str]:
    """Outputs of an earlier run; returns what ``snapshot`` gives for them."""
    out = workdir / "out"
    out.mkdir(parents=True)
    (out / "result.txt").write_text("previous result")
    if with_report:
        (out / "report").mkdir()
        (out / "report" / "summary.json").write_text("previous report")
    return snapshot(workdir)


def snapshot(workdir: Path) -> dict[str, str]:
    """Every file under out/ (hidden leftovers too) and its text."""
    out = workdir / "out"
    return {str(p.relative_to(out)): p.read_text() for p in sorted(out.rglob("*")) if p.is_file()}


def new_set(params) -> dict[str, str]:
    """What ``write_outputs`` publishes for source ``abc``."""
    return {"result.txt": "ABC", "report/summary.json": json.dumps({"chars": 3, "lr": params.train.lr})}


def visible(workdir: Path) -> dict[str, str]:
    return {k: v for k, v in snapshot(workdir).items() if not k.startswith(".")}


def journal(workdir: Path) -> Path:
    return Publisher(workdir, "fake").journal


def fail_at(monkeypatch, which: str, fault) -> None:
    """Make the rename ``which`` (see MOVES) of the publication call ``fault`` first, once
    (the rollback renames to the same paths)."""
    real = publish._move
    done: list[Path] = []

    def move(source: Path, target: Path) -> None:
        if not done and is_move(Path(target), which):
            done.append(target)
            fault()
        real(source, target)

    monkeypatch.setattr(publish, "_move", move)


@pytest.mark.parametrize(
    ("which", "with_report"),
    [(which, True) for which in MOVES[1:]] + [("result in", False), ("report in", False)],
    ids=lambda v: v if isinstance(v, str) else ("" if v else "no-previous-report"),
)
def test_a_failure_between_two_outputs_leaves_the_previous_set_whole(
    workdir, params, monkeypatch, which, with_report
):
    before = previous_set(workdir, with_report)

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    fail_at(monkeypatch, which, disk_full)
    with pytest.raises(OSError, match="No space left"):
        run_stage(spec("write_outputs"), params, PATHS, str(workdir))
    assert snapshot(workdir) == before  # rolled back, and no staged or aside copy left
    assert not journal(workdir).exists()

    monkeypatch.undo()
    monkeypatch.chdir(REPO)
    run_stage(spec("write_outputs"), params, PATHS, str(workdir))
    assert snapshot(workdir) == new_set(params)


KILLED_JOB = """
import os, signal, sys
from pathlib import Path
from hpcpipe.launch import job, publish
from tests.support import REPO
from tests.support.launch_project import FAKE_PATHS as PATHS, fake_params, fake_spec as spec, is_move

real = publish._move
def move(source, target):
    if is_move(Path(target), sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # what Slurm sends KillWait after SIGTERM
    real(source, target)
publish._move = move
job.run_stage(spec("write_outputs"), fake_params(REPO / "params.yaml"), PATHS, sys.argv[1])
"""


@pytest.mark.parametrize("which", MOVES[2:])
def test_a_job_killed_between_two_outputs_is_rolled_back_by_the_next_run(workdir, params, which):
    """A real job process is SIGKILLed between two renames: one output new, one old (or
    gone). The next run of the stage rolls the journal back before anything else."""
    before = previous_set(workdir)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    job = subprocess.run(
        [sys.executable, "-c", KILLED_JOB, str(workdir), which], cwd=REPO, env=env, timeout=120
    )
    assert job.returncode == -signal.SIGKILL
    assert journal(workdir).exists()
    assert visible(workdir)["result.txt"] == "ABC"  # half published: what the journal is for

    assert Publisher(workdir, "fake").recover()  # what the next run does first
    assert visible(workdir) == before
    assert not journal(workdir).exists()
    assert not Publisher(workdir, "fake").recover()  # once

    run_stage(spec("write_outputs"), params, PATHS, str(workdir))
    assert snapshot(workdir) == new_set(params)


def test_the_next_run_rolls_back_a_killed_publication_before_it_cleans_up(workdir, params, monkeypatch):
    """The asides of a killed publication are the previous outputs: the next run restores
    them (not removes them as leftovers), even if its own stage then fails."""
    before = previous_set(workdir)

    def killed() -> None:
        raise SystemExit("killed")  # stands in for the kill; the journal stays as a kill leaves it

    monkeypatch.setattr(Publisher, "_roll_back", lambda self, moves: None)  # a kill rolls nothing back
    fail_at(monkeypatch, "report in", killed)
    with pytest.raises(SystemExit):
        run_stage(spec("write_outputs"), params, PATHS, str(workdir))
    assert journal(workdir).exists() and "report/summary.json" not in visible(workdir)

    monkeypatch.undo()
    monkeypatch.chdir(REPO)
    with pytest.raises(RuntimeError, match="on purpose"):
        run_stage(spec("fail_halfway"), params, PATHS, str(workdir))
    assert snapshot(workdir) == before
    assert not journal(workdir).exists()


def test_an_unreadable_journal_is_set_aside_in_one_line(workdir, capsys):
    path = journal(workdir)
    path.parent.mkdir(parents=True)
    path.write_text('{"moves": [')
    assert not Publisher(workdir, "fake").recover()
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is unreadable" in err and "fake.json.unreadable" in err
    assert not path.exists() and path.with_name("fake.json.unreadable").exists()


# --------------------------------------------------------------------------- SIGTERM: never publish
@pytest.fixture
def sigterm_recorded():
    """SIGTERM handled as submitit's job process handles it: logged, nothing more (here:
    recorded). Without a handler SIGTERM would end the test run."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    yield seen
    signal.signal(signal.SIGTERM, previous)


def test_a_stage_told_to_stop_does_not_publish(workdir, params, sigterm_recorded, capfd):
    before = previous_set(workdir)
    with pytest.raises(Terminated, match="stage fake got SIGTERM"):
        run_stage(spec("told_to_stop"), params, PATHS, str(workdir))
    assert snapshot(workdir) == before
    assert sigterm_recorded == [signal.SIGTERM]  # the handler before ours still ran
    assert "outputs will not be published" in capfd.readouterr().err


def test_sigterm_during_the_publication_rolls_it_back(workdir, params, sigterm_recorded, monkeypatch):
    before = previous_set(workdir)
    fail_at(monkeypatch, "report aside", lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(Terminated):
        run_stage(spec("write_outputs"), params, PATHS, str(workdir))
    assert snapshot(workdir) == before
    assert not journal(workdir).exists()
