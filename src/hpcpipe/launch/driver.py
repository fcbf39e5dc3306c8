"""``hpcpipe repro --detach``: the whole ``dvc repro`` as a small CPU job, so the user can log out.

The driver job runs ``dvc repro`` on a compute node with the same cluster profile,
so each stage is still submitted as its own job on the right node type (the
launcher strips the driver's inherited SLURM_* variables before each submission).
Compare ``slurm/repro.sbatch``, which runs every stage inside one allocation.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DRIVER = "repro"  # the driver's name in the ledger and in profiles' `stages:` (its resources)


def repro_in_foreground(profile_name: str, dvc_args: list[str], root: Path) -> int:
    """``dvc repro`` in the project with the profile pinned; returns its exit status."""
    env = {**os.environ, "HPCPIPE_CLUSTER": profile_name}
    return subprocess.run(["dvc", "repro", *dvc_args], cwd=root, env=env).returncode


def run_repro(root: str, profile_name: str, dvc_args: list[str]) -> int:
    """Job side of --detach: the same, raising on failure so the job ends FAILED."""
    code = repro_in_foreground(profile_name, dvc_args, Path(root))
    if code != 0:
        raise RuntimeError(f"dvc repro exited with status {code}")
    return code
