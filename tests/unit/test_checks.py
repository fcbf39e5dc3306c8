"""`hpcpipe cluster` checks that need no cluster: job folder placement, accounts, stage names,
and what the site's Slurm configuration (as `scontrol show config` prints it) means for a stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpcpipe.config import Profile, Resources, known_profiles, load_profile, stage_name_problem
from hpcpipe.launch.checks import account_problem, run_checks
from tests.support import REPO


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


# `scontrol show config` as Slurm 22.05 prints it (the lines that matter, and one whose value has '=')
SHOW_CONFIG = """Configuration data as of 2026-12-02T02:00:31
AccountingStorageType   = accounting_storage/slurmdbd
JobRequeue              = {requeue}
PreemptMode             = {mode}
PreemptType             = {kind}
PreemptExemptTime       = 00:00:00
SchedulerParameters     = batch_sched_delay=0,sched_interval=2
SlurmctldParameters     = {ctld}
"""


def site(requeue="1", mode="OFF", kind="preempt/none", ctld="(null)", extra="") -> dict[str, str]:
    from hpcpipe.launch.checks import parse_slurm_config

    text = SHOW_CONFIG.format(requeue=requeue, mode=mode, kind=kind, ctld=ctld) + extra
    return parse_slurm_config(text)


def lines(config: dict[str, str]) -> tuple[str, str]:
    from hpcpipe.launch.checks import requeue_checks

    requeue, preemption = requeue_checks(config)
    assert requeue.ok and preemption.ok and requeue.info and preemption.info  # facts, never failures
    return requeue.line(), preemption.line()


def test_scontrol_show_config_is_read_key_by_key():
    config = site()
    assert config["SchedulerParameters"] == "batch_sched_delay=0,sched_interval=2"
    assert (config["JobRequeue"], config["PreemptType"]) == ("1", "preempt/none")
    assert "Configuration data as of 2026-12-02T02:00:31" not in "".join(config)


def test_job_requeue_is_said_with_what_it_means():
    assert lines(site("1"))[0].startswith(
        "info  requeue: JobRequeue=1: Slurm requeues a job after a node failure"
    )
    off = lines(site("0"))[0]
    assert off.startswith("info  requeue: JobRequeue=0: Slurm requeues a job ")
    assert "only if it was submitted with --requeue" in off
    assert "JobRequeue not in `scontrol show config`" in lines({})[0]


@pytest.mark.parametrize(
    ("config", "said"),
    [
        (site(), "none on this site (PreemptType=preempt/none): no job is preempted"),
        (site(mode="GANG", kind="preempt/partition_prio"), "none on this site"),
        (
            site(mode="REQUEUE", kind="preempt/qos"),
            "PreemptType=preempt/qos PreemptMode=REQUEUE (a QOS may set its own): a preempted job gets "
            "SIGTERM, not the warning signal (USR2): it saves no checkpoint then; requeued (REQUEUE mode) "
            "it resumes from its last one",
        ),
        (
            site(mode="CANCEL", kind="preempt/qos", ctld="enable_configless,preempt_send_user_signal"),
            "a preempted job gets the warning signal (USR2) as at its time limit",
        ),
        (
            site(mode="REQUEUE", kind="preempt/qos", extra="PreemptParameters       = send_user_signal\n"),
            "a preempted job gets the warning signal (USR2) as at its time limit",
        ),
        (site(mode="SUSPEND,GANG", kind="preempt/partition_prio"), "suspended and resumed later"),
    ],
)
def test_preemption_says_whether_the_warning_signal_comes(config, said):
    assert said in lines(config)[1]
