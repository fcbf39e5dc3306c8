"""The launcher's fault table on the real Slurm test cluster (issue 13, points 1-3 and 14).

Each test makes one fault happen for real: a launcher SIGKILLed while its job runs, a
signal between sbatch and the start of watching, a second Ctrl-C during the cancel, a
ledger that cannot be written, a stdout nobody reads, two launchers of one stage at once,
a requeue. Where the fault is Slurm's own answer (scancel refusing), a shim on PATH
gives that answer and calls nothing else: the narrowest seam, since the test cluster's
root user may cancel anything.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from hpcpipe.liveness import pid_alive
from tests.support.commands import wait_for
from tests.support.launch_project import (
    add_command_stage,
    add_fake_stage,
    ledger_job,
    let_go,
    start,
    start_logged,
)
from tests.support.slurm import jobs_named, now, running_job, sacct_row, second_cluster, squeue_state

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def shim(folder: Path, name: str, body: str) -> Path:
    """An executable ``name`` in ``folder`` that runs ``body`` (sh); $REAL is the real command."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text(f'#!/bin/sh\nREAL="{shutil.which(name)}"\n{textwrap.dedent(body)}')
    path.chmod(0o755)
    return folder


def cleanup(job_id: str | None) -> None:
    if job_id:
        subprocess.run(["scancel", job_id], capture_output=True)


def test_a_job_that_finished_while_no_launcher_watched_is_adopted(slurm_project: Path):
    """Point 1: SSH drop, the job completes and publishes; the next launch submits nothing.
    Once that outcome has been reported, a further launch (dvc repro -f) runs it again."""
    since = now()
    earlier = set(jobs_named("hpcpipe-fake", since, slurm_project))
    first = start(slurm_project, "wait_for_go")
    job_id = running_job(slurm_project)
    first.kill()  # as an SSH drop: no chance to cancel
    first.communicate()
    let_go(slurm_project)  # the job ends while no launcher watches it
    wait_for(lambda: squeue_state(job_id) in ("", "COMPLETED"), timeout=300)
    assert sacct_row(job_id, timeout_s=60)[0] == "COMPLETED"
    assert (slurm_project / "out" / "result.txt").read_text() == "done"
    second = start(slurm_project, "wait_for_go")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert f"job {job_id} finished while no launcher was watching it" in err and "adopted" in err
    assert [j for j in jobs_named("hpcpipe-fake", since, slurm_project) if j not in earlier] == [job_id]
    third = start(slurm_project, "write_outputs")  # another function: another stage content
    _, err = third.communicate(timeout=300)
    assert third.returncode == 0 and "adopted" not in err, err


def test_a_signal_between_sbatch_and_watching_cancels_the_job(slurm_project: Path, tmp_path: Path):
    """Point 2: Ctrl-C reaches the launcher while sbatch is answering (the shim sends it to
    its parent, the launcher, then lets the real sbatch submit). The job is in the ledger,
    then cancelled; exit 130, no traceback."""
    shims = shim(tmp_path / "shims", "sbatch", 'kill -INT "$PPID"\nexec "$REAL" "$@"\n')
    driver = start(slurm_project, "sleep_then_write", shims=shims)
    _, err = driver.communicate(timeout=120)
    job_id = ledger_job(slurm_project)
    assert driver.returncode == 130, err
    assert job_id and f"cancelled job {job_id}" in err
    assert "Traceback" not in err
    wait_for(lambda: sacct_row(job_id)[0].startswith("CANCELLED"), timeout=60)


def test_a_second_ctrl_c_while_cancelling_does_not_break_the_cancel(slurm_project: Path, tmp_path: Path):
    shims = shim(tmp_path / "shims", "scancel", 'kill -INT "$PPID"\nsleep 1\nexec "$REAL" "$@"\n')
    driver = start(slurm_project, "sleep_then_write", shims=shims)
    wait_for(lambda: (slurm_project / "job.pid").exists(), timeout=120)
    job_id = ledger_job(slurm_project)
    driver.send_signal(signal.SIGINT)
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == 130, err
    assert "already cancelling" in err and f"cancelled job {job_id}" in err
    assert "Traceback" not in err
    wait_for(lambda: sacct_row(job_id)[0].startswith("CANCELLED"), timeout=60)


def test_a_cancel_that_slurm_refuses_is_said_and_never_called_cancelled(slurm_project: Path, tmp_path: Path):
    refuse = "echo 'scancel: error: Kill job error on job id $1: Access/permission denied' >&2\nexit 1\n"
    shims = shim(tmp_path / "shims", "scancel", refuse)
    driver = start(slurm_project, "sleep_then_write", shims=shims)
    wait_for(lambda: (slurm_project / "job.pid").exists(), timeout=120)
    job_id = ledger_job(slurm_project)
    try:
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=60)
        assert driver.returncode not in (0, 130), err
        assert "Slurm refused to cancel" in err and "permission denied" in err
        assert f"scancel {job_id}" in err and "cancelled job" not in err
        assert squeue_state(job_id) == "RUNNING"
    finally:
        cleanup(job_id)


