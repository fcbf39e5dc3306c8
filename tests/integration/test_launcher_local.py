"""The launcher on submitit's real local executor: each job is a real subprocess.

Each test declares its stage in the temp project's dvc.yaml (tests/support/launch_project.py)
and runs it as a user does: ``hpcpipe run ...`` (in-process through ``main``, or the
``hpcpipe`` command) or ``dvc repro``. Function stages are tests/support/fake_stages.py
(no torch), command stages ``python fake_stages.py COMMAND``, because these tests are
about submitting, streaming, publishing and cancelling, not training.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpcpipe.cli import main
from hpcpipe.launch.dvc_stage import load_stage
from hpcpipe.launch.ledger import Ledger
from hpcpipe.liveness import pid_alive
from tests.support.commands import wait_for
from tests.support.launch_project import (
    add_command_stage,
    add_fake_stage,
    add_stage,
    files_containing,
    quoted,
    start,
)


def run_fake(project: Path, function: str) -> int:
    """`hpcpipe run fake --fn fake_stages:FUNCTION ...`, the stage's cmd in dvc.yaml."""
    return main(add_fake_stage(project, function))


# --------------------------------------------------------------------------- function stages
def test_success_streams_the_log_and_publishes(fake_stage_project, capfd):
    assert run_fake(fake_stage_project, "write_outputs") == 0
    out, err = capfd.readouterr()
    assert "read 22 characters" in out
    assert "a line on stderr" in err
    assert "submitted (local: local)" in err and "COMPLETED" in err
    assert (fake_stage_project / "out" / "result.txt").read_text() == "HELLO FROM THE SOURCE\n"
    summary = json.loads((fake_stage_project / "out" / "report" / "summary.json").read_text())
    assert summary == {"chars": 22, "lr": 1.5}  # params.yaml's train.lr, through the stage's schema


def test_the_terminal_shows_the_stages_output_and_one_line_per_state(fake_stage_project, capfd):
    """submitit's own INFO lines only with -v; the end of the job is one line."""
    assert run_fake(fake_stage_project, "write_outputs") == 0
    out, err = capfd.readouterr()
    ours = [line for line in err.splitlines() if line.startswith("hpcpipe: fake: job")]
    assert ours[-1].split()[-4:-2] == ["COMPLETED", "in"], ours
    assert not any(word in line for line in ours[:-1] for word in ("FINISHED", "COMPLETED")), ours
    assert "submitit INFO" not in out + err and "a line on stderr" in err
    assert main([*add_fake_stage(fake_stage_project, "write_outputs"), "-v"]) == 0
    assert "submitit INFO (" in "".join(capfd.readouterr())


