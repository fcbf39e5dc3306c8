"""Checkpoint and resume: the training loop bitwise, and the job side's checkpoint file.

A resumed CPU run must end with exactly the weights and metrics of an uninterrupted
run with the same seed (acceptance 3 of issue 6); the Slurm tests
(tests/integration/test_slurm_resume.py) check the same through real requeues.
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import pytest
import torch

from hpcpipe.config import TrainParams
from hpcpipe.launch import job
from hpcpipe.launch.spec import StageSpec
from hpcpipe.ml.checkpoint import resume, save_checkpoint
from hpcpipe.ml.data import load_split, read_manifest
from hpcpipe.ml.recipe import Run, build
from hpcpipe.ml.training import fit
from tests.support import REPO
from tests.support.launch_project import FAKE_PATHS as PATHS
from tests.support.launch_project import example_stage_work, fake_params

CPU = torch.device("cpu")
EPOCHS = 3
# The ``fast`` recipe with every stateful technique on, shrunk: 600 images, width 1/4.
RECIPE = TrainParams(
    model="fast", width=0.25, epochs=EPOCHS, batch_size=100, lr=0.5, momentum=0.85, weight_decay=5e-4,
    schedule="triangle", bias_lr_scale=16, label_smoothing=0.2, lookahead=True, translate=2,
    alternating_flip=True, seed=0,
)  # fmt: skip


class Killed(Exception):
    """Stands in for the job being killed right after an epoch's checkpoint was written."""


def _setup(prepared: Path, perturb: int = 0) -> Run:
    """``RECIPE``'s run, as the train stage builds it; ``perturb``: a seed to scramble its
    initial weights and the global RNG with, as a new process with other state would have
    (another ``train.seed`` would also draw other batches: a run of other params)."""
    manifest = read_manifest(prepared)
    train = load_split(prepared, "train")
    run = build(RECIPE, train.images[:600], train.labels[:600], mean=manifest["mean"], std=manifest["std"])
    if perturb:
        torch.manual_seed(perturb)
        with torch.no_grad():
            for value in run.model.parameters():
                value.add_(torch.randn_like(value))
    return run


def _metrics(history: list) -> list[tuple[int, float, float, float]]:
    return [(s.epoch, s.loss, s.accuracy, s.lr) for s in history]  # not the timings


@pytest.mark.slow  # real training: tens of seconds on 2 cores
def test_a_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one(prepared_sample: Path, tmp_path: Path):
    model, loader, plan = _setup(prepared_sample)
    whole = fit(model, loader, plan, epochs=EPOCHS, device=CPU, checkpoint=tmp_path / "whole.pt")
    expected = model.state_dict()

    ckpt = tmp_path / "cut.pt"

    def kill_after_first(stats) -> None:
        if stats.epoch == 1:
            raise Killed

    first, loader1, plan1 = _setup(prepared_sample)
    with pytest.raises(Killed):
        fit(first, loader1, plan1, epochs=EPOCHS, device=CPU, on_epoch=kill_after_first, checkpoint=ckpt)
    # A new process: other initial weights and RNG state; everything must come from the file.
    second, loader2, plan2 = _setup(prepared_sample, perturb=99)
    seen = []
    resumed = fit(second, loader2, plan2, epochs=EPOCHS, device=CPU, on_epoch=seen.append, checkpoint=ckpt)

    assert [s.epoch for s in seen] == [2, 3]  # only the epochs left were run
    assert _metrics(resumed) == _metrics(whole)
    got = second.state_dict()
    assert got.keys() == expected.keys()
    unequal = [name for name, value in expected.items() if not torch.equal(value, got[name])]
    assert unequal == []
    assert whole[-1].loss < whole[0].loss  # it did train


def _saved(prepared_sample: Path, path: Path, epochs: int = 1) -> bytes:
    """A real checkpoint's bytes (of an untrained model: what is in it does not matter here)."""
    model, loader, plan = _setup(prepared_sample)
    save_checkpoint(path, model, plan, [], epochs=epochs, steps_per_epoch=len(loader))
    return path.read_bytes()


