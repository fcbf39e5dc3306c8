"""W&B tracking with the real wandb library, offline: runs are read back from their .wandb files.

No W&B server can run here: everything stays offline (WANDB_MODE=offline, files under
tmp_path), and what wandb wrote is parsed with ``hpcpipe.tracking.records``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpipe import tracking
from hpcpipe.config import WandbParams, load_params
from hpcpipe.launch.job import run_stage
from hpcpipe.tracking.context import RunContext, job_key, run_id
from hpcpipe.tracking.records import has_exit_record, read_run
from hpcpipe.tracking.run import JOB_RECORD, LIVE_MARKER, runs_root, segments
from tests.support import REPO
from tests.support.launch_project import example_stage_work
from tests.support.project import update_params

CONTEXT = RunContext(
    stage="train",
    fingerprint="0123456789abcdef",
    profile="testsite",
    resources={"gpus": 1, "cpus": 4, "time_min": 30},
)


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, quiet wandb, as inside a Slurm job 4242 on node nid001."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SUBMITIT_LOCAL_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURMD_NODENAME", "nid001")


def enabled(params, **wandb):
    return dataclasses.replace(params, wandb=WandbParams(enabled=True, project="test", **wandb))


def example_spec(name: str, paths: dict, outs: tuple, params, root: Path):
    """The spec `hpcpipe run NAME --fn ...` submits for the example's stage (tracked or
    not, resumable or not: from the function's own declaration)."""
    return example_stage_work(root, name, paths, outs, params).args[0]


TRAIN_OUTS = ("out/model.pt", "out/train.json", "out/history.csv")


def only_run(workdir: Path) -> Path:
    (folder,) = list(runs_root(workdir).iterdir())
    return folder


def test_run_id_is_stable_for_a_job_and_new_for_anything_else():
    key = job_key({"SLURM_JOB_ID": "77"})
    assert key == "slurm-77"
    assert run_id(CONTEXT, key) == run_id(
        CONTEXT, job_key({"SLURM_JOB_ID": "77", "SLURM_RESTART_COUNT": "1"})
    )
    assert run_id(CONTEXT, key) != run_id(CONTEXT, "slurm-78")
    assert run_id(CONTEXT, key) != run_id(dataclasses.replace(CONTEXT, fingerprint="f" * 16), key)
    assert (
        job_key({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "3"}) == "slurm-8_3"
    )
    assert job_key({"SUBMITIT_LOCAL_JOB_ID": "123"}) == "local-123"
    assert job_key({}) != job_key({})  # no scheduler: every execution is its own run


def test_a_run_records_config_history_and_summary(offline, make_params, tmp_path):
    params = enabled(make_params(), group="g1", tags=("a", "b"))
    with tracking.start_run(params, CONTEXT, ("train",), tmp_path):
        for epoch in (1, 2, 3):
            tracking.log_epoch(
                epoch=epoch, loss=1.0 / epoch, accuracy=0.1 * epoch, lr=0.01, images_per_s=900.0
            )
        tracking.log_summary({"train_accuracy": 0.3, "epochs": 3})

    folder = only_run(tmp_path)
    assert not (folder / LIVE_MARKER).exists()
    (segment,) = segments(folder)
    run = read_run(segment)
    assert run.run_id == folder.name == run_id(CONTEXT, "slurm-4242")
    assert (run.project, run.group, run.tags) == ("test", "g1", ("a", "b"))
    assert run.config["params"] == {"train": dataclasses.asdict(params.train)}
    assert run.config["resources"] == {"gpus": 1, "cpus": 4, "time_min": 30}
    assert run.config["fingerprint"] == CONTEXT.fingerprint
    assert (run.config["job_id"], run.config["node"], run.config["profile"]) == ("4242", "nid001", "testsite")
    assert "git_commit" in run.config
    assert [(row["_step"], row["epoch"]) for row in run.history] == [(0, 1), (1, 2), (2, 3)]
    assert {"loss", "accuracy", "lr", "images_per_s"} <= set(run.history[0])
    assert run.summary["train_accuracy"] == 0.3


