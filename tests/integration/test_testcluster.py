"""The real one-node Slurm test cluster (slurm/testcluster/start) and submitit on it.

The session fixture starts the cluster (a few seconds; about 10 s more the first
time on a machine) unless it is already running, and stops it at the end only
if it started it. Slurm must be installed first: `slurm/testcluster/install`
(as root; CI does it). Without it these tests skip, except under CI, where they fail.

    python -m pytest tests/integration/test_testcluster.py -q
"""

from __future__ import annotations

import os
import time

import pytest

from tests.support.slurm import REPO, exported_conf, run, sacct_row, start_cluster

pytestmark = pytest.mark.slurm


def test_gpu_job_sees_one_gpu(slurm_cluster, tmp_path):
    out = tmp_path / "gpu.out"
    run(
        "sbatch", "--wait", "--parsable", "-p", "gpu", "-C", "gpu", "--gpus-per-node=1", "-o", out,
        "--wrap", "echo $SLURM_GPUS_ON_NODE",
    )  # fmt: skip
    assert out.read_text().strip() == "1"


def test_plain_job_lands_on_cpu_and_sacct_records_it(slurm_cluster, tmp_path):
    job_id = run("sbatch", "--parsable", "-o", tmp_path / "cpu.out", "--wrap", "true").stdout.strip()
    assert sacct_row(job_id) == ("COMPLETED", "cpu")


def test_more_gpus_than_the_node_has_is_never_run(slurm_cluster, tmp_path):
    proc = run(
        "sbatch", "--parsable", "-p", "gpu", "--gpus-per-node=3", "-o", tmp_path / "x.out", "--wrap", "true",
        check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        assert "Requested node configuration is not available" in proc.stderr
        return
    job_id = proc.stdout.strip()  # accepted: then it must wait, never run
    time.sleep(2)
    state = run("squeue", "-h", "-j", job_id, "-o", "%T").stdout.strip()
    run("scancel", job_id)
    assert state == "PENDING"


def test_start_again_changes_nothing(slurm_cluster):
    proc, _ = start_cluster()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# testcluster: already running")
    assert exported_conf(proc) == slurm_cluster.conf


def test_submitit_round_trip_on_the_gpu_partition(slurm_cluster, tmp_path, capsys):
    import submitit

    def gpus_on_node() -> str:  # a local function: pickled by value, imports nothing from tests/
        return os.environ["SLURM_GPUS_ON_NODE"]

    executor = submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    executor.update_parameters(slurm_partition="gpu", slurm_constraint="gpu", gpus_per_node=1, timeout_min=5)
    began = time.monotonic()
    job = executor.submit(gpus_on_node)
    assert job.result() == "1"
    seconds = time.monotonic() - began
    assert sacct_row(job.job_id) == ("COMPLETED", "gpu")
    with capsys.disabled():
        print(f"\n[testcluster] start {slurm_cluster.start_s:.1f}s, submitit round trip {seconds:.1f}s")


def test_testcluster_profile_runs_each_stage_on_its_partition(slurm_cluster, tmp_path):
    import submitit

    from hpcpipe.config import load_profile
    from hpcpipe.launch.profiles import executor_parameters

    def where() -> tuple[str, str]:
        return os.environ["SLURM_JOB_PARTITION"], os.environ.get("SLURM_GPUS_ON_NODE", "0")

    profile = load_profile("testcluster", REPO)
    jobs = {}
    for stage in ("prepare", "train", "evaluate"):
        executor = submitit.SlurmExecutor(folder=tmp_path / stage)
        executor.update_parameters(**executor_parameters(profile, stage))
        jobs[stage] = executor.submit(where)
    assert {stage: job.result() for stage, job in jobs.items()} == {
        "prepare": ("cpu", "0"),
        "train": ("gpu", "1"),
        "evaluate": ("gpu", "1"),
    }
