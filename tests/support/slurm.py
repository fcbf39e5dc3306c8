"""The real one-node Slurm test cluster for tests: a session fixture, a second cluster, sacct helpers.

`slurm_cluster` starts slurm/testcluster/start once per session unless it is
already running, exports SLURM_CONF, and stops the cluster at the end only if it
started it. Without Slurm installed (slurm/testcluster/install, as root) the
tests that use it skip, except under CI, where they fail.

`jobs_named`, `squeue_state` and `sacct_row` say what Slurm knows of a test's jobs;
`now` is a start time for `jobs_named`. `send_warning` gives a running job Slurm's
time-limit warning now, rather than a test waiting for its time limit.

`second_cluster` starts another one beside it, configured otherwise (start's
``HPCPIPE_TESTCLUSTER_*`` settings, e.g. ``JOB_REQUEUE="0"``), in its own folder and on
its own ports, for a test that needs a site unlike the shared cluster; it stops it
and removes its folder afterwards. Its slurmd serves a node of the same name: each
daemon answers only its own slurmctld, so the two clusters do not see each other's
jobs, only share the CPUs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO

SCRIPTS = REPO / "slurm" / "testcluster"
EXPORT = re.compile(r"^export SLURM_CONF=(/\S+/slurm\.conf)$")
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
DONE = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED")


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path
    started: bool  # False: it was already running, and is left running
    start_s: float


def run(*cmd: str | Path, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr}")
    return proc


def start_cluster(env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    began = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPTS / "start")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    return proc, time.monotonic() - began


def exported_conf(proc: subprocess.CompletedProcess) -> Path:
    lines = proc.stdout.splitlines()
    match = EXPORT.match(lines[-1]) if lines else None
    assert match, f"start's last stdout line is not `export SLURM_CONF=...`:\n{proc.stdout}"
    return Path(match.group(1))


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    missing = [daemon for daemon in DAEMONS if not shutil.which(daemon)]
    if missing or os.geteuid() != 0:
        why = f"missing {', '.join(missing)}" if missing else "not root"
        message = f"Slurm test cluster unavailable ({why}): run slurm/testcluster/install as root"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    proc, seconds = start_cluster()
    if proc.returncode != 0:
        run("bash", SCRIPTS / "stop", check=False)  # what it started before it failed
        pytest.fail(f"slurm/testcluster/start failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
    conf = exported_conf(proc)
    cluster = SlurmCluster(conf, started=proc.stdout.startswith("# testcluster: started"), start_s=seconds)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(conf))
        try:
            yield cluster
        finally:
            if cluster.started:
                run("bash", SCRIPTS / "stop", conf.parent)


def free_port_base(first: int = 17017, step: int = 100) -> int:
    """The first of ``first``, ``first + step``, ... whose five ports (start's slurmctld,
    slurmd, slurmdbd, MariaDB, the second node's slurmd) nothing on 127.0.0.1 listens on."""
    for base in range(first, first + 20 * step, step):
        taken = False
        for port in range(base, base + 5):
            with socket.socket() as probe:
                taken = taken or probe.connect_ex(("127.0.0.1", port)) == 0
        if not taken:
            return base
    raise AssertionError(f"no five free ports from {first} on 127.0.0.1")


@contextlib.contextmanager
def second_cluster(folder: Path, **settings: str) -> Iterator[Path]:
    """Another test cluster, with start's ``HPCPIPE_TESTCLUSTER_<KEY>=value`` settings, while
    the block runs; yields its slurm.conf (pass it as SLURM_CONF to commands meant for it).
    Needs what ``slurm_cluster`` needs: ask for that fixture first, so a machine without
    Slurm skips."""
    env = {f"HPCPIPE_TESTCLUSTER_{key.upper()}": value for key, value in settings.items()}
    env.update(HPCPIPE_TESTCLUSTER_DIR=str(folder), HPCPIPE_TESTCLUSTER_PORT=str(free_port_base()))
    proc, _ = start_cluster(env)
    try:
        if proc.returncode != 0:
            pytest.fail(f"slurm/testcluster/start ({env}) failed ({proc.returncode}):\n{proc.stderr[-6000:]}")
        yield exported_conf(proc)
    finally:
        run("bash", SCRIPTS / "stop", folder, check=False)
        shutil.rmtree(folder, ignore_errors=True)  # its accounting database: 160 MB


def sacct_row(job_id: str, timeout_s: float = 20) -> tuple[str, str]:
    """(State, Partition) of the job's allocation once it has ended and reached the database.

    Slurm 22.05 first shows a short job's row with its final state but an empty
    Partition; the full row follows up to ~3 s later (seen here with `--wrap true`).
    """
    deadline = time.monotonic() + timeout_s
    row: list[str] = []
    while time.monotonic() < deadline:
        out = run("sacct", "-j", job_id, "-n", "-P", "-o", "JobID,State,Partition").stdout
        rows = [line.split("|") for line in out.splitlines()]
        # the last: after a crash slurmctld may reuse an id it had not saved
        row = next((r for r in reversed(rows) if r[0] == job_id), [])
        if row and row[1].split()[0] in DONE and row[2]:
            return row[1], row[2]
        time.sleep(0.5)
    raise AssertionError(f"sacct has no finished record of job {job_id} after {timeout_s}s (last: {row})")


def now() -> str:
    """A second ago, as sacct's ``-S`` takes it: ``jobs_named(name, now())`` later lists the
    jobs submitted from here on."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 1))


def jobs_named(name: str, since: str, workdir: Path | None = None) -> list[str]:
    """Ids of the jobs called ``name`` since ``since``; with ``workdir``, only those submitted
    from there (the test cluster may be shared with another test session)."""
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "--name", name, "-S", since, "-o", "JobID,WorkDir"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("|", 1) for line in out.splitlines() if line]
    here = workdir.resolve() if workdir else None
    return sorted({job for job, where in rows if here is None or Path(where).resolve() == here})


def jobs_named_once_recorded(name: str, since: str, workdir: Path, timeout_s: float = 30) -> list[str]:
    """``jobs_named`` once at least one such job has reached the database with its WorkDir:
    slurmdbd records a job asynchronously, and a loaded machine shows its row late (see
    ``sacct_row``). For asserting how many ran; ``jobs_named`` alone for "none ran"."""
    deadline = time.monotonic() + timeout_s
    while not (found := jobs_named(name, since, workdir)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def squeue_state(job_id: str) -> str:
    """The job's state in squeue ("" once Slurm no longer lists it)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout
    return out.strip()


def running_job(project: Path, stage: str = "fake", timeout_s: float = 60) -> str:
    """The id of the job a launcher in ``project`` submitted for ``stage``, once the ledger
    has it and Slurm runs it (a test about to kill the launcher waits for both)."""
    from tests.support.commands import wait_for
    from tests.support.launch_project import ledger_job

    wait_for(lambda: ledger_job(project, stage) is not None, timeout=timeout_s, what=f"{stage} in the ledger")
    job_id = ledger_job(project, stage)
    assert job_id is not None
    wait_for(lambda: squeue_state(job_id) == "RUNNING", timeout=timeout_s, what=f"job {job_id} RUNNING")
    return job_id


def send_warning(job_id: str, signal_name: str = "USR2") -> None:
    """Slurm's warning before the time limit, sent now: what ``--signal=USR2@N`` (no ``B:``)
    makes slurmctld do N seconds before the limit, the signal to every step of the job (the
    processes submitit runs), not the batch shell. A test sends it once the stage runs
    rather than waiting a minute or more for a real limit: Slurm checks limits only every
    30 s, and a minute is its shortest. submitit treats a warning within the first minutes
    of a job as its time limit (``SignalHandler.has_timed_out``), as it would at the limit."""
    run("scancel", f"--signal={signal_name}", job_id)
