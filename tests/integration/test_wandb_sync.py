"""``hpcpipe sync`` and the launcher's W&B context, end to end on real offline runs.

No W&B server can run here, so the server side is stood in for at the process
boundary: the ``fake_wandb`` fixture (tests/support/fake_wandb.py), a tiny ``wandb``
script first on PATH, records each ``wandb sync`` call's arguments, fails for paths
named in $FAKE_WANDB_FAIL and takes $FAKE_WANDB_SLEEP seconds (an upload that takes a
while). The runs it is handed are real: written by
the real wandb library in offline mode through ``hpcpipe.tracking``. Whether a job
is still in Slurm is asked of the real test cluster (``slurm`` tests).

The Slurm job ids the runs name are made up and far above any the test cluster hands
out, so that Slurm has no such job, except where a test holds a real one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpipe import tracking
from hpcpipe.cli import main
from hpcpipe.config import WandbParams, load_params, load_profile
from hpcpipe.tracking.context import RunContext
from hpcpipe.tracking.records import read_run
from hpcpipe.tracking.run import LIVE_MARKER, SYNCED_MARKER, mark_live, runs_root, segments
from tests.support.commands import wait_for
from tests.support.fake_wandb import calls
from tests.support.launch_project import add_command_stage, add_fake_stage
from tests.support.project import update_params


def write_run(project: Path, stage: str, job: str, epochs: range, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A real offline run of ``stage`` in Slurm job ``job``; returns its run folder."""
    job = slurm_id(job)
    monkeypatch.setenv("SLURM_JOB_ID", job)
    params = load_params(project / "params.yaml")
    params = dataclasses.replace(params, wandb=WandbParams(enabled=True, project="t"))
    context = RunContext(stage=stage, fingerprint="f" * 16, profile="local")
    with tracking.start_run(params, context, (), project):
        for epoch in epochs:
            tracking.log_epoch(epoch=epoch, loss=1.0 / epoch)
    (folder,) = [f for f in runs_root(project).iterdir() if f.name.startswith(stage) and job_of(f) == job]
    return folder


def slurm_id(job: str) -> str:
    """A made-up job id no Slurm here has (see the module docstring); a real one as it is."""
    return job if len(job) > 2 else f"6{int(job):07d}"


def job_of(folder: Path) -> str:
    return str(read_run(segments(folder)[0]).config["job_id"])


def sync(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, list[str]]:
    code = main(["sync", *args])
    return code, capsys.readouterr().out.splitlines()


def test_sync_uploads_each_finished_run_once(project, fake_wandb, monkeypatch, capsys):
    train = write_run(project, "train", "11", range(1, 3), monkeypatch)
    evaluate = write_run(project, "evaluate", "12", range(1, 2), monkeypatch)

    code, out = sync("--dry-run", capsys=capsys)
    assert code == 0 and out[-1] == "synced 0, failed 0, skipped 0"
    assert calls(fake_wandb) == []

    code, out = sync("--jobs", "2", capsys=capsys)
    assert code == 0 and out[-1] == "synced 2, failed 0, skipped 0"
    assert sorted(calls(fake_wandb)) == sorted(f"sync {segments(f)[-1]}" for f in (train, evaluate))
    assert (train / SYNCED_MARKER).exists() and (evaluate / SYNCED_MARKER).exists()

    code, out = sync(capsys=capsys)
    assert code == 0 and out[-1] == "synced 0, failed 0, skipped 0"
    assert len(calls(fake_wandb)) == 2  # never twice


def test_a_run_still_being_written_is_skipped_until_its_job_ends(project, fake_wandb, monkeypatch, capsys):
    folder = write_run(project, "train", "21", range(1, 2), monkeypatch)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        marker = {"pid": sleeper.pid, "host": socket.gethostname(), "slurm_job_id": None}
        (folder / LIVE_MARKER).write_text(json.dumps(marker))
        code, out = sync(capsys=capsys)
        assert code == 0 and out[-1] == "synced 0, failed 0, skipped 1"
        assert calls(fake_wandb) == []
    finally:
        sleeper.kill()
        sleeper.wait()
    # the job died without removing its marker (killed at its time limit): now it is finished
    code, out = sync(capsys=capsys)
    assert code == 0 and out[-1] == "synced 1, failed 0, skipped 0"