def test_a_truncated_checkpoint_is_set_aside_and_training_starts_over(
    prepared_sample: Path, tmp_path: Path, capsys
):
    """The node died while the checkpoint was written (a file system that tore it): the
    rerun says so in one line, keeps the bad file aside, and trains from scratch, to
    exactly the result of a run that never had a checkpoint."""
    model, loader, plan = _setup(prepared_sample)
    fit(model, loader, plan, epochs=1, device=CPU)
    expected = model.state_dict()

    ckpt = tmp_path / "c.pt"
    whole = _saved(prepared_sample, ckpt)
    ckpt.write_bytes(whole[: len(whole) // 2])
    stale = tmp_path / ".c.pt.tmp-4242"  # a writer killed mid-save
    stale.write_bytes(whole[:100])
    capsys.readouterr()

    again, loader2, plan2 = _setup(prepared_sample)
    seen = []
    fit(again, loader2, plan2, epochs=1, device=CPU, on_epoch=seen.append, checkpoint=ckpt)
    assert [s.epoch for s in seen] == [1]
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"checkpoint {ckpt}: unreadable (")
    assert line.endswith("; set aside as c.pt.unusable, training starts over")
    assert (tmp_path / "c.pt.unusable").read_bytes() == whole[: len(whole) // 2]
    assert not stale.exists()
    got = again.state_dict()
    assert [name for name, value in expected.items() if not torch.equal(value, got[name])] == []


UNUSABLE = {
    "empty": lambda real: b"",
    "garbage": lambda real: b"not a checkpoint",
    "pickle": lambda real: pickle.dumps({"epochs": 1}, protocol=2),
    "truncated": lambda real: real[: len(real) - 100],
    "other-shape": lambda real: real,  # a real checkpoint of 1 epoch, resumed as a run of 2
}


@pytest.mark.parametrize("damage", UNUSABLE)
def test_an_unusable_checkpoint_never_fails_the_run(prepared_sample: Path, tmp_path: Path, capsys, damage):
    ckpt = tmp_path / "c.pt"
    content = UNUSABLE[damage](_saved(prepared_sample, ckpt))
    ckpt.write_bytes(content)
    model, loader, plan = _setup(prepared_sample, perturb=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert resume(ckpt, model, plan, epochs=2, steps_per_epoch=len(loader)) == []
    (line,) = capsys.readouterr().err.splitlines()
    assert line.endswith("set aside as c.pt.unusable, training starts over")
    if damage == "other-shape":
        assert "a checkpoint of 1 epochs x 6 steps, not of this run (2 x 6)" in line
    assert not ckpt.exists() and (tmp_path / "c.pt.unusable").read_bytes() == content
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # nothing loaded


def test_a_checkpoint_is_on_disk_before_it_replaces_the_last_one(
    prepared_sample: Path, tmp_path: Path, monkeypatch
):
    """Written to a temp file, fsynced, renamed; a save that fails midway leaves the last one."""
    from hpcpipe import files

    model, loader, plan = _setup(prepared_sample)
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"the last checkpoint")
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append("replace"), real_replace(a, b))[1])
    real_save = torch.save

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(ckpt, model, plan, [], epochs=1, steps_per_epoch=len(loader))
    assert ckpt.read_bytes() == b"the last checkpoint" and list(tmp_path.iterdir()) == [ckpt]

    monkeypatch.setattr(torch, "save", real_save)
    events.clear()
    save_checkpoint(ckpt, model, plan, [], epochs=1, steps_per_epoch=len(loader))
    assert events[:2] == ["fsync", "replace"]  # the bytes, then the name (then the folder)
    assert list(tmp_path.iterdir()) == [ckpt]
    assert resume(ckpt, model, plan, epochs=1, steps_per_epoch=len(loader)) == []  # whole, no epoch yet


