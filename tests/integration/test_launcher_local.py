"""The launcher on submitit's real local executor: each job is a real subprocess.

The stage functions are tests/support/fake_stages.py (no torch), because these
tests are about submitting, streaming, publishing and cancelling, not training.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hpcpipe.config import load_params, load_profile
from hpcpipe.launch.launcher import launch
from hpcpipe.stages import StageSpec

PATHS = {"source": "source.txt", "result": "out/result.txt", "report": "out/report"}


def fake_spec(function: str) -> StageSpec:
    return StageSpec("fake", f"fake_stages:{function}", ("train",), ("source",), ("result", "report"))


def run_fake(project: Path, function: str) -> int:
    return launch(
        fake_spec(function),
        load_params(project / "params.yaml"),
        PATHS,
        load_profile("local", project),
        project,
    )


def test_success_streams_the_log_and_publishes(fake_stage_project, capfd):
    assert run_fake(fake_stage_project, "write_outputs") == 0
    out, err = capfd.readouterr()
    assert "read 22 characters" in out
    assert "a line on stderr" in err
    assert "submitted (local: local)" in err and "COMPLETED" in err
    assert (fake_stage_project / "out" / "result.txt").read_text() == "HELLO FROM THE SOURCE\n"


def test_job_folder_is_private(fake_stage_project):
    assert run_fake(fake_stage_project, "write_outputs") == 0
    for folder in (fake_stage_project / ".hpcpipe", fake_stage_project / ".hpcpipe" / "jobs" / "fake"):
        assert folder.stat().st_mode & 0o777 == 0o700


def test_failure_exits_nonzero_with_the_stderr_tail_and_keeps_old_outputs(fake_stage_project, capfd):
    out_dir = fake_stage_project / "out"
    out_dir.mkdir()
    (out_dir / "result.txt").write_text("previous")
    assert run_fake(fake_stage_project, "fail_halfway") == 1
    err = capfd.readouterr().err
    tail = err[err.index("last 20 lines of") :].splitlines()
    quoted = [line for line in tail if line.startswith("  | ")]
    assert len(quoted) == 20
    assert quoted[-1] == "  | RuntimeError: the stage broke on purpose"
    assert "FAILED" in tail[-1] and tail[-1].endswith(
        "RuntimeError: the stage broke on purpose; outputs left as they were"
    )
    assert (out_dir / "result.txt").read_text() == "previous"
    assert sorted(p.name for p in out_dir.iterdir()) == ["result.txt"]


def test_missing_output_is_a_failure(fake_stage_project, capfd):
    assert run_fake(fake_stage_project, "forget_output") == 1
    assert "did not write its output out/report" in capfd.readouterr().err


DRIVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from hpcpipe.config import load_params, load_profile
    from hpcpipe.launch.launcher import launch
    from hpcpipe.stages import StageSpec

    root = Path.cwd()
    spec = StageSpec("fake", "fake_stages:" + sys.argv[1], ("train",), ("source",), ("result", "report"))
    paths = {"source": "source.txt", "result": "out/result.txt", "report": "out/report"}
    code = launch(spec, load_params(root / "params.yaml"), paths, load_profile("local", root), root)
    print("torch imported by launcher:", "torch" in sys.modules)
    sys.exit(code)
    """
)


def start_driver(project: Path, function: str) -> subprocess.Popen:
    (project / "driver.py").write_text(DRIVER)
    return subprocess.Popen(
        [sys.executable, "driver.py", function],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purpose
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def wait_for(predicate, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_the_launcher_cancels_its_job(fake_stage_project, signum, code):
    driver = start_driver(fake_stage_project, "sleep_then_write")
    pid_file = fake_stage_project / "job.pid"
    wait_for(pid_file.exists)
    job_pid = int(pid_file.read_text())
    assert alive(job_pid)
    driver.send_signal(signum)  # the launcher alone, as when dvc repro forwards a signal
    _, err = driver.communicate(timeout=60)
    assert driver.returncode == code, err
    assert "cancelled job" in err
    wait_for(lambda: not alive(job_pid), timeout=15)
    assert not (fake_stage_project / "out" / "result.txt").exists()


def test_the_launcher_process_never_imports_torch(fake_stage_project):
    driver = start_driver(fake_stage_project, "write_outputs")
    out, err = driver.communicate(timeout=120)
    assert driver.returncode == 0, err
    assert "torch imported by launcher: False" in out


def test_status_and_logs_show_the_last_job(fake_stage_project, capsys):
    from hpcpipe.cli import main

    assert run_fake(fake_stage_project, "write_outputs") == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["STAGE", "JOB", "STATE", "NODE", "ELAPSED", "LOG"]
    assert table[1].split()[0] == "fake" and table[1].split()[2] == "COMPLETED"


def test_cancel_all_stops_a_running_local_job(fake_stage_project, capsys):
    from hpcpipe.cli import main

    driver = start_driver(fake_stage_project, "sleep_then_write")
    pid_file = fake_stage_project / "job.pid"
    wait_for(pid_file.exists)
    job_pid = int(pid_file.read_text())
    assert main(["cancel", "--all"]) == 0
    assert "cancelled fake: job" in capsys.readouterr().out
    wait_for(lambda: not alive(job_pid), timeout=15)
    driver.communicate(timeout=60)
    assert driver.returncode == 1  # the launcher saw its job end without a result
    assert not (fake_stage_project / "out" / "result.txt").exists()


def files_containing(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_no_secret_from_the_environment_reaches_the_job_folder(fake_stage_project, monkeypatch):
    secret = "wandb-key-3f9a7c1e5b"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    assert run_fake(fake_stage_project, "write_outputs") == 0
    assert files_containing(fake_stage_project / ".hpcpipe", secret) == []
