"""A cancelled job never publishes (issue 13, point 2), on the real Slurm test cluster.

``scancel`` sends the job SIGTERM; submitit's job process only logs it ("Bypassing
signal SIGTERM") and runs on until Slurm's KillWait (5 s on the test cluster) ends in
SIGKILL. A stage that returned inside that window used to publish its outputs anyway,
for a job that Slurm and the launcher call CANCELLED. Here the stage has written its
outputs and waits for the file ``go``; the test cancels the job, waits until the job's
log shows it took the SIGTERM, and lets it return at once, well inside KillWait.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from hpcpipe.launch.ledger import Ledger
from tests.support.commands import wait_for
from tests.support.launch_project import start
from tests.support.slurm import sacct_row, squeue_state

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def test_a_job_cancelled_before_it_returns_publishes_nothing(slurm_project: Path):
    out = slurm_project / "out"
    (out / "report").mkdir(parents=True)
    (out / "result.txt").write_text("previous result")
    (out / "report" / "summary.json").write_text(json.dumps({"previous": True}))

    driver = start(slurm_project, "write_then_wait_for_go")
    waiting = slurm_project / "waiting"
    wait_for(lambda: waiting.exists() or driver.poll() is not None, timeout=240)
    assert waiting.exists(), driver.communicate()
    entry = Ledger(slurm_project / ".hpcpipe" / "jobs" / "ledger").get("fake")
    subprocess.run(["scancel", entry.job_id], check=True, timeout=60)
    stderr = Path(entry.stderr)
    wait_for(lambda: "Bypassing signal SIGTERM" in stderr.read_text(errors="replace"), timeout=30)
    (slurm_project / "go").write_text("")  # the stage returns now: inside KillWait
    driver.communicate(timeout=120)
    wait_for(lambda: squeue_state(entry.job_id) == "", timeout=60)  # every process of the job ended

    assert (out / "result.txt").read_text() == "previous result"
    assert json.loads((out / "report" / "summary.json").read_text()) == {"previous": True}
    assert sorted(p.name for p in out.iterdir()) == ["report", "result.txt"]  # no staged copy left
    assert driver.returncode != 0  # the job ended failed: the launcher does not call it done
    log = stderr.read_text(errors="replace")
    assert "outputs will not be published" in log
    assert sacct_row(entry.job_id)[0].startswith("CANCELLED")