def test_a_requeued_job_continues_the_same_run_without_gaps_or_repeats(offline, make_params, tmp_path):
    """The first attempt dies after two epochs; Slurm requeues the job (same job id)."""
    params = enabled(make_params())
    with pytest.raises(RuntimeError), tracking.start_run(params, CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=1, loss=2.0)
        tracking.log_epoch(epoch=2, loss=1.5)
        raise RuntimeError("time limit")
    with tracking.start_run(params, CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=3, loss=1.2)
        tracking.log_epoch(epoch=4, loss=1.0)

    folder = only_run(tmp_path)  # one run folder: one identity
    first, second = segments(folder)
    assert read_run(first).run_id == read_run(second).run_id == folder.name
    history = read_run(second).history  # the newest segment alone holds the whole history
    assert [row["_step"] for row in history] == [0, 1, 2, 3]
    assert [row["epoch"] for row in history] == [1, 2, 3, 4]
    assert [row["loss"] for row in history] == [2.0, 1.5, 1.2, 1.0]


def test_a_requeue_keeps_the_live_marker(offline, make_params, tmp_path):
    """submitit's handler requeues the job and exits it (``sys.exit(-1)``) from inside the
    stage: the run is closed, but the job is queued again, so its marker stays."""
    with pytest.raises(SystemExit), tracking.start_run(enabled(make_params()), CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=1, loss=1.0)
        sys.exit(-1)
    folder = only_run(tmp_path)
    assert json.loads((folder / LIVE_MARKER).read_text())["slurm_job"] == "4242"
    with tracking.start_run(enabled(make_params()), CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=2, loss=0.5)
    assert not (folder / LIVE_MARKER).exists()  # finished well: gone
    assert json.loads((folder / JOB_RECORD).read_text())["slurm_job"] == "4242"  # sync still asks Slurm


ATTEMPT = """
import dataclasses, os, signal, sys
from pathlib import Path
from hpcpipe import tracking
from hpcpipe.config import WandbParams, load_params
from hpcpipe.tracking.context import RunContext

params = load_params(Path(sys.argv[1]))
params = dataclasses.replace(params, wandb=WandbParams(enabled=True, project="test"))
context = RunContext(stage="train", fingerprint="0123456789abcdef", profile="testsite")
with tracking.start_run(params, context, ("train",), sys.argv[2]):
    for epoch in range(1, int(sys.argv[3]) + 1):
        tracking.log_epoch(epoch=epoch, loss=1.0 / epoch)
    os.kill(os.getpid(), signal.SIGKILL)  # Slurm's KillWait after scontrol requeue, a node failure
"""


def test_a_run_resumed_after_a_hard_kill_logs_epoch_k_plus_1_at_step_k(offline, make_params, tmp_path):
    """The first attempt is killed outright after logging 3 epochs: wandb never wrote its
    rows out (its file holds the header alone). The resumed attempt starts at epoch 4."""
    script = tmp_path / "attempt.py"
    script.write_text(ATTEMPT)
    # a fresh wandb service, as on a compute node: not the one this process may have started
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    killed = subprocess.run(
        [sys.executable, str(script), str(REPO / "params.yaml"), str(tmp_path), "3"], env=env
    )
    assert killed.returncode == -signal.SIGKILL
    with tracking.start_run(enabled(make_params()), CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=4, loss=0.25)
        tracking.log_epoch(epoch=5, loss=0.2)

    history = read_run(segments(only_run(tmp_path))[-1]).history
    assert [(row["_step"], row["epoch"]) for row in history] == [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5)]
    assert [row["loss"] for row in history] == [1.0, 0.5, 1.0 / 3, 0.25, 0.2]


