"""The project's shared squeue answer (issue 16.2): its age, one refresher at a time,
files it must not trust, and only this user's jobs.

Real files, processes and claims. squeue itself is the one stand-in: a shim on PATH that
counts its calls and prints what Slurm 22.05 prints for ``queue_cache.squeue_command``,
with a line of another user (the test cluster runs every job as one user, so that case
cannot happen there); tests/integration/test_slurm_budget.py asks the real one.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcpipe.queue_cache import CACHE_DIR, QueueCache, current_user, parse

ME = current_user()
SQUEUE_LINES = (
    f"51|{ME}|RUNNING|None|nid001|1:02|0|",
    f"52_3|{ME}|PENDING|Priority||0:00|1|",
    f"53|{ME}|COMPLETED|None|nid002|0:40|0|",
    "54|alice|RUNNING|None|nid003|9:00|0|",  # another user's job
)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project" / ".dvc").mkdir(parents=True)
    return tmp_path / "project"


def fake_squeue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str = "", delay_s: float = 0.0
) -> Path:
    """squeue on PATH printing ``SQUEUE_LINES`` (or running ``body``); returns its call log."""
    shims = tmp_path / "shims"
    shims.mkdir(exist_ok=True)
    calls = tmp_path / "squeue-calls"
    lines = "\n".join(SQUEUE_LINES)
    body = body or f"cat <<'EOF'\n{lines}\nEOF"
    (shims / "squeue").write_text(f'#!/bin/sh\necho "$*" >> {calls}\nsleep {delay_s}\n{body}\n')
    (shims / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    return calls


def count(calls: Path) -> int:
    return len(calls.read_text().splitlines()) if calls.exists() else 0


def test_an_answer_serves_every_caller_while_young_and_is_asked_again_when_old(
    project, tmp_path, monkeypatch
):
    calls = fake_squeue(tmp_path, monkeypatch)
    first = QueueCache(project).answer(max_age_s=60)
    again = QueueCache(project).answer(max_age_s=60)  # another watcher of the project
    assert count(calls) == 1 and again == first
    assert first.jobs is not None and first.jobs["52_3"].restarts == 1
    assert f"-u {ME}" in calls.read_text() and "-t all" in calls.read_text()
    # a job submitted after that answer was asked cannot be in it: a newer one is asked
    assert QueueCache(project).answer(60, newer_than=time.time()).asked_at > first.asked_at
    assert count(calls) == 2
    # aged past what the caller accepts: asked again
    path = project / CACHE_DIR / f"squeue-{ME}.json"
    data = json.loads(path.read_text())
    data["asked_at"] -= 61
    path.write_text(json.dumps(data))
    assert QueueCache(project).answer(max_age_s=60).asked_at > data["asked_at"] + 60
    assert count(calls) == 3


def test_another_users_jobs_are_absent(project, tmp_path, monkeypatch):
    fake_squeue(tmp_path, monkeypatch)
    answer = QueueCache(project).answer()
    assert sorted(answer.jobs) == ["51", "52_3", "53"]
    assert answer.still_has() == {"51", "52_3"}  # 53 ended
    assert parse("\n".join(SQUEUE_LINES), "alice").keys() == {"54"}
    # a file under alice's name that holds my answer is no answer for alice
    mine = project / CACHE_DIR / f"squeue-{ME}.json"
    (project / CACHE_DIR / "squeue-alice.json").write_text(mine.read_text())
    assert QueueCache(project, "alice").read() is None


@pytest.mark.parametrize(
    "content",
    [
        "{",  # torn
        "not json at all",
        json.dumps({"user": ME, "asked_at": "soon", "jobs": {}}),
        json.dumps({"user": ME, "asked_at": 0, "jobs": {"51": "RUNNING|only three|fields"}}),
        json.dumps({"user": ME, "asked_at": time.time() + 3600, "jobs": {}}),  # a clock set back
    ],
)
def test_a_file_that_cannot_be_trusted_is_no_answer_and_is_replaced(project, tmp_path, monkeypatch, content):
    calls = fake_squeue(tmp_path, monkeypatch)
    path = project / CACHE_DIR / f"squeue-{ME}.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    answer = QueueCache(project).answer(max_age_s=3600)
    assert count(calls) == 1 and answer.jobs is not None and "51" in answer.jobs
    assert QueueCache(project).read() == answer


def test_one_process_asks_while_the_others_wait_for_its_answer(project, tmp_path, monkeypatch):
    calls = fake_squeue(tmp_path, monkeypatch, delay_s=1.0)
    code = (
        "import sys; from pathlib import Path; from hpcpipe.queue_cache import QueueCache; "
        "print(QueueCache(Path(sys.argv[1])).answer(60).asked_at)"
    )
    callers = [
        subprocess.Popen([sys.executable, "-c", code, str(project)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    answers = {caller.communicate(timeout=60)[0].strip() for caller in callers}
    assert all(caller.returncode == 0 for caller in callers)
    assert count(calls) == 1 and len(answers) == 1


def test_a_failed_squeue_is_shared_too(project, tmp_path, monkeypatch):
    refusal = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"
    calls = fake_squeue(tmp_path, monkeypatch, body=f"echo '{refusal}' >&2; exit 1")
    answer = QueueCache(project).answer()
    assert answer.jobs is None and answer.error == refusal and answer.still_has() is None
    assert QueueCache(project).answer() == answer and count(calls) == 1


def test_a_claim_left_by_a_dead_refresher_is_taken_over(project, tmp_path, monkeypatch):
    calls = fake_squeue(tmp_path, monkeypatch)
    dead = subprocess.Popen(["true"])
    dead.wait()
    folder = project / CACHE_DIR
    folder.mkdir(parents=True)
    record = {"host": socket.gethostname(), "pid": dead.pid, "time": time.time(), "token": "x"}
    (folder / f"squeue-{ME}.claim").write_text(json.dumps(record))
    assert QueueCache(project).answer().jobs is not None and count(calls) == 1
    assert not (folder / f"squeue-{ME}.claim").exists()


def test_outside_a_project_every_answer_is_asked(tmp_path, monkeypatch):
    calls = fake_squeue(tmp_path, monkeypatch)
    folder = tmp_path / "scratch" / "jobs"
    folder.mkdir(parents=True)
    cache = QueueCache.for_folder(folder)
    assert cache.path is None
    cache.answer()
    cache.answer()
    assert count(calls) == 2
