"""What each job used (launch.usage): sacct's text as Slurm 22.05 prints it, parsed and shown.

The samples are real ``sacct -n -P -o usage.FIELDS`` output of the test cluster
(slurm/testcluster), copied as text: a function stage on the imitated GPU, a sweep's
array (one point failed before accounting sampled it, two tasks cancelled while
pending), a job cut by its time limit. The Perlmutter-sized figures of the advice tests
are built as Usage values: no such node runs here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hpcpipe.cli import main
from hpcpipe.cluster_profiles import Profile, Resources
from hpcpipe.launch import control, usage
from hpcpipe.launch.ledger import Entry
from hpcpipe.launch.usage import GB, Usage

GPU_STAGE = """\
551|COMPLETED|00:00:14|00:10:00|00:19.885|1|2G|billing=1,cpu=1,gres/gpu=1,mem=2G,node=1||
551.batch|COMPLETED|00:00:14||00:00.040|1||cpu=1,gres/gpu=1,mem=2G,node=1|12184K|cpu=00:00:00,energy=0,fs/disk=33635,mem=12184K,pages=0,vmem=221368K
551.0|COMPLETED|00:00:14||00:19.844|1||cpu=1,gres/gpu=1,mem=2G,node=1|746436K|cpu=00:00:14,energy=0,fs/disk=56453179,mem=746436K,pages=19,vmem=3667136K
"""

SWEEP = """\
46_2|COMPLETED|00:00:09|00:20:00|00:08.389|1|2G|billing=1,cpu=1,gres/gpu=1,mem=2G,node=1||
46_2.batch|COMPLETED|00:00:09||00:00.011|1||cpu=1,gres/gpu=1,mem=2G,node=1|12180K|cpu=00:00:00,energy=0,fs/disk=33949,mem=12180K,pages=0,vmem=221368K
46_2.0|COMPLETED|00:00:09||00:08.377|1||cpu=1,gres/gpu=1,mem=2G,node=1|825.50M|cpu=00:00:03,energy=0,fs/disk=95117478,mem=825.50M,pages=0,vmem=3926640K
46_3|FAILED|00:00:02|00:20:00|00:01.266|1|2G|billing=1,cpu=1,gres/gpu=1,mem=2G,node=1||
46_3.batch|FAILED|00:00:02||00:00.011|1||cpu=1,gres/gpu=1,mem=2G,node=1||energy=0
46_3.0|FAILED|00:00:02||00:01.255|1||cpu=1,gres/gpu=1,mem=2G,node=1||energy=0
458_[0-1%2]|CANCELLED by 0|00:00:00|00:30:00|00:00:00|1|2G|||
"""

TIMEOUT = """\
278|TIMEOUT|00:01:29|00:01:00|00:00.282|1|2G|billing=1,cpu=1,mem=2G,node=1||
"""

PROFILE = Profile(
    name="perlmutter",
    executor="slurm",
    stages={"train": Resources(gpus=1, cpus=32, mem_gb=60, time_min=120)},
)


def used(**figures) -> Usage:
    """A finished Perlmutter-sized stage: 1 h of a 2 h limit, 32 CPUs, 60 GB, one GPU."""
    base = Usage("9001", "COMPLETED", 3600, 7200, 3600 * 30, 32, 60 * GB, 50 * GB, gpus=1)
    return dataclasses.replace(base, **figures)


def test_a_jobs_figures_come_from_its_allocation_line_and_its_largest_step():
    found = usage.parse(GPU_STAGE)
    assert set(found) == {"551"}
    job = found["551"]
    assert (job.state, job.elapsed_s, job.limit_s, job.cpus, job.gpus) == ("COMPLETED", 14, 600, 1, 1)
    assert job.cpu_s == pytest.approx(19.885)
    assert job.mem_bytes == 2 * GB
    assert job.peak_bytes == 746436 * 1024  # step 0's, not the batch step's 12 MB
    assert usage.describe(job) == (
        "0:00:14 of 0:10:00 limit (2%), CPU 142% of 1 core, memory 729 MB peak of 2.0 GB (36%), 1 GPU"
    )


def test_a_sweeps_tasks_are_keyed_by_task_and_missing_figures_are_said_so():
    found = usage.parse(SWEEP)
    assert found["46_2"].peak_bytes == round(825.5 * 1024**2)
    failed = found["46_3"]
    assert failed.state == "FAILED" and failed.peak_bytes is None
    assert "memory 2.0 GB (peak not recorded)" in usage.describe(failed)
    assert found["458_[0-1%2]"].state == "CANCELLED"  # "CANCELLED by 0"
    assert usage.describe(found["458_[0-1%2]"]).startswith("0:00:00 of 0:30:00 limit (0%), 1 core")


def test_a_job_past_its_limit_shows_over_100_percent():
    assert usage.describe(usage.parse(TIMEOUT)["278"]).startswith("0:01:29 of 0:01:00 limit (148%)")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("00:19.885", 19.885), ("01:02:03", 3723), ("2-00:00:10", 172810), ("UNLIMITED", None), ("", None)],
)
def test_durations(text, seconds):
    assert usage.parse_duration(text) == (pytest.approx(seconds) if seconds else None)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("746436K", 746436 * 1024),
        ("825.50M", round(825.5 * 1024**2)),
        ("2G", 2 * GB),
        ("4Gn", 4 * GB),
        ("0", 0),
    ],
)
def test_sizes(text, size):
    assert usage.parse_size(text) == size


def test_typed_gpu_counts_count_once():
    text = "7|COMPLETED|00:01:00|00:10:00|00:30|4|8G|cpu=4,gres/gpu=4,gres/gpu:a100=4,mem=8G||\n"
    assert usage.parse(text)["7"].gpus == 4


def test_a_stage_that_used_little_memory_is_told_which_key_to_lower():
    line = usage.advice([used(peak_bytes=4 * GB)], PROFILE, "train", ["train"])
    assert line == (
        "train: used under a quarter of its memory (peak 4.0 GB of 60.0 GB); ask for less with "
        "`stages: train: mem_gb: 8` in configs/cluster/perlmutter.yaml"
    )


def test_one_busy_core_of_32_gets_cpu_advice_and_both_go_on_one_line():
    line = usage.advice([used(peak_bytes=4 * GB, cpu_s=3600 * 1.0)], PROFILE, "train", ["train"])
    assert "memory (peak 4.0 GB of 60.0 GB) and CPUs (1.0 of 32 cores busy)" in line
    assert "`stages: train: {mem_gb: 8, cpus: 2}`" in line


@pytest.mark.parametrize(
    "figures",
    [
        {},  # 50 of 60 GB, 30 of 32 cores: well used
        {"peak_bytes": 16 * GB},  # over a quarter
        {"state": "OUT_OF_MEMORY", "peak_bytes": 1 * GB},  # a failed job is no measure of need
        {"peak_bytes": None},  # accounting did not sample it
        {"cpu_s": 10.0, "elapsed_s": 30},  # too short for its CPU figure to mean anything
    ],
)
def test_no_advice_without_a_clear_case(figures):
    assert usage.advice([used(**figures)], PROFILE, "train", ["train"]) is None


def test_a_sweep_is_advised_on_its_hungriest_point():
    points = [used(peak_bytes=2 * GB), used(peak_bytes=20 * GB)]
    assert usage.advice(points, PROFILE, "sweep s", ["train"]) is None
    points = [used(peak_bytes=2 * GB), used(peak_bytes=5 * GB)]
    assert "`stages: train: mem_gb: 10`" in usage.advice(points, PROFILE, "sweep s", ["train"])


def test_a_foreach_member_is_advised_on_its_base_entry():
    assert usage.profile_key(PROFILE, "train@small") == "train"
    assert usage.profile_key(PROFILE, "prepare") == "prepare"


def test_local_and_inline_jobs_have_no_usage_line():
    for executor in ("local", "inline"):
        assert usage.summary_lines("1234", Profile(name=executor, executor=executor), "train") == []


def test_a_site_without_accounting_says_usage_is_unknown_once(tmp_path: Path, monkeypatch):
    """A real sacct (where installed) against a Slurm configuration without accounting
    storage: it fails at once, as it does at such a site."""
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        "ClusterName=noacct\nSlurmctldHost=localhost\nAccountingStorageType=accounting_storage/none\n"
        "NodeName=n1 CPUs=1\nPartitionName=p Nodes=n1\n"
    )
    monkeypatch.setenv("SLURM_CONF", str(conf))
    profile = Profile(name="site", executor="slurm")
    assert usage.summary_lines("1234", profile, "train") == [f"train: {usage.UNKNOWN_HERE}"]
    entries = [
        Entry(stage, job, "slurm", "fp", "/jobs", "out", "err", 0.0)
        for stage, job in [("a", "1"), ("b", "2")]
    ]
    assert control.usage_lines(entries, profile) == [usage.UNKNOWN_HERE]
    local = [dataclasses.replace(e, executor="local") for e in entries]
    assert control.usage_lines(local, profile) == []


def test_a_sweep_is_told_to_lower_only_the_entries_that_ask_more():
    """A point asks for the most of its stages: prepare's 2 GB is not raised to 6."""
    profile = dataclasses.replace(PROFILE, stages={**PROFILE.stages, "prepare": Resources(mem_gb=2)})
    line = usage.advice([used(peak_bytes=3 * GB)], profile, "sweep s", ["prepare", "train"])
    assert line.endswith("ask for less with `stages: train: mem_gb: 6` in configs/cluster/perlmutter.yaml")


def test_status_of_an_unknown_sweep_is_one_line(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["status", "--sweep", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no sweep named 'nope'" in err and len(err.strip().splitlines()) == 1, err