# --------------------------------------------------------------------------- job side
SPEC = StageSpec(
    name="fake",
    target="tests.support.fake_stages:count_to_three",
    sections=("train",),
    inputs=("source",),
    outputs=("result", "report"),
    resumable=True,
)


def test_the_job_resumes_from_its_checkpoint_and_removes_it_once_published(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # so `tests.support` imports; run_stage chdirs to the workdir itself
    (tmp_path / "source.txt").write_text("abc")
    params = fake_params(REPO / "params.yaml")
    folder = tmp_path / job.CHECKPOINT_DIR
    folder.mkdir(parents=True)
    stale = folder / "checkpoint-fake-0000000000000000.pt"
    stale.write_text("2")  # another fingerprint's: must not be resumed
    (tmp_path / "stop-after.txt").write_text("2")
    with pytest.raises(RuntimeError, match="stopped after step 2"):
        job.run_stage(SPEC, params, PATHS, str(tmp_path))
    monkeypatch.chdir(REPO)
    (saved,) = folder.iterdir()
    assert saved != stale and saved.read_text() == "2"
    assert not (tmp_path / "out" / "result.txt").exists()

    assert job.run_stage(SPEC, params, PATHS, str(tmp_path)) == {"resumed_after": 2}
    assert (tmp_path / "out" / "result.txt").read_text() == "resumed after 2"
    assert list(folder.iterdir()) == []  # published: nothing left to resume


# The example's function stages as `hpcpipe run NAME --fn ...` submits them (dvc.yaml's roles and outs).
EXAMPLE = {
    "prepare": ({"prepared": "data/prepared"}, ("data/prepared",)),
    "train": (
        {"prepared": "data/prepared", "model": "m.pt", "metrics": "t.json", "history": "h.csv"},
        ("m.pt", "t.json", "h.csv"),
    ),
    "evaluate": (
        {"prepared": "data/prepared", "model": "m.pt", "metrics": "e.json", "confusion": "c.csv"},
        ("e.json", "c.csv"),
    ),
}


def submitted(name: str, tmp_path: Path):
    """The callable the launcher submits for the example's stage ``name``."""
    from hpcpipe.config import load_params

    paths, outs = EXAMPLE[name]
    return example_stage_work(tmp_path, name, paths, outs, load_params(REPO / "params.yaml")).function


def test_only_resumable_stages_are_checkpointable_for_submitit(tmp_path):
    """submitit requeues a checkpointable job at its time limit; a stage that cannot
    resume would repeat the same work and hit the same limit, so it is not one. A function
    stage is resumable when it takes a ``checkpoint`` (train does)."""
    from submitit.helpers import DelayedSubmission

    args = (SPEC, None, PATHS, "/project")
    runner = submitted("train", tmp_path)
    assert runner is job.run_resumable_stage
    delayed = runner.checkpoint(*args)
    assert isinstance(delayed, DelayedSubmission)
    assert delayed.function is runner and delayed.args == args
    # submitit pickles the callable into the job folder; it must travel by reference
    assert pickle.loads(pickle.dumps(runner)).__class__ is job.ResumableStageRunner
    for name in ("prepare", "evaluate"):
        runner = submitted(name, tmp_path)
        assert runner is job.run_stage and not hasattr(runner, "checkpoint")


SAVE_ON_TERM = """
import os, signal, sys, time
from pathlib import Path
state = Path(os.environ["HPCPIPE_CHECKPOINT_DIR"]) / "state"
def save(*_):
    state.write_text("saved at the warning")
    sys.exit(7)
signal.signal(signal.SIGTERM, save)
Path("ready").write_text("")
time.sleep(60)
"""


def test_a_command_stage_saves_at_the_warning_signal_and_is_requeued(tmp_path):
    """A command stage can always resume (it is given HPCPIPE_CHECKPOINT_DIR). At Slurm's
    warning, submitit calls the runner's ``checkpoint`` while the command runs: the
    command gets the profile's signal (TERM), saves and exits, and the same call is
    requeued; the checkpoint folder is kept for the next attempt."""
    import sys
    import threading

    from submitit.helpers import DelayedSubmission

    from hpcpipe.launch.command_job import CommandFailed, CommandJob, CommandRunner

    folder = tmp_path / "checkpoint"
    command = CommandJob(
        argv=(sys.executable, "-c", SAVE_ON_TERM), workdir=str(tmp_path), stage="s",
        checkpoint_dir=str(folder), grace_s=20,
    )  # fmt: skip
    runner = CommandRunner()
    failures: list[BaseException] = []

    def run_the_job() -> None:
        try:
            runner(command)
        except BaseException as err:
            failures.append(err)

    job_thread = threading.Thread(target=run_the_job)
    job_thread.start()
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists():
        assert time.monotonic() < deadline and job_thread.is_alive(), failures
        time.sleep(0.05)
    delayed = runner.checkpoint(command)
    job_thread.join(timeout=30)
    assert isinstance(delayed, DelayedSubmission) and delayed.args == (command,)
    assert isinstance(delayed.function, CommandRunner)
    assert [type(f) for f in failures] == [CommandFailed] and failures[0].code == 7
    assert (folder / "state").read_text() == "saved at the warning"


def test_the_profile_sets_how_often_a_timed_out_job_is_requeued(tmp_path):
    import dataclasses

    from hpcpipe.config import load_profile
    from hpcpipe.launch.executors import make_executor

    shipped = load_profile("testcluster", REPO)
    assert shipped.max_timeouts == 10  # submitit's own default, 3, fails a run of 5 time limits
    executor = make_executor(dataclasses.replace(shipped, max_timeouts=7), "train", tmp_path)
    assert executor.max_num_timeout == 7


@pytest.mark.slow  # real training, a few seconds
def test_sigterm_stops_the_train_stage_at_the_next_step_with_its_state_saved(
    prepared_sample: Path, make_params, tmp_path: Path, monkeypatch
):
    """What ``scontrol requeue`` and ``scancel`` send, KillWait before SIGKILL: the stage stops
    at the next step and saves there (the requeued job resumes mid-epoch, not from the last
    epoch), and the handler before it (the job side's TerminationWatch: publish nothing;
    here a recorder) hears the signal at once, not when training has stopped."""
    import signal

    from hpcpipe.ml import loader, training
    from hpcpipe.stages.train import train

    heard: list[tuple[int, int]] = []
    real_epoch = loader.BatchLoader.epoch
    trained = {"batches": 0}

    def epoch(self, number, start=0):
        for i, batch in enumerate(real_epoch(self, number, start), start):
            yield batch
            trained["batches"] += 1
            if (number, i) == (0, 2):  # batch 3 of epoch 1 is trained
                os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loader.BatchLoader, "epoch", epoch)
    params = make_params(train={"model": "tutorial", "epochs": 2, "batch_size": 100, "lr": 0.05})
    before = signal.signal(signal.SIGTERM, lambda signum, _frame: heard.append((signum, trained["batches"])))
    checkpoint = tmp_path / "train.pt"
    try:
        with pytest.raises(training.Stopped, match="in epoch 1, after batch 4"):
            train(params, prepared=prepared_sample, model=tmp_path / "model.pt", metrics=tmp_path / "m.json",
                  history=tmp_path / "h.csv", checkpoint=checkpoint)  # fmt: skip
    finally:
        signal.signal(signal.SIGTERM, before)
    assert heard == [(signal.SIGTERM, 3)]  # passed on as it came, before the next batch was trained
    assert torch.load(checkpoint, weights_only=False)["partial"]["batches"] == 4
    assert not (tmp_path / "model.pt").exists()  # a stopped run writes no outputs
