"""A stand-in for the `wandb` CLI, the one process that would talk to a W&B server.

No W&B server can run here, so `hpcpipe sync`'s uploads are stood in for at the process
boundary: a tiny ``wandb`` script first on PATH records each call's arguments in
$FAKE_WANDB_LOG, fails for paths named in $FAKE_WANDB_FAIL (comma-separated) and takes
$FAKE_WANDB_SLEEP seconds (an upload that takes a while). The runs it is handed are real.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FAKE_WANDB = """#!/usr/bin/env python3
import os, sys, time
time.sleep(float(os.environ.get("FAKE_WANDB_SLEEP", "0")))
with open(os.environ["FAKE_WANDB_LOG"], "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
if any(bad and bad in sys.argv[-1] for bad in os.environ.get("FAKE_WANDB_FAIL", "").split(",")):
    print("wandb: ERROR network unreachable", file=sys.stderr)
    sys.exit(1)
"""


@pytest.fixture
def fake_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The stand-in ``wandb`` first on PATH, W&B offline and no job of ours in the
    environment; returns the file where it logs its calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "wandb"
    script.write_text(FAKE_WANDB)
    script.chmod(0o755)
    log = tmp_path / "wandb-calls.log"
    log.touch()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_WANDB_LOG", str(log))
    monkeypatch.delenv("FAKE_WANDB_FAIL", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("SUBMITIT_LOCAL_JOB_ID", raising=False)
    for key in ("SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURM_JOB_USER"):
        monkeypatch.delenv(key, raising=False)
    return log


def calls(log: Path) -> list[str]:
    """The `wandb` calls the stand-in recorded, one line of arguments each."""
    return log.read_text().splitlines()
