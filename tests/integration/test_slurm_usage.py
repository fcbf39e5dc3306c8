"""What a job used, as the real test cluster's accounting records it (launch.usage).

Two real command stages, launched with `hpcpipe run` side by side: one holds 300 MB
and sleeps, one keeps its core busy for 6 s of CPU time. The cluster gathers usage
with jobacct_gather/linux every 5 s (slurm/testcluster/start), so holding the memory
for 8 s lets at least one sample see it. Figures are CPU time and memory, never
wall-clock: the CPUs are shared with whatever else runs. The sweep part reads the same
two jobs through a sweep record written here (a real array costs a DVC workspace per
point; array task ids are parsed in tests/unit/test_usage.py).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from hpcpipe.launch import usage
from hpcpipe.launch.ledger import Ledger
from hpcpipe.sweep import report
from hpcpipe.sweep.record import Attempt, Point, Sweep
from tests.support.commands import run_cli
from tests.support.launch_project import add_command_stage

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

MB = 1024**2
HOLD = "import time; b = b'x' * (300 << 20); time.sleep(8)"
BUSY = "import itertools, time; any(time.process_time() > 6 for _ in itertools.count())"


def settled(job_ids: list[str], timeout_s: float = 60) -> dict[str, usage.Usage]:
    """sacct's record once every job is final and its peak written (slurmdbd lags a little)."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = usage.query(job_ids) or {}
        jobs = [found.get(j) for j in job_ids]
        if all(j is not None and j.final and j.peak_bytes is not None for j in jobs):
            return found
        assert time.monotonic() < deadline, f"sacct has no final usage for {job_ids}: {found}"
        time.sleep(1)


def test_sacct_figures_of_a_job_holding_300_mb_and_of_a_busy_one(fake_stage_project: Path, slurm_cluster):
    project = fake_stage_project
    env = {**os.environ, "HPCPIPE_CLUSTER": "testcluster"}
    launchers = {
        name: subprocess.Popen(
            ["hpcpipe", *add_command_stage(project, name, ["python", "-c", code])],
            cwd=project,
            env=env,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, code in (("hold", HOLD), ("busy", BUSY))
    }
    errors = {name: proc.communicate(timeout=300)[1] for name, proc in launchers.items()}
    assert all(proc.returncode == 0 for proc in launchers.values()), errors
    ledger = Ledger(project / ".hpcpipe" / "jobs" / "ledger")
    ids = {name: ledger.get(name).job_id for name in launchers}
    found = settled(list(ids.values()))
    hold, busy = found[ids["hold"]], found[ids["busy"]]

    # 300 MB held, plus the Python interpreters of the job and of the command
    assert 300 * MB <= hold.peak_bytes <= 450 * MB, usage.describe(hold)
    assert busy.peak_bytes < 200 * MB, usage.describe(busy)
    assert hold.mem_bytes == busy.mem_bytes == 2048 * MB  # the profile's mem_gb: 2
    assert (hold.cpus, hold.gpus, hold.limit_s) == (1, 0, 600)
    assert busy.cpu_s >= 6 > hold.cpu_s, (busy, hold)
    assert busy.cpu_efficiency > 2 * hold.cpu_efficiency, (busy, hold)

    # the launcher's closing line: the final figures, or none where sacct lagged the end
    for name, err in errors.items():
        lines = [line for line in err.splitlines() if f"{name}: job {ids[name]} used" in line]
        assert lines in ([], [f"hpcpipe: {name}: job {ids[name]} used {usage.describe(found[ids[name]])}"])

    status = run_cli("status", cwd=project, env={"HPCPIPE_CLUSTER": "testcluster"})
    assert status.returncode == 0, status.stderr
    shown = status.stdout.splitlines()
    assert f"hold: job {ids['hold']} used {usage.describe(hold)}" in shown, status.stdout
    assert (
        "hold: used under a quarter of its memory (peak "
        f"{hold.peak_bytes / MB:.0f} MB of 2.0 GB); ask for less with "
        "`stages: hold: mem_gb: 1` in configs/cluster/testcluster.yaml"
    ) in shown, status.stdout

    # a sweep's points the same way, from one sacct call; its advice names the entries that
    # set what a point asks for (no `stages: sweep:` entry: each stage it runs)
    points = [
        Point(n, name, {}, name, [Attempt(ids[name], "slurm", "", 0.0)], state="DONE")
        for n, name in ((1, "hold"), (2, "busy"))
    ]
    sweep = Sweep("s", "testcluster", "", [], ["hold", "busy"], [], [], 2, points=points)
    assert report.usage_lines(project, sweep) == [
        f"point 1 (job {ids['hold']}): used {usage.describe(hold)}",
        f"point 2 (job {ids['busy']}): used {usage.describe(busy)}",
        f"sweep s: used under a quarter of its memory (peak {hold.peak_bytes / MB:.0f} MB of 2.0 GB); "
        "ask for less with `stages: hold: mem_gb: 1`, `stages: busy: mem_gb: 1` "
        "in configs/cluster/testcluster.yaml",
    ]
