"""Stage functions for launcher tests: real files, real failures, no torch.

They stand in for the CIFAR-10 stages where a test is about the launcher (how a
job is submitted, streamed, published, cancelled), not about training. They are
imported by the job process, so the test copies this file into the project root.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path


def write_outputs(params, *, source: Path, result: Path, report: Path) -> dict:
    text = source.read_text()
    print(f"read {len(text)} characters", flush=True)
    print("a line on stderr", file=sys.stderr, flush=True)
    result.write_text(text.upper())
    report.mkdir()
    (report / "summary.json").write_text(json.dumps({"chars": len(text), "lr": params.train.lr}))
    return {"chars": len(text)}


def fail_halfway(params, *, source: Path, result: Path, report: Path) -> dict:
    result.write_text("half written")
    report.mkdir()
    for i in range(25):
        print(f"stderr line {i}", file=sys.stderr, flush=True)
    raise RuntimeError("the stage broke on purpose")


def sleep_then_write(params, *, source: Path, result: Path, report: Path) -> dict:
    Path("job.pid").write_text(str(os.getpid()))
    print("sleeping", flush=True)
    time.sleep(120)
    result.write_text("too late")
    report.mkdir()
    return {}


def forget_output(params, *, source: Path, result: Path, report: Path) -> dict:
    result.write_text("only one of two")
    return {}


def torch_loaded(params, *, source: Path, result: Path, report: Path) -> dict:
    """Reports whether the job process had torch imported (the launcher must not need it)."""
    result.write_text(str("torch" in sys.modules))
    report.mkdir()
    return {}


def sleep_briefly(params, *, source: Path, result: Path, report: Path) -> dict:
    """Long enough to kill the launcher while the job runs, short enough for a test."""
    print("working for 20 s", flush=True)
    time.sleep(20)
    result.write_text("done")
    report.mkdir()
    return {}


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
