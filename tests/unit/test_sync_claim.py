"""The O_EXCL claim that keeps two ``hpcpipe sync`` from uploading one run twice."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

from hpcpipe.tracking import claim


def test_one_claim_at_a_time_and_released_only_by_its_owner(tmp_path):
    first = claim.take(tmp_path, stale_after_s=3600)
    assert first is not None
    assert claim.take(tmp_path, stale_after_s=3600) is None  # held by a live process (this one)
    info = json.loads(first.path.read_text())
    assert (info["host"], info["pid"]) == (socket.gethostname(), os.getpid())
    claim.release(first)
    second = claim.take(tmp_path, stale_after_s=3600)
    assert second is not None
    claim.release(first)  # a stale handle never removes the claim of another
    assert second.path.exists()
    claim.release(second)
    assert not second.path.exists()


def write_claim(folder, **info):
    (folder / claim.CLAIM_FILE).write_text(json.dumps({"token": "other", **info}))


def test_a_claim_of_a_dead_process_here_is_taken_over(tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    write_claim(tmp_path, host=socket.gethostname(), pid=int(done.stdout), time=time.time())
    taken = claim.take(tmp_path, stale_after_s=3600)
    assert taken is not None and json.loads(taken.path.read_text())["token"] == taken.token
    assert [p.name for p in tmp_path.iterdir()] == [claim.CLAIM_FILE]  # nothing set aside is left


def test_another_hosts_claim_is_respected_until_it_is_too_old(tmp_path):
    write_claim(tmp_path, host="login02", pid=1, time=time.time())
    assert claim.take(tmp_path, stale_after_s=3600) is None
    write_claim(tmp_path, host="login02", pid=1, time=time.time() - 7200)
    assert claim.take(tmp_path, stale_after_s=3600) is not None


def test_a_torn_claim_is_taken_over(tmp_path):
    (tmp_path / claim.CLAIM_FILE).write_text('{"host": "log')  # its writer died mid-write
    assert claim.take(tmp_path, stale_after_s=3600) is not None
