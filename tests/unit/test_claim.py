"""The O_EXCL claim (``hpcpipe.claim``) that keeps two launchers from submitting one stage
and two ``hpcpipe sync`` from uploading one run twice. Real files and processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from hpcpipe import claim

LAUNCH_STALE_S = 120.0  # what the launcher uses (launcher.CLAIM_STALE_S); any length shows the rule


def test_one_claim_at_a_time_and_released_only_by_its_owner(tmp_path):
    path = tmp_path / "sync.claim"
    first = claim.take(path, stale_after_s=3600)
    assert first is not None
    assert claim.take(path, stale_after_s=3600) is None  # held by a live process (this one)
    info = json.loads(first.path.read_text())
    assert (info["host"], info["pid"]) == (socket.gethostname(), os.getpid())
    claim.release(first)
    second = claim.take(path, stale_after_s=3600)
    assert second is not None
    claim.release(first)  # a stale handle never removes the claim of another
    assert second.path.exists()
    claim.release(second)
    assert not second.path.exists()


def write_claim(path: Path, **info: object) -> None:
    path.write_text(json.dumps({"token": "other", **info}))


def test_a_claim_of_a_dead_process_here_is_taken_over(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    path = tmp_path / "sync.claim"
    write_claim(path, host=socket.gethostname(), pid=int(done.stdout), time=time.time())
    taken = claim.take(path, stale_after_s=3600)
    assert taken is not None and json.loads(taken.path.read_text())["token"] == taken.token
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # nothing set aside is left


def test_a_claim_whose_pid_now_belongs_to_a_later_process_is_taken_over(tmp_path):
    """The pid is this test's own (alive), but the claim was written before it started."""
    path = tmp_path / "sync.claim"
    started = psutil.Process().create_time()
    write_claim(path, host=socket.gethostname(), pid=os.getpid(), time=started - 60)
    assert claim.is_stale(path, stale_after_s=3600)
    write_claim(path, host=socket.gethostname(), pid=os.getpid(), time=time.time())
    assert not claim.is_stale(path, stale_after_s=3600)


def test_another_hosts_claim_is_respected_until_it_is_too_old(tmp_path):
    path = tmp_path / "sync.claim"
    write_claim(path, host="login02", pid=1, time=time.time())
    assert claim.take(path, stale_after_s=3600) is None
    write_claim(path, host="login02", pid=1, time=time.time() - 7200)
    assert claim.take(path, stale_after_s=3600) is not None


def test_a_torn_claim_is_taken_over_once_its_writer_cannot_be_writing_it(tmp_path):
    path = tmp_path / "sync.claim"
    path.write_text('{"host": "log')  # its writer died mid-write, or is writing it right now
    assert claim.take(path, stale_after_s=3600) is None  # created a moment ago: being written
    old = time.time() - claim.TORN_S - 1
    os.utime(path, (old, old))
    assert claim.take(path, stale_after_s=3600) is not None


def test_a_held_claim_makes_the_second_launcher_wait_until_it_is_released(tmp_path: Path):
    path = tmp_path / "train.claim"
    order: list[str] = []
    waited = threading.Event()

    def second() -> None:
        with claim.claimed(path, LAUNCH_STALE_S, on_wait=lambda holder: waited.set()):
            order.append("second")

    with claim.claimed(path, LAUNCH_STALE_S):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        thread = threading.Thread(target=second)
        thread.start()
        assert waited.wait(5)
        time.sleep(0.3)
        order.append("first")
    thread.join(5)
    assert order == ["first", "second"]
    assert not path.exists()


def test_a_claim_left_by_a_dead_launcher_on_this_host_is_taken_over(tmp_path: Path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    path = tmp_path / "train.claim"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "time": time.time()}))
    with claim.claimed(
        path, LAUNCH_STALE_S, on_wait=lambda holder: pytest.fail(f"waited for a dead launcher: {holder}")
    ):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_a_fresh_claim_from_another_host_is_waited_for_and_an_old_one_is_not(tmp_path: Path):
    path = tmp_path / "train.claim"
    path.write_text(json.dumps({"host": "login-other", "pid": 1, "time": time.time()}))
    assert not claim.is_stale(path, LAUNCH_STALE_S)
    path.write_text(json.dumps({"host": "login-other", "pid": 1, "time": time.time() - LAUNCH_STALE_S - 5}))
    assert claim.is_stale(path, LAUNCH_STALE_S)
    path.write_text(json.dumps({"host": "login-other", "pid": 1}))  # no time: its file's age tells
    assert not claim.is_stale(path, LAUNCH_STALE_S)
    old = time.time() - LAUNCH_STALE_S - 5
    os.utime(path, (old, old))
    assert claim.is_stale(path, LAUNCH_STALE_S)
