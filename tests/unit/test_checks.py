"""`hpcpipe cluster` checks that need no cluster: job folder placement, accounts, stage names."""

from __future__ import annotations

from pathlib import Path

import yaml

from hpcpipe.config import Profile, Resources, known_profiles, load_profile, stage_name_problem
from hpcpipe.launch.checks import account_problem, run_checks

REPO = Path(__file__).resolve().parents[2]


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


def test_a_misspelt_stage_entry_is_named_with_its_file(tmp_path, monkeypatch):
    folder = tmp_path / "configs" / "cluster"
    folder.mkdir(parents=True)
    (folder / "testcluster.yaml").write_text("stages:\n  trian:\n    gpus: 1\n")
    monkeypatch.chdir(tmp_path)
    profile = load_profile("testcluster", Path("."))
    assert stage_name_problem(profile, ["prepare", "train", "evaluate"]) == (
        "configs/cluster/testcluster.yaml: stages.trian: no stage 'trian' in dvc.yaml; "
        "its stages are: evaluate, prepare, train"
    )
    assert stage_name_problem(profile, ["trian"]) is None


def test_foreach_groups_and_reserved_entries_are_stage_names():
    members = ["featurize@text", "featurize@images", "data_load"]
    stages = {name: Resources() for name in ("featurize", "featurize@images", "data_load", "repro", "sweep")}
    assert stage_name_problem(Profile(name="p", executor="slurm", stages=stages), members) is None
    wrong = Profile(name="p", executor="slurm", stages={"featurize@audio": Resources()})
    problem = stage_name_problem(wrong, members)
    assert problem is not None
    assert problem.startswith("cluster profile 'p': stages.featurize@audio: no stage 'featurize@audio'")
    assert stage_name_problem(Profile(name="p", executor="slurm", stages={"data": Resources()}), members)
    assert "it has no stages" in stage_name_problem(wrong, [])


def test_the_examples_profiles_name_only_its_stages():
    names = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    for profile_name in known_profiles(REPO):
        assert stage_name_problem(load_profile(profile_name, REPO), names) is None, profile_name
