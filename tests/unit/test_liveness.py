"""``hpcpipe.liveness``: whether a process named by a record still runs. Real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import psutil

from hpcpipe.liveness import pid_alive, running_command
from tests.support.commands import wait_for


def test_a_running_process_is_alive_and_an_ended_one_is_not():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(sleeper.pid)
        # forked at once, its own command line once it has exec'd python
        wait_for(lambda: "time.sleep(60)" in (running_command(sleeper.pid) or ""), timeout=10)
    finally:
        sleeper.kill()
    # killed, not yet reaped: a zombie is not alive
    wait_for(lambda: not pid_alive(sleeper.pid), timeout=10, what="the killed process to be a zombie")
    assert running_command(sleeper.pid) is None
    sleeper.wait()
    assert not pid_alive(sleeper.pid) and running_command(sleeper.pid) is None


def test_a_process_started_after_the_record_only_reuses_its_pid():
    started = psutil.Process().create_time()
    assert pid_alive(os.getpid(), started_by=time.time())
    assert not pid_alive(os.getpid(), started_by=started - 60)
    assert pid_alive(os.getpid(), started_by=None) and pid_alive(os.getpid(), started_by="garbage")


def test_another_users_process_is_alive():
    """pid 1 is root's: signalling it is not permitted, which says it exists."""
    assert pid_alive(1) or os.getuid() == 0


def test_what_is_not_a_pid_is_not_alive():
    assert not any(pid_alive(pid) for pid in (None, "12", 0, -1, True, 2**22 + 1))
