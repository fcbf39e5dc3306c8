"""The job side's check that it is being ended (SIGTERM), before it publishes (issue 13, point 2).

Real signals to this process; the handler that was there before (submitit's, which only
logs) is stood in for by one that records. The real sequence on Slurm (scancel, then the
stage finishing inside KillWait) is tests/integration/test_slurm_cancel_publish.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hpcpipe.launch.termination import Terminated, TerminationWatch
from hpcpipe.liveness import pid_alive
from tests.support.commands import wait_for


def test_sigterm_is_noticed_said_and_passed_on_and_usr2_is_left_alone(capfd):
    seen: list[int] = []
    submitit_like = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    usr2 = signal.getsignal(signal.SIGUSR2)
    try:
        with TerminationWatch("stage s") as watch:
            assert signal.getsignal(signal.SIGUSR2) is usr2  # submitit's checkpoint-and-requeue
            watch.check()  # nothing yet
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert watch.received
            with pytest.raises(Terminated, match=r"stage s got SIGTERM .*outputs not published"):
                watch.check()
        assert seen == [signal.SIGTERM, signal.SIGTERM]  # the handler before it ran each time
        err = capfd.readouterr().err
        assert err.count("SIGTERM received") == 1  # said once, in one line
        os.kill(os.getpid(), signal.SIGTERM)
        assert len(seen) == 3  # the previous handler is back after the watch
    finally:
        signal.signal(signal.SIGTERM, submitit_like)


def test_without_a_handler_before_it_sigterm_still_ends_the_process():
    code = (
        "import os, signal, time\n"
        "from hpcpipe.launch.termination import TerminationWatch\n"
        "with TerminationWatch():\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(5)\n"
        "print('survived')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGTERM, proc.stdout + proc.stderr
    assert "survived" not in proc.stdout


def test_outside_the_main_thread_the_watch_is_inert():
    handler = signal.getsignal(signal.SIGTERM)
    results: list[bool] = []

    def in_thread() -> None:
        with TerminationWatch() as watch:
            results.append(signal.getsignal(signal.SIGTERM) is handler)
            watch.check()

    thread = threading.Thread(target=in_thread)
    thread.start()
    thread.join()
    assert results == [True]


# --------------------------------------------------------------------------- command stages
SAVE_AND_EXIT_0 = """
import os, signal, sys, time
from pathlib import Path
def save(*_):
    (Path(os.environ["HPCPIPE_CHECKPOINT_DIR"]) / "state").write_text("saved")
    Path("out.txt").write_text("written after SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, save)
Path("ready").write_text(str(os.getpid()))
time.sleep(60)
"""


def written(path: Path) -> str:
    """The text of ``path`` once a process has written it."""
    wait_for(lambda: path.exists() and path.read_text(), timeout=30, what=str(path))
    return path.read_text()


def test_a_command_stage_told_to_stop_is_not_done_and_keeps_its_checkpoint(tmp_path, monkeypatch):
    """scancel: Slurm sends SIGTERM to every process of the job, the job process (whose
    handler before ours, submitit's, only logs: recorded here) and the command, which
    saves and exits 0. The job must not call that a success, nor remove the checkpoint."""
    from hpcpipe.launch.command_job import CommandJob, CommandRunner

    monkeypatch.chdir(tmp_path)  # the runner chdirs into the project: undone after the test
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    folder = tmp_path / "checkpoint"
    job = CommandJob(
        argv=(sys.executable, "-c", SAVE_AND_EXIT_0), workdir=str(tmp_path), stage="s",
        checkpoint_dir=str(folder), outs=("out.txt",),
    )  # fmt: skip

    def scancel() -> None:
        command = int(written(tmp_path / "ready"))
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(command, signal.SIGTERM)

    thread = threading.Thread(target=scancel)
    thread.start()
    try:
        with pytest.raises(Terminated, match="stage s got SIGTERM"):
            CommandRunner()(job)
    finally:
        thread.join()
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM]
    assert (folder / "state").read_text() == "saved"  # kept for the next attempt


INTERRUPTED_JOB = """
import sys
from hpcpipe.launch.command_job import CommandJob, CommandRunner
CommandRunner()(CommandJob(argv=(sys.executable, "-c", sys.argv[1]), workdir=sys.argv[2], stage="s",
                           checkpoint_dir=sys.argv[2] + "/checkpoint"))
"""
SLEEPER = "import os, time; open('ready', 'w').write(str(os.getpid())); time.sleep(120)"


def test_a_command_is_stopped_with_its_job_process(tmp_path):
    """submitit's local executor cancels with SIGINT to the job process: its command must
    not run on as an orphan."""
    job = subprocess.Popen([sys.executable, "-c", INTERRUPTED_JOB, SLEEPER, str(tmp_path)])
    command = int(written(tmp_path / "ready"))
    job.send_signal(signal.SIGINT)
    assert job.wait(timeout=30) != 0
    try:
        wait_for(lambda: not pid_alive(command), timeout=10, what="the command to end with its job process")
    finally:
        if pid_alive(command):
            os.kill(command, signal.SIGKILL)
