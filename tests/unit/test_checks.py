"""`hpcpipe cluster` checks that need no cluster: job folder placement and accounts."""

from __future__ import annotations

from pathlib import Path

from hpcpipe.config import Profile, Resources
from hpcpipe.launch.checks import account_problem, run_checks


def test_a_site_that_charges_needs_an_account_from_the_profile_or_sbatch_env():
    site = Profile(name="perlmutter", executor="slurm", require_account=True)
    assert "needs a Slurm account" in account_problem(site, {})
    assert account_problem(site, {"SBATCH_ACCOUNT": "m1234"}) is None
    paid = Profile(
        name="perlmutter", executor="slurm", require_account=True, defaults=Resources(account="m1")
    )
    assert account_problem(paid, {}) is None
    assert account_problem(Profile(name="laptop", executor="local"), {}) is None


def test_a_job_folder_on_node_local_tmp_fails_for_slurm_only(tmp_path):
    slurm = Profile(name="s", executor="slurm", job_dir="/tmp/jobs")
    job_folder = run_checks(slurm, Path("/"), {"PATH": "/nonexistent"})[0]
    assert job_folder.name == "job folder" and not job_folder.ok and "node-local" in job_folder.detail
    local = Profile(name="l", executor="local", job_dir="/tmp/jobs")
    assert run_checks(local, Path("/"), {})[0].ok
    scratch = Profile(name="s", executor="slurm", job_dir=str(tmp_path / "jobs"))
    checks = run_checks(scratch, Path("/"), {"TMPDIR": str(tmp_path)})
    assert not checks[0].ok  # under $TMPDIR, node-local on most clusters