def test_a_failed_upload_is_reported_retried_and_does_not_stop_the_others(
    project, fake_wandb, monkeypatch, capsys
):
    bad = write_run(project, "train", "31", range(1, 2), monkeypatch)
    good = write_run(project, "evaluate", "32", range(1, 2), monkeypatch)
    monkeypatch.setenv("FAKE_WANDB_FAIL", bad.name)
    code, out = sync(capsys=capsys)
    assert code == 1 and out[-1] == "synced 1, failed 1, skipped 0"
    assert any(line.startswith(f"failed {bad.name}: exit 1: wandb: ERROR network") for line in out)
    assert not (bad / SYNCED_MARKER).exists() and (good / SYNCED_MARKER).exists()

    monkeypatch.delenv("FAKE_WANDB_FAIL")
    code, out = sync(capsys=capsys)
    assert code == 0 and out[-1] == "synced 1, failed 0, skipped 0"
    assert [c for c in calls(fake_wandb) if good.name in c] == [f"sync {segments(good)[-1]}"]


def test_a_requeued_run_uploads_only_its_complete_newest_segment(project, fake_wandb, monkeypatch, capsys):
    write_run(project, "train", "41", range(1, 3), monkeypatch)
    folder = write_run(project, "train", "41", range(3, 5), monkeypatch)  # requeued: same job id
    _first, newest = segments(folder)
    code, out = sync(capsys=capsys)
    assert code == 0 and out[-1] == "synced 1, failed 0, skipped 0"
    assert calls(fake_wandb) == [f"sync {newest}"]
    assert [row["epoch"] for row in read_run(newest).history] == [1, 2, 3, 4]


def test_the_launcher_hands_the_job_its_run_context(fake_stage_project, fake_wandb, monkeypatch):
    """A real local job (submitit subprocess): its W&B run carries the launcher's context."""
    from hpcpipe.launch.dvc_stage import load_stage

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURMD_NODENAME", raising=False)
    update_params(fake_stage_project, wandb={"enabled": True, "project": "t", "group": "demo"})
    root = fake_stage_project
    args = add_fake_stage(root, "write_outputs")
    fingerprint = load_stage(root, "fake").fingerprint
    assert main(args) == 0

    (folder,) = list(runs_root(root).iterdir())
    run = read_run(segments(folder)[-1])
    assert run.group == "demo"
    assert run.config["fingerprint"] == fingerprint
    profile = load_profile("local", root)
    resources = json.loads(json.dumps(dataclasses.asdict(profile.resources("fake"))))  # tuples -> lists
    del resources["setup"]  # shell lines, maybe with a site's secrets: never W&B config
    assert run.config["resources"] == resources
    train = load_params(root / "params.yaml").train
    assert run.config["params"] == {"train": dataclasses.asdict(train)}
    assert run.config["profile"] == "local" and run.config["job_id"]
    assert not (folder / LIVE_MARKER).exists()


def test_a_command_stage_run_goes_offline_into_the_project_and_is_synced_once(
    fake_stage_project, fake_wandb, monkeypatch, capsys
):
    """A user's script calls plain ``wandb.init()``; the job's environment makes that run
    offline, in the project's wandb/ folder, grouped by stage, so `hpcpipe sync` uploads it."""
    from hpcpipe.launch.dvc_stage import load_stage

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)  # the job sets it, not the test
    update_params(fake_stage_project, wandb={"enabled": True, "project": "t"})
    root = fake_stage_project
    command = ["python", "fake_stages.py", "wandb-run", "out/wandb.json"]
    args = add_command_stage(root, "scripted", command, outs=["out/wandb.json"], deps=["fake_stages.py"])
    fingerprint = load_stage(root, "scripted").fingerprint
    assert main(args) == 0
    capsys.readouterr()

    seen = json.loads((root / "out" / "wandb.json").read_text())
    (folder,) = list(runs_root(root).iterdir())
    assert seen["run_id"] == folder.name
    env = seen["env"]
    assert (env["WANDB_MODE"], env["WANDB_PROJECT"], env["WANDB_JOB_TYPE"]) == ("offline", "t", "scripted")
    assert env["WANDB_RUN_GROUP"] == f"scripted-{fingerprint}"
    assert not (folder / LIVE_MARKER).exists()
    (segment,) = segments(folder)
    run = read_run(segment)
    assert run.run_id == folder.name and run.project == "t"
    assert [row["loss"] for row in run.history] == [0.5]

    code, out = sync(capsys=capsys)
    assert code == 0 and out[-1] == "synced 1, failed 0, skipped 0"
    assert calls(fake_wandb) == [f"sync {segment}"]


