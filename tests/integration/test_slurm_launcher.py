"""The launcher against the real one-node Slurm test cluster (slurm/testcluster).

Every job here is a real Slurm job: sbatch, slurmctld, slurmd and sacct as on a
cluster, with a node that imitates a GPU node. Stages are either the real CIFAR-10
stages (the pipeline tests) or, where the test is about launching (failure, time
limit, signals, reattach), tests/support/fake_stages.py's functions and commands,
declared in the temp project's dvc.yaml and launched with the `hpcpipe` command.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from hpcpipe.launch.ledger import Ledger
from hpcpipe.liveness import pid_alive
from tests.support import REPO
from tests.support.commands import wait_for
from tests.support.launch_project import (
    add_command_stage,
    files_containing,
    launch,
    ledger_job,
    let_go,
    quoted,
    start,
    start_logged,
)
from tests.support.slurm import (
    jobs_named,
    jobs_named_once_recorded,
    now,
    running_job,
    sacct_row,
    send_warning,
    squeue_state,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_dvc_repro_runs_each_stage_as_a_job_on_its_partition(project: Path, slurm_cluster, monkeypatch):
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
    secret = "wandb-key-8d2e4f6a0c"
    monkeypatch.setenv("WANDB_API_KEY", secret)  # jobs inherit it; no file of ours may hold it
    subprocess.run(["dvc", "add", "-q", "data/raw"], cwd=project, check=True)
    repro = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, timeout=900)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "RUNNING on" in repro.stderr and "epoch 1/1" in repro.stdout
    ledger = Ledger(project / ".hpcpipe" / "jobs" / "ledger")
    expected = {"prepare": "cpu", "train": "gpu", "evaluate": "gpu"}
    for stage, partition in expected.items():
        job_id = ledger.get(stage).job_id
        assert sacct_row(job_id) == ("COMPLETED", partition)
        tres = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "AllocTRES"], capture_output=True, text=True
        ).stdout
        assert ("gres/gpu=1" in tres) == (partition == "gpu"), tres
    assert json.loads((project / "metrics" / "evaluate.json").read_text())["test_images"] == 100
    assert files_containing(project / ".hpcpipe", secret) == []
    status = subprocess.run(["hpcpipe", "status"], cwd=project, capture_output=True, text=True).stdout
    rows = {line.split()[0]: line.split() for line in status.splitlines()[1:]}
    assert {stage: rows[stage][2] for stage in expected} == dict.fromkeys(expected, "COMPLETED")
    assert rows["train"][1] == ledger.get("train").job_id
    again = subprocess.run(["dvc", "repro"], cwd=project, capture_output=True, text=True, timeout=300)
    assert "Running stage" not in again.stdout


def test_a_failed_job_reports_id_state_and_stderr_tail(slurm_project: Path):
    driver = start(slurm_project, "fail_halfway")
    _, err = driver.communicate(timeout=300)
    job_id = ledger_job(slurm_project)
    assert driver.returncode == 1
    assert f"job {job_id} FAILED" in err
    assert "  | RuntimeError: the stage broke on purpose" in err
    assert not (slurm_project / "out").exists() or not (slurm_project / "out" / "result.txt").exists()


def test_a_job_past_its_time_limit_fails_with_timeout(slurm_project: Path):
    """A stage that cannot resume, warned before its one-minute limit (the test sends
    Slurm's warning once the stage runs: see ``send_warning``), ends and is said TIMEOUT."""
    driver = start(slurm_project, "sleep_then_write", profile="testcluster-1min")
    wait_for(lambda: (slurm_project / "job.pid").exists() or driver.poll() is not None, timeout=300)
    job_id = ledger_job(slurm_project)
    assert job_id is not None, driver.communicate()
    send_warning(job_id)
    _, err = driver.communicate(timeout=400)
    assert driver.returncode == 1, err
    assert ledger_job(slurm_project) == job_id
    assert f"job {job_id} TIMEOUT" in err
    assert not (slurm_project / "out" / "result.txt").exists()


def test_ctrl_c_cancels_the_slurm_job(slurm_project: Path):
    driver = start(slurm_project, "sleep_then_write")
    wait_for(lambda: (slurm_project / "job.pid").exists(), timeout=120)
    job_id = ledger_job(slurm_project)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err
    assert f"cancelled job {job_id}" in err
    assert sacct_row(job_id)[0].startswith("CANCELLED")


def test_a_killed_launcher_is_replaced_without_a_second_job(slurm_project: Path, tmp_path: Path):
    since = now()
    # sacct's -S has 1 s steps: the previous test's job can fall in the window
    earlier = set(jobs_named("hpcpipe-fake", since, slurm_project))
    first = start(slurm_project, "wait_for_go")
    job_id = running_job(slurm_project)
    first.kill()  # SIGKILL: no chance to cancel, as with a dropped SSH session
    first.communicate()
    assert squeue_state(job_id) == "RUNNING"
    log = tmp_path / "second.err"
    second = start_logged(slurm_project, "wait_for_go", log)
    wait_for(lambda: "reattached" in log.read_text() or second.poll() is not None, timeout=120)
    let_go(slurm_project)  # the job ends only once the second launcher watches it
    second.communicate(timeout=300)
    err = log.read_text()
    assert second.returncode == 0, err
    assert f"reattached to job {job_id}" in err
    assert sacct_row(job_id, timeout_s=60)[0] == "COMPLETED"  # so in the database jobs_named reads
    assert [j for j in jobs_named("hpcpipe-fake", since, slurm_project) if j not in earlier] == [job_id]
    assert (slurm_project / "out" / "result.txt").read_text() == "done"


def test_a_changed_stage_cancels_the_stale_job_and_submits_anew(slurm_project: Path, tmp_path: Path):
    first = start(slurm_project, "wait_for_go")
    stale = running_job(slurm_project)
    wait_for(lambda: (slurm_project / "job.pid").exists(), timeout=60)
    stale_pid = int((slurm_project / "job.pid").read_text())
    first.kill()
    first.communicate()
    (slurm_project / "source.txt").write_text("a different input\n")  # the same cmd, another dep
    log = tmp_path / "second.err"
    second = start_logged(slurm_project, "wait_for_go", log)
    wait_for(lambda: "cancelled job" in log.read_text() or second.poll() is not None, timeout=120)
    # the new job may finish once the stale one can no longer (its process gone)
    wait_for(lambda: not pid_alive(stale_pid), timeout=60, what="the stale job's process to end")
    let_go(slurm_project)
    second.communicate(timeout=300)
    err = log.read_text()
    assert second.returncode == 0, err
    assert f"cancelled job {stale}" in err
    assert sacct_row(stale)[0].startswith("CANCELLED")
    assert ledger_job(slurm_project) != stale
    assert (slurm_project / "out" / "result.txt").read_text() == "done"


def test_a_command_stage_exits_with_its_commands_status_and_stderr(slurm_project: Path):
    args = add_command_stage(slurm_project, "broken", ["python", "fake_stages.py", "fail", "3"])
    driver = launch(slurm_project, args)
    _, err = driver.communicate(timeout=300)
    job_id = ledger_job(slurm_project, "broken")
    assert driver.returncode == 3, err
    assert f"job {job_id} FAILED" in err
    assert quoted(err)[-1] == "giving up with status 3"
    assert not any("Traceback" in line for line in quoted(err))


def test_a_command_stage_cut_by_its_time_limit_saves_requeues_and_resumes(slurm_project: Path):
    """Slurm's warning before the time limit (sent by the test once the command runs: see
    ``send_warning``) reaches the command as SIGTERM (the profile's `forward`); it saves
    into HPCPIPE_CHECKPOINT_DIR and exits, the job is requeued (same id), and the next
    attempt of the same command finds what it saved."""
    command = ["python", "fake_stages.py", "save-at-warning", "out/resumed.txt"]
    args = add_command_stage(slurm_project, "long", command, outs=["out/resumed.txt"])
    driver = launch(slurm_project, args, {"HPCPIPE_CLUSTER": "testcluster-1min"})
    # the command writes command.pid once it handles SIGTERM: then the warning (see send_warning)
    wait_for(lambda: (slurm_project / "command.pid").exists() or driver.poll() is not None, timeout=300)
    job_id = ledger_job(slurm_project, "long")
    assert job_id is not None, driver.communicate()
    send_warning(job_id)
    _, err = driver.communicate(timeout=400)
    assert driver.returncode == 0, err
    assert ledger_job(slurm_project, "long") == job_id
    shown = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    assert int(re.search(r"Restarts=(\d+)", shown).group(1)) >= 1
    assert (slurm_project / "out" / "resumed.txt").read_text() == "resumed: saved at SIGTERM"
    assert list((slurm_project / ".hpcpipe" / "jobs" / "long").glob("checkpoint-*")) == []


def test_repro_sbatch_runs_every_stage_inline_in_one_allocation(project: Path, slurm_cluster):
    (project / "slurm").mkdir()
    (project / "slurm" / "repro.sbatch").write_text((REPO / "slurm" / "repro.sbatch").read_text())
    subprocess.run(["dvc", "add", "-q", "data/raw"], cwd=project, check=True)
    since = now()
    submit = ["sbatch", "--parsable", "slurm/repro.sbatch"]
    job_id = subprocess.run(submit, cwd=project, capture_output=True, text=True, check=True).stdout.strip()
    # not `sbatch --wait`: it asks Slurm after 2, 10, 42, 74... s, so a 15 s job took 42
    wait_for(lambda: squeue_state(job_id) == "", timeout=900, what=f"job {job_id} to end")
    log = (project / f"hpcpipe-repro-{job_id}.out").read_text()
    assert sacct_row(job_id)[0] == "COMPLETED", log
    assert all(f"Running stage '{s}'" in log for s in ("prepare", "train", "evaluate")), log
    assert "(inline: inline)" in log
    for stage in ("prepare", "train", "evaluate"):
        assert jobs_named(f"hpcpipe-{stage}", since, project) == []  # no job inside the job


def test_repro_detach_submits_a_driver_that_submits_the_stages(project: Path, slurm_cluster, monkeypatch):
    subprocess.run(["dvc", "add", "-q", "data/raw"], cwd=project, check=True)
    since = now()
    detach = subprocess.run(
        ["hpcpipe", "repro", "--detach", "--cluster", "testcluster"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert detach.returncode == 0, detach.stderr
    driver_id = ledger_job(project, "repro")
    assert f"job {driver_id}" in detach.stdout
    wait_for(lambda: squeue_state(driver_id) == "", timeout=900)
    assert sacct_row(driver_id)[0] == "COMPLETED"
    for stage, partition in (("prepare", "cpu"), ("train", "gpu"), ("evaluate", "gpu")):
        jobs = jobs_named_once_recorded(f"hpcpipe-{stage}", since, project)
        assert len(jobs) == 1 and sacct_row(jobs[0]) == ("COMPLETED", partition)
    assert (project / "metrics" / "evaluate.json").exists()
