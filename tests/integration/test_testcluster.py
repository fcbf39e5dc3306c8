"""The real one-node Slurm test cluster (slurm/testcluster/start) and submitit on it.

The session fixture starts the cluster (a few seconds; about 10 s more the first
time on a machine) unless it is already running, and stops it at the end only
if it started it. Slurm must be installed first: `slurm/testcluster/install`
(as root; CI does it). Without it these tests skip, except under CI, where they fail.

    python -m pytest tests/integration/test_testcluster.py -q
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.slurm import REPO, SCRIPTS, exported_conf, free_port_base, run, sacct_row, start_cluster

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


def test_a_second_cluster_without_accounting_beside_the_shared_one(slurm_cluster, tmp_path_factory, tmp_path):
    """`HPCPIPE_TESTCLUSTER_ACCOUNTING=0` (a site without slurmdbd) and JobRequeue=0, in its
    own folder and ports, beside the shared cluster, whose slurmd has the same node name:
    jobs run on both at once, this one's sacct fails while squeue and scontrol answer,
    `hpcpipe cluster`'s checks say what that means, and stop ends only what it started."""
    from hpcpipe.config import load_profile
    from hpcpipe.launch.checks import run_checks

    state = tmp_path_factory.mktemp("tc")  # short: the munge socket path has a length limit
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    env.update(
        HPCPIPE_TESTCLUSTER_DIR=str(state),
        HPCPIPE_TESTCLUSTER_PORT=str(free_port_base()),
        HPCPIPE_TESTCLUSTER_ACCOUNTING="0",
        HPCPIPE_TESTCLUSTER_JOB_REQUEUE="0",
    )
    shared_env = {**env, "SLURM_CONF": str(slurm_cluster.conf)}
    shared_job = run(
        "sbatch", "--parsable", "-o", tmp_path / "shared.out", "--wrap", "sleep 2"
    ).stdout.strip()
    try:
        proc = subprocess.run(
            ["bash", SCRIPTS / "start"], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(
            "# testcluster: started munged slurmctld slurmd in "
        )  # no MariaDB, slurmdbd
        conf = exported_conf(proc)
        assert conf.parent == state.resolve() and conf != slurm_cluster.conf
        own = {**env, "SLURM_CONF": str(conf)}

        def slurm(
            *cmd: str | Path, check: bool = True, on: dict[str, str] = own
        ) -> subprocess.CompletedProcess:
            done = subprocess.run([str(c) for c in cmd], env=on, capture_output=True, text=True, timeout=120)
            assert not check or done.returncode == 0, f"{cmd}: {done.stderr}"
            return done

        job = slurm(
            "sbatch", "--wait", "--parsable", "-o", tmp_path / "own.out", "--wrap", "echo ran"
        ).stdout.strip()
        assert (tmp_path / "own.out").read_text() == "ran\n"
        sacct = slurm("sacct", "-n", "-X", "-j", job, "-o", "State", check=False)
        assert sacct.returncode != 0 and not sacct.stdout.strip(), sacct
        assert "accounting storage is disabled" in sacct.stderr
        assert slurm("squeue", "-h", "-t", "all", "-j", job, "-o", "%T").stdout.strip() == "COMPLETED"
        shown = slurm("scontrol", "show", "job", job).stdout
        assert "JobState=COMPLETED" in shown and "Requeue=0" in shown  # JobRequeue=0: not requeueable
        config = slurm("scontrol", "show", "config").stdout
        assert re.search(r"^JobRequeue\s+= 0$", config, re.M)
        assert re.search(r"^AccountingStorageType\s+= accounting_storage/none$", config, re.M)

        with pytest.MonkeyPatch.context() as mp:  # what `hpcpipe cluster` says of such a site
            mp.setenv("SLURM_CONF", str(conf))
            checks = {check.name: check for check in run_checks(load_profile("testcluster", REPO), tmp_path)}
        assert checks["sacct"].info and "this site keeps no job accounting" in checks["sacct"].detail
        assert checks["requeue"].detail.startswith("JobRequeue=0: ")
        assert checks["preemption"].detail.startswith("none on this site")

        # the shared cluster, same node name on its own port: its job ran, its node is fine
        assert sacct_row(shared_job, timeout_s=120) == ("COMPLETED", "cpu")  # it may queue behind others
        node = slurm("sinfo", "-h", "-N", "-o", "%t", on=shared_env).stdout.split()
        assert node and set(node) <= {"idle", "mix", "alloc", "comp"}, node
    finally:
        stop = subprocess.run(
            ["bash", SCRIPTS / "stop", state], env=env, capture_output=True, text=True, timeout=120
        )
    assert stop.returncode == 0, stop.stderr
    assert "stopped slurmd slurmctld munged" in stop.stderr
    assert not list((state / "run").glob("*.pid"))
    assert run("scontrol", "ping").returncode == 0  # the shared one is still up
