"""The launcher's fault handling piece by piece (issue 13): adoption, signals held
during a submission, Slurm without accounting, and a local job's identity (its claims:
test_claim.py).

Real processes, files and signals. Slurm's answers (squeue/sacct without accounting, or
not answering) come from shims on PATH printing what Slurm prints in those cases; the
same paths run against the real test cluster in tests/integration/test_slurm_faults.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hpcpipe.files import write_json_atomically
from hpcpipe.launch import completion, slurm_state, watch
from hpcpipe.launch.executors import LocalBackend, local_controller_alive
from hpcpipe.launch.interrupts import Interrupted, signals_held
from hpcpipe.launch.ledger import Entry
from hpcpipe.queue_cache import current_user


# ------------------------------------------------------------------ adoption
def _entry(tmp_path: Path, **changes: object) -> Entry:
    fields = dict(
        stage="train",
        job_id="77",
        executor="slurm",
        fingerprint="fp1",
        folder=str(tmp_path / "jobs"),
        stdout="",
        stderr="",
        submitted_at=time.time(),
    )
    return Entry(**{**fields, **changes})


def test_a_finished_job_is_adoptable_only_while_its_outputs_are_as_it_left_them(tmp_path: Path):
    root = tmp_path / "project"
    (root / "out").mkdir(parents=True)
    (root / "out" / "model.txt").write_text("weights")
    entry = _entry(tmp_path)
    assert not completion.adoptable(entry, "fp1", root, ["out/model.txt"])  # no stamp: never finished
    record = {"fingerprint": "fp1", "outputs": completion.outputs_signature(root, ["out/model.txt"])}
    write_json_atomically(completion.stamp_path(Path(entry.folder), "77"), record)
    assert completion.adoptable(entry, "fp1", root, ["out/model.txt"])
    assert not completion.adoptable(entry, "fp2", root, ["out/model.txt"])  # the stage changed since
    assert not completion.adoptable(_entry(tmp_path, reported=True), "fp1", root, ["out/model.txt"])
    (root / "out" / "model.txt").write_text("weights, edited")  # someone touched the output
    assert not completion.adoptable(entry, "fp1", root, ["out/model.txt"])


# ------------------------------------------------------------------ signals
def test_a_signal_during_a_submission_is_raised_once_the_submission_is_done():
    for block in (True, False):
        steps: list[str] = []
        with pytest.raises(Interrupted) as stop, signals_held(block=block):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
            steps.append("job in the ledger")
        assert steps == ["job in the ledger"]
        assert stop.value.exit_status == 130
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ------------------------------------------------------------------ Slurm without accounting
ME = current_user()


def _slurm_shims(folder: Path, squeue: str, sacct: str) -> Path:
    folder.mkdir(exist_ok=True)
    for name, body in (("squeue", squeue), ("sacct", sacct)):
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return folder


def test_squeues_final_state_is_used_when_sacct_fails(tmp_path: Path, monkeypatch):
    no_dbd = "echo 'sacct: error: Problem talking to the database: Connection refused' >&2; exit 1"
    shims = _slurm_shims(tmp_path / "a", f"echo '42|{ME}|FAILED|NonZeroExitCode|node1|0:07|0|'", no_dbd)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    assert slurm_state.query("42") == slurm_state.JobState("FAILED", "NonZeroExitCode", "node1", "0:07")


def test_a_job_slurm_forgot_is_told_from_one_slurm_does_not_answer(tmp_path: Path, monkeypatch):
    forgot = "exit 0"  # squeue lists this user's jobs: not this one
    silent = "echo 'slurm_load_jobs error: Unable to contact slurm controller (connect failure)' >&2; exit 1"
    sacct_none = "echo 'sacct: error: Slurmdbd is not running' >&2; exit 1"
    for squeue, reason in ((forgot, slurm_state.NO_RECORD), (silent, slurm_state.UNREACHABLE)):
        shims = _slurm_shims(tmp_path / reason.replace(" ", "-"), squeue, sacct_none)
        monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
        assert slurm_state.query("42") == slurm_state.JobState("UNKNOWN", reason=reason)


def test_without_slurm_the_result_file_tells_and_else_the_job_is_lost_after_a_limit(tmp_path, monkeypatch):
    import submitit.core.utils as sub

    shims = _slurm_shims(tmp_path / "s", "exit 0", "exit 1")  # squeue forgot it; no accounting
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    result = tmp_path / "42_0_result.pkl"
    job = SimpleNamespace(job_id="42", paths=SimpleNamespace(result_pickle=result))
    watcher = watch.SlurmWatch(job, interval_s=0)
    assert watcher.poll() == ("UNKNOWN (no record)", False)
    monkeypatch.setattr(watch, "NO_RECORD_LIMIT_S", 0.0)
    time.sleep(0.01)
    described, finished = watcher.poll()
    assert finished and described.startswith("LOST (no record for 0 s")
    sub.cloudpickle_dump(("success", {"ok": 1}), result)
    assert watch.SlurmWatch(job).poll() == ("COMPLETED", True)
    fresh = watch.SlurmWatch(job)
    fresh.poll()
    assert fresh.outcome().ok


# ------------------------------------------------------------------ a local job's identity
def test_a_reused_pid_is_never_taken_for_a_local_job_or_signalled(tmp_path: Path):
    """The pid of a finished local job, now someone else's process: not RUNNING, not killed."""
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        folder = tmp_path / "jobs"
        folder.mkdir()
        assert not local_controller_alive(str(stranger.pid))
        assert LocalBackend().state(str(stranger.pid), folder).state == "CANCELLED"
        LocalBackend().cancel([str(stranger.pid)])
        time.sleep(0.2)
        assert stranger.poll() is None  # still running: it was not signalled
    finally:
        stranger.kill()
        stranger.wait()