def test_a_submission_slurm_refuses_is_one_line_and_queues_nothing(slurm_project: Path, tmp_path: Path):
    """sbatch fails as it does with slurmctld down (its own message, exit 1): the launcher
    says the scheduler's reason in one line, exits 1, and records no job."""
    refuse = (
        "echo 'sbatch: error: Batch job submission failed: Unable to contact slurm controller "
        "(connect failure)' >&2\nexit 1\n"
    )
    driver = start(slurm_project, "sleep_then_write", shims=shim(tmp_path / "shims", "sbatch", refuse))
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 1, err
    assert "Traceback" not in err and err.count("Unable to contact slurm controller") == 1, err
    assert "refused the job, nothing was queued" in err
    assert ledger_job(slurm_project) is None


def test_a_ledger_that_cannot_be_written_cancels_the_job_it_would_record(slurm_project: Path):
    """A real write failure: the ledger entry's path is a directory, so the rename fails."""
    (slurm_project / ".hpcpipe" / "jobs" / "ledger" / "fake.json").mkdir(parents=True)
    driver = start(slurm_project, "sleep_then_write")
    _, err = driver.communicate(timeout=120)
    assert driver.returncode == 1, err
    assert "Traceback" not in err
    job_id = re.search(r"cannot record job (\d+) ", err).group(1)
    assert f"cancelled job {job_id} rather than leave it running untracked" in err
    wait_for(lambda: sacct_row(job_id)[0].startswith("CANCELLED"), timeout=60)


def test_a_broken_stdout_cancels_the_job_without_a_traceback(slurm_project: Path):
    driver = start(slurm_project, "chatter")
    wait_for(lambda: (slurm_project / "job.pid").exists(), timeout=120)
    job_id = ledger_job(slurm_project)
    driver.stdout.close()  # `dvc repro | head`: nobody reads the launcher's stdout any more
    err = driver.stderr.read()
    driver.wait(timeout=60)
    assert driver.returncode == 1, err
    assert "BrokenPipeError" in err and f"cancelled job {job_id}" in err
    assert "Traceback" not in err and "Exception ignored" not in err
    wait_for(lambda: sacct_row(job_id)[0].startswith("CANCELLED"), timeout=60)


def test_two_launchers_of_one_stage_share_one_job(slurm_project: Path, tmp_path: Path):
    """Point 3: two terminals start the same stage at once: one job, both exit 0."""
    since = now()
    earlier = set(jobs_named("hpcpipe-fake", since, slurm_project))
    add_fake_stage(slurm_project, "wait_for_go")  # dvc.yaml written once, before both start
    logs = [tmp_path / f"launcher-{i}.err" for i in range(2)]
    both = [start_logged(slurm_project, "wait_for_go", log, declare=False) for log in logs]

    def settled() -> bool:  # one reattached (so both watch the job), or one ended
        return any("reattached" in log.read_text() for log in logs) or any(p.poll() is not None for p in both)

    wait_for(settled, timeout=180)
    let_go(slurm_project)
    for p in both:
        p.communicate(timeout=300)
    errs = [log.read_text() for log in logs]
    assert [p.returncode for p in both] == [0, 0], errs
    # in the database, which jobs_named reads (slurmdbd records a job a moment after its end)
    assert sacct_row(ledger_job(slurm_project), timeout_s=60)[0] == "COMPLETED"
    new = [j for j in jobs_named("hpcpipe-fake", since, slurm_project) if j not in earlier]
    assert len(new) == 1, (new, errs)
    assert sum(f"reattached to job {new[0]}" in err for err in errs) == 1, errs


def test_a_requeue_is_said_with_its_cause_and_attempt(slurm_project: Path):
    """Point 14: `scontrol requeue` sends the running job back to the queue; the launcher
    says so in one line, then follows the second attempt to the end."""
    driver = start(slurm_project, "wait_for_go")
    job_id = running_job(slurm_project)
    wait_for(lambda: (slurm_project / "job.pid").exists(), timeout=60)
    first_attempt = int((slurm_project / "job.pid").read_text())
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    # the second attempt may finish at once; the first must not (its process gone first)
    wait_for(lambda: not pid_alive(first_attempt), timeout=60, what="the first attempt's process to end")
    let_go(slurm_project)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    said = [line for line in err.splitlines() if "requeued by Slurm" in line]
    assert len(said) == 1, err
    assert f"job {job_id} requeued by Slurm (requeued" in said[0] and "attempt 2" in said[0]


def test_dvc_repro_runs_to_the_end_on_a_cluster_without_accounting(
    fake_stage_project: Path, tmp_path_factory
):
    """Point 4: no slurmdbd (sacct fails): the final state comes from `squeue -t all`, and
    `dvc repro` of a function stage and a command stage after it ends, exit 0."""
    add_fake_stage(fake_stage_project, "write_outputs")
    command = ["python", "fake_stages.py", "hello", "out/hello.json"]
    add_command_stage(fake_stage_project, "hello", command, outs=["out/hello.json"], deps=["out/result.txt"])
    with second_cluster(tmp_path_factory.mktemp("tc"), accounting="0") as conf:
        env = {**os.environ, "SLURM_CONF": str(conf), "HPCPIPE_CLUSTER": "testcluster"}
        assert subprocess.run(["sacct", "-n"], env=env, capture_output=True).returncode != 0
        repro = subprocess.run(
            ["dvc", "repro", "hello"],
            cwd=fake_stage_project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert repro.returncode == 0, repro.stdout + repro.stderr
    done = re.findall(r"hpcpipe: (\w+): job \d+ COMPLETED in", repro.stderr)
    assert done == ["fake", "hello"], repro.stderr
    assert (fake_stage_project / "out" / "hello.json").exists()