def test_a_checkpoint_behind_the_history_repeats_no_step(offline, make_params, tmp_path):
    """Epoch 3 was logged but its checkpoint never written: the next attempt trains epoch 3
    again, and the history holds its new row once, at step 2."""
    params = enabled(make_params())
    with pytest.raises(RuntimeError), tracking.start_run(params, CONTEXT, ("train",), tmp_path):
        for epoch in (1, 2, 3):
            tracking.log_epoch(epoch=epoch, loss=float(epoch))
        raise RuntimeError("killed while saving epoch 3")
    with tracking.start_run(params, CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=3, loss=30.0)
        tracking.log_epoch(epoch=4, loss=40.0)
    history = read_run(segments(only_run(tmp_path))[-1]).history
    assert [(row["_step"], row["epoch"], row["loss"]) for row in history] == [
        (0, 1, 1.0),
        (1, 2, 2.0),
        (2, 3, 30.0),
        (3, 4, 40.0),
    ]


def test_disabled_tracking_writes_nothing(offline, make_params, tmp_path):
    with tracking.start_run(make_params(), CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=1, loss=1.0)
    with tracking.start_run(enabled(make_params()), None, ("train",), tmp_path):
        tracking.log_epoch(epoch=1, loss=1.0)
    assert not runs_root(tmp_path).exists()


