"""A stage on several tasks under submitit's local executor (no Slurm): `tasks_per_node` starts
that many subprocesses on this machine, with torchrun's variables (see test_slurm_scale.py for
the same on the two-node test cluster). Plain Python, no torch."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

from tests.support.launch_project import add_command_stage
from tests.support.slurm import REPO


def test_local_tasks_are_subprocesses_that_meet_on_this_machine(fake_stage_project: Path):
    """`tasks_per_node: 2` on the local profile: two subprocesses with torchrun's variables
    (master 127.0.0.1); rank 1's failure is the stage's, by name."""
    (fake_stage_project / "ranks_script.py").write_text((REPO / "tests/support/ranks_script.py").read_text())
    args = add_command_stage(fake_stage_project, "broken", ["python", "ranks_script.py", "fail", "1", "3"])
    (fake_stage_project / "configs" / "cluster" / "local-tasks.yaml").write_text(
        yaml.safe_dump({"extends": "local", "stages": {"broken": {"tasks_per_node": 2, "time_min": 5}}})
    )
    done = subprocess.run(
        ["hpcpipe", *args],
        cwd=fake_stage_project,
        env={**os.environ, "HPCPIPE_CLUSTER": "local-tasks"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 3, done.stderr
    assert "rank 1 of 2, on localhost exited with status 3" in done.stderr
