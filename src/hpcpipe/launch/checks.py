"""``hpcpipe cluster``: does this profile have what it needs here?

Each check is one line, ok or not, with what to do. ``account_problem`` is also
run by the launcher before every submission, so a site that charges an
allocation never sees a job without one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcpipe.config import Profile

NODE_LOCAL = ("/tmp", "/var/tmp", "/dev/shm")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def account_problem(profile: Profile, environ: Mapping[str, str]) -> str | None:
    """One line if the site needs an account and none is set, else None."""
    if not profile.require_account or environ.get("SBATCH_ACCOUNT"):
        return None
    resources = [profile.defaults, *profile.stages.values()]
    if all(res.account for res in resources):
        return None
    return (
        f"cluster profile {profile.name!r} needs a Slurm account: set `account:` under defaults "
        "in its file, or `export SBATCH_ACCOUNT=<project>`"
    )


def _answers(command: list[str]) -> Check:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Check(command[0], False, f"`{' '.join(command)}` failed: {err}")
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        return Check(command[0], False, f"`{' '.join(command)}`: {message[-1] if message else 'no output'}")
    return Check(command[0], True, "answers")


def run_checks(profile: Profile, root: Path, environ: Mapping[str, str] | None = None) -> list[Check]:
    env = os.environ if environ is None else environ
    checks: list[Check] = []
    job_dir = (root / profile.job_dir).resolve()
    local_roots = [*NODE_LOCAL, *([env["TMPDIR"]] if env.get("TMPDIR") else [])]
    on_node = profile.executor == "slurm" and any(
        job_dir == Path(r).resolve() or Path(r).resolve() in job_dir.parents for r in local_roots
    )
    detail = (
        f"{job_dir} is node-local; compute nodes cannot read it: use a shared filesystem"
        if on_node
        else f"{job_dir}"
    )
    checks.append(Check("job folder", not on_node, detail))
    problem = account_problem(profile, env)
    checks.append(Check("account", problem is None, problem or "set or not needed"))
    if profile.executor == "slurm":
        checks.append(_answers(["sbatch", "--version"]))
        checks.append(_answers(["squeue", "--me", "-h"]))
        checks.append(_answers(["sacct", "-n", "-X", "-S", "now-1hours"]))
    return checks