def test_watch_keeps_syncing_until_ctrl_c(project, fake_wandb, monkeypatch, capsys):
    from hpcpipe.tracking import sync as sync_module

    write_run(project, "train", "51", range(1, 2), monkeypatch)
    real_pass, passes = sync_module.sync_once, []

    def pass_then_ctrl_c(*args, **kwargs):
        if len(passes) == 3:
            raise KeyboardInterrupt
        passes.append(1)
        return real_pass(*args, **kwargs)

    monkeypatch.setattr(sync_module, "sync_once", pass_then_ctrl_c)
    code, out = sync("--watch", "--poll", "0.01", capsys=capsys)
    assert code == 0 and out[0].startswith("synced train-")
    assert out[-2:] == ["synced 1, failed 0, skipped 0", "stopped watching"]
    assert len(calls(fake_wandb)) == 1  # three passes, one upload


def test_sync_also_finds_the_runs_of_sweep_points(project, fake_wandb, monkeypatch, capsys):
    """Sweep points run in their own worktrees, so their offline runs live there."""
    point = project / ".hpcpipe" / "sweeps" / "lr" / "points" / "001-lr-0.1"
    shutil.copytree(project, point, ignore=shutil.ignore_patterns(".hpcpipe", "data"))
    in_point = write_run(point, "train", "21", range(1, 2), monkeypatch)
    in_project = write_run(project, "train", "22", range(1, 2), monkeypatch)
    code, out = sync(capsys=capsys)
    assert code == 0 and out[-1] == "synced 2, failed 0, skipped 0"
    assert sorted(calls(fake_wandb)) == sorted(f"sync {segments(f)[-1]}" for f in (in_point, in_project))


def sbatch_held(*args: str) -> str:
    """A real job that stays pending (held): Slurm has it, and it uses no CPU."""
    done = subprocess.run(
        ["sbatch", "--hold", "--parsable", "-o", "/dev/null", *args, "--wrap", "true"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip().split(";")[0]


def in_queue(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, check=True)
    return any(line == job or line.startswith(f"{job}_") for line in out.stdout.split())


@pytest.mark.slurm
def test_no_attempt_is_uploaded_while_slurm_still_has_its_job(
    project, fake_wandb, slurm_cluster, monkeypatch, capsys
):
    """A plain job whose attempt finished well but that Slurm queued again (its marker is
    gone: sync asks Slurm), and an array task killed on its node (its marker stays, and
    names the task as ``ARRAY_TASK``). Both wait until Slurm no longer has the job."""
    plain, array = sbatch_held(), sbatch_held("--array=0-1")
    try:
        requeued = write_run(project, "train", plain, range(1, 3), monkeypatch)
        monkeypatch.setenv("SLURM_ARRAY_JOB_ID", array)
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
        killed = write_run(project, "evaluate", str(int(array) + 2), range(1, 2), monkeypatch)
        mark_live(killed)  # what the killed attempt left: its marker, written on a compute node
        marker = json.loads((killed / LIVE_MARKER).read_text())
        (killed / LIVE_MARKER).write_text(json.dumps({**marker, "host": "nid001"}))
        assert not (requeued / LIVE_MARKER).exists()

        code, out = sync(capsys=capsys)
        assert code == 0 and out[-1] == "synced 0, failed 0, skipped 2", out  # all of it: which run, why
        assert f"skipped {requeued.name}: Slurm still has job {plain}" in out
        assert f"skipped {killed.name}: Slurm still has job {array}_1" in out
        assert calls(fake_wandb) == []
    finally:
        subprocess.run(["scancel", plain, array], capture_output=True)
    wait_for(lambda: not in_queue(plain) and not in_queue(array), timeout=60)
    code, out = sync(capsys=capsys)
    assert code == 0 and out[-1] == "synced 2, failed 0, skipped 0"
    assert sorted(calls(fake_wandb)) == sorted(f"sync {segments(f)[-1]}" for f in (requeued, killed))


def test_two_syncs_at_once_upload_each_run_once(project, fake_wandb, monkeypatch):
    """Two `hpcpipe sync` started together (two terminals, two login nodes), while each
    upload takes a while: every run is uploaded by one of them, once."""
    folders = [write_run(project, stage, job, range(1, 2), monkeypatch) for stage, job in
               (("train", "61"), ("evaluate", "62"))]  # fmt: skip
    env = {**os.environ, "FAKE_WANDB_SLEEP": "2"}
    env.pop("SLURM_JOB_ID")
    both = [
        subprocess.Popen(
            [sys.executable, "-m", "hpcpipe", "sync"], cwd=project, env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    outs = [process.communicate(timeout=120)[0].splitlines() for process in both]
    assert [process.returncode for process in both] == [0, 0]
    assert sorted(calls(fake_wandb)) == sorted(f"sync {segments(f)[-1]}" for f in folders)
    synced = [int(out[-1].split()[1].rstrip(",")) for out in outs]
    assert sum(synced) == 2, outs
    assert all((f / SYNCED_MARKER).exists() and not (f / "sync.claim").exists() for f in folders)
