"""Function stages and commands for launcher tests: real files, real failures, no torch.

They stand in for the CIFAR-10 stages where a test is about the launcher (how a
job is submitted, streamed, published, cancelled), not about training. The test
copies this file into the project root (the ``fake_stage_project`` fixture), where

- each function is a function stage, declared as the real ones are: its schema
  (the example's ``train`` section, so ``params.train`` is a checked ``TrainParams``)
  and its roles (``source``, ``result``, ``report``), named in dvc.yaml as
  ``hpcpipe run fake --fn fake_stages:write_outputs --source source.txt ...``
  (see tests/support/launch_project.py);
- ``python fake_stages.py COMMAND ARGS...`` is a command stage's script
  (``hpcpipe run NAME -- python fake_stages.py COMMAND ...``): see ``COMMANDS``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

from hpcpipe.config import TrainParams
from hpcpipe.stage_function import stage_function

SCHEMA = {"train": TrainParams}


# --------------------------------------------------------------------------- function stages
@stage_function(schema=SCHEMA)
def write_outputs(params, *, source: Path, result: Path, report: Path) -> dict:
    text = source.read_text()
    print(f"read {len(text)} characters", flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    result.write_text(text.upper())
    report.mkdir()
    (report / "summary.json").write_text(json.dumps({"chars": len(text), "lr": params.train.lr}))
    return {"chars": len(text)}


@stage_function(schema=SCHEMA)
def fail_halfway(params, *, source: Path, result: Path, report: Path) -> dict:
    result.write_text("half written")
    report.mkdir()
    for i in range(25):
        print(f"stderr line {i}", file=sys.stderr, flush=True)
    raise RuntimeError("the stage broke on purpose")


def _work_then_write(seconds: float, result: Path, report: Path, text: str) -> dict:
    """Works ``seconds`` (its pid in job.pid, so a test can watch the job die), then writes
    both outputs, ``text`` in ``result``."""
    Path("job.pid").write_text(str(os.getpid()))
    print(f"working for {seconds:g} s", flush=True)
    time.sleep(seconds)
    result.write_text(text)
    report.mkdir()
    return {}


@stage_function(schema=SCHEMA)
def sleep_then_write(params, *, source: Path, result: Path, report: Path) -> dict:
    """Outlives every test: the test kills or cancels it first."""
    return _work_then_write(120, result, report, "too late")


@stage_function(schema=SCHEMA)
def forget_output(params, *, source: Path, result: Path, report: Path) -> dict:
    result.write_text("only one of two")
    return {}


@stage_function(schema=SCHEMA)
def wait_for_go(params, *, source: Path, result: Path, report: Path) -> dict:
    """Runs until the test creates the file ``go`` in the project (at most 120 s), then
    writes both outputs ("done"): the test kills a launcher, starts another, or requeues
    the job while it runs, and lets it finish then, without waiting a fixed time. Its pid
    is in job.pid, as ``_work_then_write``'s."""
    Path("job.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + 120
    while not Path("go").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    result.write_text("done")
    report.mkdir()
    return {}


@stage_function(schema=SCHEMA)
def told_to_stop(params, *, source: Path, result: Path, report: Path) -> dict:
    """Gets SIGTERM (what scancel sends) while it works, and finishes its outputs anyway,
    as a stage under submitit does (submitit only logs SIGTERM)."""
    os.kill(os.getpid(), signal.SIGTERM)
    return write_outputs(params, source=source, result=result, report=report)


@stage_function(schema=SCHEMA)
def stop_at_warning(params, *, source: Path, result: Path, report: Path) -> dict:
    """Gets Slurm's warning (USR2) while it trains and stops as ``training.fit`` does:
    under ``ml.stopping.WarningSignal``, raising once the warning came."""
    from hpcpipe.ml.stopping import WarningSignal

    with WarningSignal() as warning:
        os.kill(os.getpid(), signal.SIGUSR2)
        if warning.requested():
            raise RuntimeError("stopped at the warning signal in epoch 1, after batch 3")
    return write_outputs(params, source=source, result=result, report=report)


@stage_function(schema=SCHEMA)
def write_then_wait_for_go(params, *, source: Path, result: Path, report: Path) -> dict:
    """Writes both outputs, then waits (at most 60 s) for the file ``go`` in the project
    before returning: the window in which a test cancels the job."""
    write_outputs(params, source=source, result=result, report=report)
    Path("waiting").write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not Path("go").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return {"waited": True}


@stage_function(schema=SCHEMA)
def count_to_three(params, *, source: Path, result: Path, report: Path, checkpoint: Path) -> dict:
    """A resumable stage: counts to 3, saving its count in ``checkpoint`` after each step.

    Stops with an error after the step named by ``stop-after.txt`` (in the project), as
    if the job were killed there; a rerun resumes from the saved count.
    """
    done = int(checkpoint.read_text()) if checkpoint.exists() else 0
    stop = Path("stop-after.txt")
    for step in range(done + 1, 4):
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        checkpoint.write_text(str(step))
        if stop.exists() and stop.read_text().strip() == str(step):
            stop.unlink()
            raise RuntimeError(f"stopped after step {step}")
    result.write_text(f"resumed after {done}")
    report.mkdir()
    return {"resumed_after": done}


@stage_function(schema=SCHEMA)
def chatter(params, *, source: Path, result: Path, report: Path) -> dict:
    """A line on stdout every 0.2 s for two minutes: something for the launcher to stream."""
    Path("job.pid").write_text(str(os.getpid()))
    for i in range(600):
        print(f"chatter {i}", flush=True)
        time.sleep(0.2)
    result.write_text("too late")
    report.mkdir()
    return {}


# --------------------------------------------------------------------------- commands
def hello(out: str) -> int:
    """Says hello on stdout and on stderr, and records what the job gave it in ``out``:
    the hpcpipe variables, and whether the checkpoint folder existed while it ran."""
    print("hello from the command", flush=True)
    print("a command line on stderr", file=sys.stderr, flush=True)
    checkpoint_dir = os.environ.get("HPCPIPE_CHECKPOINT_DIR", "")
    seen = {
        "stage": os.environ.get("HPCPIPE_STAGE"),
        "checkpoint_dir": checkpoint_dir,
        "checkpoint_dir_existed": bool(checkpoint_dir) and Path(checkpoint_dir).is_dir(),
        "cwd": os.getcwd(),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(seen))
    return 0


def fail(code: str) -> int:
    """Exits ``code`` after some lines of its own on stderr."""
    for i in range(3):
        print(f"command stderr line {i}", file=sys.stderr, flush=True)
    print(f"giving up with status {code}", file=sys.stderr, flush=True)
    return int(code)


def resume(out: str) -> int:
    """A command that resumes: counts its attempts in $HPCPIPE_CHECKPOINT_DIR; the first
    attempt fails (as if killed), the second finds the count and finishes."""
    counter = Path(os.environ["HPCPIPE_CHECKPOINT_DIR"]) / "attempts"
    before = int(counter.read_text()) if counter.exists() else 0
    counter.write_text(str(before + 1))
    if before == 0:
        print("first attempt: stopping", file=sys.stderr, flush=True)
        return 1
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(f"resumed after {before}")
    return 0


def save_at_warning(out: str) -> int:
    """A long command that saves its state when told to stop (SIGTERM, as hpcpipe forwards
    Slurm's time-limit warning) and, in its next attempt, finds it and finishes."""
    state = Path(os.environ["HPCPIPE_CHECKPOINT_DIR"]) / "state"
    if state.exists():
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(f"resumed: {state.read_text()}")
        return 0

    def save(signum: int, _frame: object) -> None:
        state.write_text(f"saved at {signal.Signals(signum).name}")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, save)
    Path("command.pid").write_text(str(os.getpid()))  # ready: a test may send the warning now
    print("working until the time limit", flush=True)
    time.sleep(600)
    return 1


def whoami(out: str) -> int:
    """Writes $HPCPIPE_STAGE (the stage address the job was given) into ``out``."""
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(os.environ.get("HPCPIPE_STAGE", ""))
    return 0


def wandb_run(out: str) -> int:
    """What a user's script does: a plain ``wandb.init()``, configured by the environment
    only. Writes the run's id and the WANDB_* variables it saw into ``out``."""
    import wandb

    run = wandb.init()
    run.log({"loss": 0.5})
    run.finish()
    seen = {k: v for k, v in os.environ.items() if k.startswith("WANDB_") and k != "WANDB_API_KEY"}
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps({"run_id": run.id, "env": seen}))
    return 0


COMMANDS = {
    "hello": hello,
    "fail": fail,
    "resume": resume,
    "save-at-warning": save_at_warning,
    "whoami": whoami,
    "wandb-run": wandb_run,
}

if __name__ == "__main__":
    sys.exit(COMMANDS[sys.argv[1]](*sys.argv[2:]))
