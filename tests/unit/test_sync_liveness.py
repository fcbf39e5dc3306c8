"""When ``hpcpipe sync`` may upload a run: never while its job may still write it.

The Slurm side here is squeue's answer as data (``SlurmQueue`` holds one pass's
snapshot); tests/integration/test_wandb_sync.py asks the real test cluster.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from hpcpipe.tracking.run import JOB_RECORD, LIVE_MARKER, mark_live
from hpcpipe.tracking.slurm_queue import job_name, parse_queue
from hpcpipe.tracking.sync import SlurmQueue, liveness

ARRAY_TASK = {"SLURM_JOB_ID": "5120", "SLURM_ARRAY_JOB_ID": "5117", "SLURM_ARRAY_TASK_ID": "3"}


def test_an_array_task_is_named_as_squeue_names_it():
    assert job_name(ARRAY_TASK) == "5117_3"  # not its own SLURM_JOB_ID, which squeue prints as 5117_3
    assert job_name({"SLURM_JOB_ID": "77"}) == "77"
    assert job_name({}) is None
    assert parse_queue("5117_3\n77\n\n 5117_4 \n") == {"5117_3", "77", "5117_4"}


def queue(user: str, *jobs: str) -> SlurmQueue:
    """squeue's answer for ``user`` in this pass (None: squeue did not answer)."""
    return SlurmQueue(asked={user: frozenset(jobs)})


@pytest.fixture
def run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A run folder marked by array task 5117_3 of user alice, on another host."""
    for key, value in {**ARRAY_TASK, "SLURM_JOB_USER": "alice"}.items():
        monkeypatch.setenv(key, value)
    folder = tmp_path / "train-0123"
    folder.mkdir()
    mark_live(folder)
    record = json.loads((folder / LIVE_MARKER).read_text())
    assert (record["slurm_job"], record["user"]) == ("5117_3", "alice")
    record["host"] = "nid001"  # the compute node, not this login node
    (folder / LIVE_MARKER).write_text(json.dumps(record))
    return folder


def test_a_run_is_live_while_slurm_has_its_array_task_and_not_after(run_folder):
    assert liveness(run_folder, queue("alice", "5117_3", "5117_4")) == "Slurm still has job 5117_3"
    # the task was killed (scancel, time limit): its marker stayed, Slurm no longer has it
    assert liveness(run_folder, queue("alice", "5117_4", "5120")) is None


def test_a_finished_attempt_without_its_marker_waits_for_a_requeued_job(run_folder):
    """The attempt ended (the marker is gone) but Slurm queued the job again."""
    (run_folder / LIVE_MARKER).unlink()
    assert liveness(run_folder, queue("alice", "5117_3")) == "Slurm still has job 5117_3"
    assert liveness(run_folder, queue("alice")) is None


def test_when_slurm_does_not_answer_only_a_marked_run_waits(run_folder):
    silent = SlurmQueue(asked={"alice": None})
    assert liveness(run_folder, silent) == "Slurm did not answer"
    (run_folder / LIVE_MARKER).unlink()
    assert liveness(run_folder, silent) is None


def test_outside_slurm_a_marker_is_live_while_its_process_runs(tmp_path, monkeypatch):
    for key in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(key, raising=False)
    folder = tmp_path / "run"
    folder.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"pid": sleeper.pid, "host": socket.gethostname(), "slurm_job": None}
        (folder / LIVE_MARKER).write_text(json.dumps(record))
        (folder / JOB_RECORD).write_text(json.dumps(record))
        assert liveness(folder, SlurmQueue()) == "its job is still running"
    finally:
        sleeper.kill()
        sleeper.wait()
    assert liveness(folder, SlurmQueue()) is None
    record["host"] = "elsewhere"
    (folder / LIVE_MARKER).write_text(json.dumps(record))
    assert liveness(folder, SlurmQueue()) == "its job may still be running on elsewhere"