def test_dvc_repro_runs_the_function_stage_once(fake_stage_project):
    add_fake_stage(fake_stage_project, "write_outputs")
    first = subprocess.run(["dvc", "repro", "fake"], cwd=fake_stage_project, capture_output=True, text=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "Running stage 'fake'" in first.stdout and "COMPLETED" in first.stderr
    assert (fake_stage_project / "out" / "result.txt").read_text() == "HELLO FROM THE SOURCE\n"
    again = subprocess.run(["dvc", "repro", "fake"], cwd=fake_stage_project, capture_output=True, text=True)
    assert again.returncode == 0 and "Running stage" not in again.stdout


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
    lines = quoted(err)
    assert len(lines) == 20
    assert lines[-1] == "RuntimeError: the stage broke on purpose"
    assert "FAILED" in tail[-1] and tail[-1].endswith(
        "RuntimeError: the stage broke on purpose; outputs left as they were"
    )
    assert (out_dir / "result.txt").read_text() == "previous"
    assert sorted(p.name for p in out_dir.iterdir()) == ["result.txt"]


def test_missing_output_is_a_failure(fake_stage_project, capfd):
    assert run_fake(fake_stage_project, "forget_output") == 1
    assert "did not write its output out/report" in capfd.readouterr().err


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupting_the_launcher_cancels_its_job(fake_stage_project, signum, code):
    launcher = start(fake_stage_project, "sleep_then_write")
    pid_file = fake_stage_project / "job.pid"
    wait_for(lambda: pid_file.exists() or launcher.poll() is not None)
    assert launcher.poll() is None, launcher.communicate()
    job_pid = int(pid_file.read_text())
    assert pid_alive(job_pid)
    launcher.send_signal(signum)  # the launcher alone, as when dvc repro forwards a signal
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == code, err
    assert "cancelled job" in err
    wait_for(lambda: not pid_alive(job_pid), timeout=15)
    assert not (fake_stage_project / "out" / "result.txt").exists()


def test_ctrl_c_of_an_inline_stage_exits_130_not_failed(fake_stage_project, monkeypatch):
    """Inside an allocation the stage runs in the launcher's own process: Ctrl-C stops it
    as an interruption (130, outputs untouched), not as a failure of the stage."""
    monkeypatch.setenv("HPCPIPE_CLUSTER", "inline")
    launcher = start(fake_stage_project, "sleep_then_write")
    wait_for(lambda: (fake_stage_project / "job.pid").exists() or launcher.poll() is not None)
    assert launcher.poll() is None, launcher.communicate()
    launcher.send_signal(signal.SIGINT)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 130, err
    assert "SIGINT received; the stage, running in this process, stopped" in err
    assert "FAILED" not in err and "Traceback" not in err
    assert not (fake_stage_project / "out" / "result.txt").exists()


TORCH_CHECK = textwrap.dedent(
    """
    import sys
    from hpcpipe.cli import main

    code = main(sys.argv[1:])
    print("torch imported by launcher:", "torch" in sys.modules)
    sys.exit(code)
    """
)


def test_the_launcher_process_never_imports_torch(project):
    """The login node imports a function stage's module (to read its declaration), never
    torch: the example's prepare stage, whose job does import torch, launched for real."""
    (project / "check_torch.py").write_text(TORCH_CHECK)
    launcher = subprocess.run(
        [sys.executable, "check_torch.py", "run", "prepare", "--fn", "hpcpipe.stages.prepare:prepare",
         "--prepared", "data/prepared"],
        cwd=project, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert launcher.returncode == 0, launcher.stderr
    assert "torch imported by launcher: False" in launcher.stdout
    assert "prepared 300 train + 100 test images" in launcher.stdout  # the job ran the stage
    assert (project / "data" / "prepared" / "manifest.json").exists()


def test_status_and_logs_show_the_last_job(fake_stage_project, capsys):
    assert run_fake(fake_stage_project, "write_outputs") == 0
    capsys.readouterr()
    assert main(["status"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["STAGE", "JOB", "STATE", "NODE", "ELAPSED", "LOG"]
    assert table[1].split()[0] == "fake" and table[1].split()[2] == "COMPLETED"


def test_cancel_all_stops_a_running_local_job(fake_stage_project, capsys):
    launcher = start(fake_stage_project, "sleep_then_write")
    pid_file = fake_stage_project / "job.pid"
    wait_for(lambda: pid_file.exists() or launcher.poll() is not None)
    assert launcher.poll() is None, launcher.communicate()
    job_pid = int(pid_file.read_text())
    assert main(["cancel", "--all"]) == 0
    assert "cancelled fake: job" in capsys.readouterr().out
    wait_for(lambda: not pid_alive(job_pid), timeout=15)
    _, err = launcher.communicate(timeout=60)
    assert launcher.returncode == 1  # the launcher saw its job end without a result
    assert "FAILED after" in err, err  # said at once: no wait for a result that cannot come
    assert not (fake_stage_project / "out" / "result.txt").exists()


def test_no_secret_from_the_environment_reaches_the_job_folder(fake_stage_project, monkeypatch):
    secret = "wandb-key-3f9a7c1e5b"
    monkeypatch.setenv("WANDB_API_KEY", secret)
    assert run_fake(fake_stage_project, "write_outputs") == 0
    args = add_command_stage(fake_stage_project, "hello", ["python", "fake_stages.py", "hello", "out/h.json"])
    assert main(args) == 0
    assert files_containing(fake_stage_project / ".hpcpipe", secret) == []


# --------------------------------------------------------------------------- command stages
def hello_stage(project: Path, outs: tuple[str, ...] = ("out/hello.json",)) -> list[str]:
    command = ["python", "fake_stages.py", "hello", "out/hello.json"]
    return add_command_stage(project, "hello", command, outs=outs, deps=["fake_stages.py"])


def test_a_command_stage_streams_its_output_and_exits_0(fake_stage_project, capfd):
    assert main(hello_stage(fake_stage_project)) == 0
    out, err = capfd.readouterr()
    assert "hello from the command" in out
    assert "a command line on stderr" in err
    assert "hello: job" in err and "submitted (local: local)" in err and "COMPLETED" in err
    assert (fake_stage_project / "out" / "hello.json").exists()


def test_the_command_sees_its_stage_and_checkpoint_dir_which_goes_after_success(fake_stage_project):
    args = hello_stage(fake_stage_project)
    fingerprint = load_stage(fake_stage_project, "hello").fingerprint
    assert main(args) == 0
    seen = json.loads((fake_stage_project / "out" / "hello.json").read_text())
    folder = fake_stage_project / ".hpcpipe" / "jobs" / "hello" / f"checkpoint-{fingerprint}"
    assert seen["stage"] == "hello"
    assert Path(seen["checkpoint_dir"]) == folder.resolve()  # keyed by the stage's content
    assert seen["checkpoint_dir_existed"] is True
    assert Path(seen["cwd"]).resolve() == fake_stage_project.resolve()  # the project root, as in dvc repro
    assert not folder.exists()  # succeeded and its outs exist: nothing left to resume


def test_a_failing_command_exits_with_its_status_and_shows_its_own_stderr(fake_stage_project, capfd):
    args = add_command_stage(fake_stage_project, "broken", ["python", "fake_stages.py", "fail", "3"])
    assert main(args) == 3
    err = capfd.readouterr().err
    assert quoted(err) == [
        "command stderr line 0",
        "command stderr line 1",
        "command stderr line 2",
        "giving up with status 3",
    ]  # the command's last words, not submitit's traceback around them
    last = err.rstrip("\n").splitlines()[-1]
    assert "broken: job" in last and "FAILED" in last and "command exited with status 3" in last


def test_a_declared_out_the_command_did_not_write_fails_naming_it(fake_stage_project, capfd):
    assert main(hello_stage(fake_stage_project, outs=("out/hello.json", "out/never.txt"))) == 1
    err = capfd.readouterr().err
    assert "finished but these outputs are missing: out/never.txt" in err
    assert "out/hello.json" not in err.split("missing:")[-1]


def test_a_failed_command_resumes_from_its_checkpoint_dir(fake_stage_project):
    """HPCPIPE_CHECKPOINT_DIR outlives a failed attempt (same stage content, same folder),
    so the next run of the stage finds what the first one saved."""
    command = ["python", "fake_stages.py", "resume", "out/resumed.txt"]
    args = add_command_stage(fake_stage_project, "resuming", command, outs=["out/resumed.txt"])
    assert main(args) == 1
    assert main(args) == 0
    assert (fake_stage_project / "out" / "resumed.txt").read_text() == "resumed after 1"
    assert list((fake_stage_project / ".hpcpipe" / "jobs" / "resuming").glob("checkpoint-*")) == []


def test_an_unknown_stage_exits_2_naming_the_known_ones_and_submits_nothing(fake_stage_project, capsys):
    assert main(["run", "nosuch", "--", "true"]) == 2
    err = capsys.readouterr().err
    assert err == "hpcpipe: dvc.yaml has no stage 'nosuch'; its stages are: evaluate, prepare, train\n"
    assert not (fake_stage_project / ".hpcpipe" / "jobs" / "nosuch").exists()
    assert not (fake_stage_project / ".hpcpipe").exists()


def test_a_foreach_group_name_resolves_to_the_member_dvc_repro_runs(fake_stage_project, capsys):
    """`hpcpipe init` wraps a foreach group's one cmd, so every member runs
    `hpcpipe run GROUP -- ...`; $DVC_STAGE, set by dvc repro, names the member."""
    add_stage(
        fake_stage_project,
        "greet",
        {
            "foreach": ["a", "b"],
            "do": {
                "cmd": "hpcpipe run greet -- python fake_stages.py whoami out/greet-${item}.txt",
                "deps": ["fake_stages.py"],
                "outs": ["out/greet-${item}.txt"],
            },
        },
    )
    repro = subprocess.run(["dvc", "repro", "greet"], cwd=fake_stage_project, capture_output=True, text=True)
    assert repro.returncode == 0, repro.stdout + repro.stderr
    for item in ("a", "b"):
        assert (fake_stage_project / "out" / f"greet-{item}.txt").read_text() == f"greet@{item}"
    ledger = Ledger(fake_stage_project / ".hpcpipe" / "jobs" / "ledger")
    assert {e.stage for e in ledger.entries()} == {"greet@a", "greet@b"}
    # outside dvc repro, the group name alone does not say which member
    assert main(["run", "greet", "--", "true"]) == 2
    assert "'greet' is a foreach/matrix group; name one member: greet@a, greet@b" in capsys.readouterr().err