def test_a_live_local_job_is_recognised_by_its_controller(tmp_path: Path):
    import submitit

    executor = submitit.LocalExecutor(folder=tmp_path / "jobs")
    executor.update_parameters(timeout_min=2)
    job = executor.submit(time.sleep, 30)
    try:
        folder = tmp_path / "jobs"
        assert local_controller_alive(job.job_id, folder)
        assert not local_controller_alive(job.job_id, tmp_path / "elsewhere")
        assert LocalBackend().state(job.job_id, folder).state == "RUNNING"
        LocalBackend().cancel([job.job_id])
        deadline = time.monotonic() + 30
        while local_controller_alive(job.job_id) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not local_controller_alive(job.job_id)
    finally:
        job.cancel()


def test_the_end_is_seen_from_the_result_file_and_slurm_is_asked_at_most_every_interval(
    tmp_path, monkeypatch
):
    """Issue 16.1: polled every tick, the watcher stats the result file each time and asks
    Slurm (here a shim that counts its calls) only once per interval."""
    import submitit.core.utils as sub

    calls = tmp_path / "calls"
    running = f"echo x >> {calls}; echo '42|{ME}|RUNNING|None|node1|0:07|0|'"
    shims = _slurm_shims(tmp_path / "s", running, f"echo x >> {calls}; exit 1")
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    result = tmp_path / "42_0_result.pkl"
    watcher = watch.SlurmWatch(
        SimpleNamespace(job_id="42", paths=SimpleNamespace(result_pickle=result)), 3600
    )
    for _ in range(5):
        assert watcher.poll() == ("RUNNING on node1", False)
    assert len(calls.read_text().split()) == 1  # one squeue for five polls
    # an attempt killed to be requeued writes a failure first: that is not the end, but
    # Slurm is asked at once (issue 16.2: a cancel or a kill on the node is seen in seconds)
    sub.cloudpickle_dump(("error", "CommandFailed: command exited with status 143"), result)
    assert watcher.poll() == ("RUNNING on node1", False)
    assert len(calls.read_text().split()) == 2
    assert watcher.poll() == ("RUNNING on node1", False)  # the same failure: not asked again at once
    assert len(calls.read_text().split()) == 2
    sub.cloudpickle_dump(("success", {}), result)
    assert watcher.poll() == ("COMPLETED", True)  # at once, without asking Slurm
    assert len(calls.read_text().split()) == 2