def test_wandb_not_installed_is_one_warning(offline, make_params, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with tracking.start_run(enabled(make_params()), CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=1, loss=1.0)
        tracking.log_summary({"x": 1})
    warnings = [line for line in capsys.readouterr().err.splitlines() if "W&B" in line]
    assert len(warnings) == 1 and "wandb is not installed" in warnings[0]


def test_failing_writes_stop_tracking_with_one_warning(offline, make_params, tmp_path, monkeypatch, capsys):
    import wandb

    with tracking.start_run(enabled(make_params()), CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=1, loss=1.0)

        def broken(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(wandb.sdk.wandb_run.Run, "log", broken)
        tracking.log_epoch(epoch=2, loss=0.5)
        tracking.log_epoch(epoch=3, loss=0.2)
        tracking.log_summary({"x": 1})
    warnings = [line for line in capsys.readouterr().err.splitlines() if "W&B off" in line]
    assert len(warnings) == 1 and "disk full" in warnings[0]
    # the run is closed, as failed; its marker stays, as after any failure: the job may
    # be requeued, and `hpcpipe sync` asks Slurm before it uploads (see sync.liveness)
    (segment,) = segments(only_run(tmp_path))
    assert has_exit_record(next(segment.glob("*.wandb")))
    assert (only_run(tmp_path) / LIVE_MARKER).exists()


def test_a_failing_wandb_init_leaves_the_train_stage_complete(
    offline, make_params, prepared_sample, tmp_path, monkeypatch, capsys
):
    import wandb

    def refuse(*args, **kwargs):
        raise wandb.errors.UsageError("bad entity")

    monkeypatch.setattr(wandb, "init", refuse)
    monkeypatch.chdir(REPO)  # run_stage chdirs to workdir itself; restored after the test
    paths = {
        "prepared": str(prepared_sample),
        "model": "out/model.pt",
        "metrics": "out/train.json",
        "history": "out/history.csv",
    }
    params = enabled(make_params())
    spec = example_spec("train", paths, TRAIN_OUTS, params, tmp_path)
    metrics = run_stage(spec, params, paths, str(tmp_path), CONTEXT)
    assert metrics["epochs"] == 1 and (tmp_path / "out" / "train.json").exists()
    warnings = [line for line in capsys.readouterr().err.splitlines() if "W&B" in line]
    assert warnings == ["hpcpipe: W&B off for this stage: UsageError: bad entity"]


def test_train_and_evaluate_log_curves_confusion_and_samples(
    offline, make_params, prepared_sample, tmp_path, monkeypatch
):
    secret = "wandb-key-5d1e9b7c2a"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    monkeypatch.chdir(REPO)
    params = enabled(make_params(train={"epochs": 2}))
    paths = {
        "prepared": str(prepared_sample),
        "model": "out/model.pt",
        "metrics": "out/train.json",
        "history": "out/history.csv",
    }
    train_spec = example_spec("train", paths, TRAIN_OUTS, params, tmp_path)
    run_stage(train_spec, params, paths, str(tmp_path), CONTEXT)
    eval_paths = {
        "prepared": str(prepared_sample),
        "model": "out/model.pt",
        "metrics": "out/evaluate.json",
        "confusion": "out/confusion.csv",
    }
    eval_context = dataclasses.replace(CONTEXT, stage="evaluate")
    eval_outs = ("out/evaluate.json", "out/confusion.csv")
    eval_spec = example_spec("evaluate", eval_paths, eval_outs, params, tmp_path)
    result = run_stage(eval_spec, params, eval_paths, str(tmp_path), eval_context)

    train = read_run(segments(runs_root(tmp_path) / run_id(CONTEXT, "slurm-4242"))[-1])
    assert [row["epoch"] for row in train.history] == [1, 2]
    assert train.summary["epochs"] == 2
    evaluate = read_run(segments(runs_root(tmp_path) / run_id(eval_context, "slurm-4242"))[-1])
    assert evaluate.config["params"] == {"evaluate": {"batch_size": 1000}}
    media = {key: value for row in evaluate.history for key, value in row.items() if key.endswith("/_type")}
    assert media == {"confusion_matrix_table/_type": "table-file", "sample_predictions/_type": "table-file"}
    (samples,) = [row for row in evaluate.history if "sample_predictions/nrows" in row]
    assert samples["sample_predictions/nrows"] == tracking.SAMPLE_COUNT
    assert evaluate.summary["test_accuracy"] == result["test_accuracy"]
    assert [p for p in tmp_path.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []


def test_wandb_settings_are_outside_the_fingerprint_and_old_params_load(project, tmp_path):
    """The fingerprint (reattach, checkpoints, run identity) is the stage's content as DVC
    sees it: switching W&B on changes nothing, a declared param does."""
    from hpcpipe.launch.dvc_stage import load_stage
    from hpcpipe.launch.stage_work import wandb_settings

    text = (REPO / "params.yaml").read_text()
    assert load_params(REPO / "params.yaml").wandb.enabled is False
    old = tmp_path / "params.yaml"
    old.write_text(text.split("\nwandb:")[0])
    assert load_params(old).wandb == WandbParams()
    assert wandb_settings(tmp_path, "params.yaml") is None  # a params file without wandb: no W&B

    (project / "data" / "prepared").mkdir()  # train's input: it only has to exist here
    before = load_stage(project, "train").fingerprint
    update_params(project, wandb={"enabled": True, "project": "elsewhere", "group": "g"})
    assert wandb_settings(project, "params.yaml") == WandbParams(enabled=True, project="elsewhere", group="g")
    assert load_stage(project, "train").fingerprint == before
    update_params(project, train={"lr": 0.123})
    assert load_stage(project, "train").fingerprint != before


def test_prepare_opens_no_run_even_with_wandb_on(offline, make_params, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    context = dataclasses.replace(CONTEXT, stage="prepare")
    params = enabled(make_params())
    paths = {"prepared": "out/prepared"}
    spec = example_spec("prepare", paths, ("out/prepared",), params, tmp_path)
    assert not spec.tracked  # declared so: @stage_function(..., tracked=False)
    run_stage(spec, params, paths, str(tmp_path), context)
    assert (tmp_path / "out" / "prepared" / "manifest.json").exists()
    assert not runs_root(tmp_path).exists()


def test_the_live_marker_goes_only_once_the_run_file_is_complete(offline, make_params, tmp_path):
    """wandb's finish() can return before its service wrote the file out (seen under load);
    the stage waits for the exit record, so `hpcpipe sync` never uploads half a run."""
    with tracking.start_run(enabled(make_params()), CONTEXT, ("train",), tmp_path):
        tracking.log_epoch(epoch=1, loss=1.0)
    folder = only_run(tmp_path)
    (segment,) = segments(folder)
    (log,) = segment.glob("*.wandb")
    assert not (folder / LIVE_MARKER).exists() and has_exit_record(log)
    torn = tmp_path / "torn.wandb"
    data = log.read_bytes()
    torn.write_bytes(data[: len(data) // 2])  # what a reader saw before the flush
    assert not has_exit_record(torn)