def test_a_cancel_that_times_out_or_is_refused_is_said_never_done(tmp_path: Path, monkeypatch):
    """Issue 13.2: scancel hanging (slurmctld down) or refusing is reported as such; the
    second Ctrl-C path and the real refusal are in tests/integration/test_slurm_faults.py."""
    from hpcpipe.launch import launcher

    folder = tmp_path / "shims"
    folder.mkdir()
    scancel = folder / "scancel"
    scancel.write_text("#!/bin/sh\nsleep 5\n")
    scancel.chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(watch, "CANCEL_TIMEOUT_S", 0.5)
    job = SimpleNamespace(job_id="42", paths=SimpleNamespace(result_pickle=tmp_path / "none.pkl"))
    assert launcher._cancel(watch.SlurmWatch(job)) == "cancelling job 42 timed out (Slurm not answering)"
    refusal = "scancel: error: Kill job error on job id 42: Access/permission denied"
    scancel.write_text(f"#!/bin/sh\necho '{refusal}' >&2\nexit 1\n")
    assert launcher._cancel(watch.SlurmWatch(job)) == f"Slurm refused to cancel job 42: {refusal}"


def test_a_job_that_can_be_neither_recorded_nor_cancelled_says_what_to_do(tmp_path: Path):
    """The ledger cannot be written (its entry's path is a directory) and the cancel fails
    too: the error says the job may still run and how to find and cancel it, and says the
    job was not cancelled, so a sweep keeps the workspaces such a job would run in. The
    cancel's failure is given, not caused: the real scancel refusal is in test_slurm_faults."""
    from hpcpipe.config import load_profile
    from hpcpipe.launch.submission import Unrecorded, ledger_for, record_or_cancel

    profile = load_profile("local", tmp_path)
    (ledger_for(tmp_path, profile).folder / "sweep-s.json").mkdir(parents=True)
    refused = "Slurm refused to cancel job 77: scancel: error: Access/permission denied"
    with pytest.raises(Unrecorded) as caught:
        record_or_cancel(tmp_path, profile, _entry(tmp_path, stage="sweep-s", job_id="77_0"), lambda: refused)
    assert not caught.value.cancelled
    message = str(caught.value)
    assert message.startswith("sweep-s: cannot record job 77 in ") and f", and {refused}: " in message
    assert message.endswith("it may still run; check `squeue -j 77` and `scancel 77`")
    with pytest.raises(Unrecorded) as caught:
        record_or_cancel(tmp_path, profile, _entry(tmp_path, stage="sweep-s", job_id="77_0"), lambda: None)
    assert caught.value.cancelled
    assert str(caught.value).endswith("; cancelled job 77 rather than leave it running untracked")


def test_a_submission_that_cannot_start_is_one_line_not_a_traceback(tmp_path: Path, capsys):
    """What submitit can raise before anything is queued: sbatch's refusal, no sbatch on
    PATH, a job folder it cannot write its pickles to. Each is one line, its last line,
    and what was printed meanwhile is not said twice."""
    import sys

    from submitit.core.utils import FailedJobError

    from hpcpipe.launch.submission import SubmitRefused, refusal_in_one_line

    raised = [
        FailedJobError("sbatch: error: Batch job submission failed: Invalid account"),
        FileNotFoundError(2, "No such file or directory", "sbatch"),
        PermissionError(13, "Permission denied", str(tmp_path / "jobs" / "x_submitted.pkl")),
    ]
    for err in raised:
        with pytest.raises(SubmitRefused) as caught, refusal_in_one_line():
            print("submitit's own copy of the complaint", file=sys.stderr)
            raise err
        assert str(caught.value) == str(err).splitlines()[-1]
        assert capsys.readouterr().err == ""  # the caller says it once
