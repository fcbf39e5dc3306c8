"""A command stage on two tasks on the two-node test cluster: torchrun's variables, the worst
rank's exit status, and a requeue of the whole allocation.

The stage is a user's own script (tests/support/ranks_script.py), declared in the temp
project's dvc.yaml as `hpcpipe run NAME -- python ranks_script.py ...`, with a project
profile whose defaults are `{nodes: 2, tasks_per_node: 1}`: one task on each of the test cluster's
two nodes (slurm/testcluster/start: this machine's name and `localhost`, two slurmd).
Only the all_reduce test imports torch (a few seconds per task); the others are plain
Python.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.commands import wait_for
from tests.support.launch_project import (
    FAKE_OUTS,
    FAKE_PATHS,
    add_command_stage,
    add_stage,
    quoted,
    role_args,
)
from tests.support.slurm import REPO

pytestmark = [pytest.mark.slurm]

TWO_NODES = {"nodes": 2, "tasks_per_node": 1, "time_min": 5}


@pytest.fixture
def scale_project(fake_stage_project: Path, slurm_cluster) -> Path:
    """The project, the script, and a profile giving the scale stages two nodes."""
    (fake_stage_project / "ranks_script.py").write_text((REPO / "tests/support/ranks_script.py").read_text())
    profile = {"extends": "testcluster", "defaults": TWO_NODES}
    profiles = fake_stage_project / "configs" / "cluster"
    (profiles / "testcluster-scale.yaml").write_text(yaml.safe_dump(profile))
    return fake_stage_project


def launch(project: Path, name: str, command: list[str], outs: list[str] = ()) -> subprocess.Popen:
    args = add_command_stage(project, name, ["python", "ranks_script.py", *command], outs=outs)
    return _hpcpipe(project, args)


def launch_function(project: Path, name: str, function: str) -> subprocess.Popen:
    """Function stage ``ranks_script.FUNCTION`` on the two-task profile."""
    args = ["run", name, "--fn", f"ranks_script:{function}", *role_args(FAKE_PATHS)]
    stage = {"cmd": " ".join(["hpcpipe", *args]), "deps": ["source.txt", "ranks_script.py"]}
    add_stage(project, name, {**stage, "params": ["train"], "outs": list(FAKE_OUTS)})
    return _hpcpipe(project, args)


def _hpcpipe(project: Path, args: list[str]) -> subprocess.Popen:
    """``hpcpipe ARGS`` in ``project`` on the two-task profile, in a session of its own."""
    return subprocess.Popen(
        ["hpcpipe", *args],
        cwd=project,
        env={**os.environ, "HPCPIPE_CLUSTER": "testcluster-scale"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def job_of(err: str, name: str) -> str:
    (job_id,) = set(re.findall(rf"{name}: job (\d+) submitted", err))
    return job_id


def test_two_tasks_on_two_nodes_all_reduce_with_torchruns_variables(scale_project: Path):
    driver = launch(scale_project, "reduce", ["allreduce", "out/reduce.json"], outs=["out/reduce.json"])
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    result = json.loads((scale_project / "out" / "reduce.json").read_text())
    assert result["sum"] == 3.0  # (0 + 1) + (1 + 1)
    ranks = result["ranks"]
    assert [r["RANK"] for r in ranks] == ["0", "1"] and {r["WORLD_SIZE"] for r in ranks} == {"2"}
    assert {r["LOCAL_RANK"] for r in ranks} == {"0"} and {r["LOCAL_WORLD_SIZE"] for r in ranks} == {"1"}
    assert len({r["node"] for r in ranks}) == 2  # one task on each node
    assert ranks[0]["MASTER_ADDR"] == ranks[1]["MASTER_ADDR"] == ranks[0]["node"]  # rank 0's node
    assert ranks[0]["MASTER_PORT"] == ranks[1]["MASTER_PORT"] != "29500"


def test_a_failing_rank_stops_the_others_and_gives_the_job_its_status(scale_project: Path):
    """Rank 1 exits 3 while rank 0 waits for it (as a peer blocked in a collective would):
    rank 0's command is stopped, the job exits 3, and the stderr tail names rank 1."""
    driver = launch(scale_project, "broken", ["fail", "1", "3"])
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 3, err
    tail = "\n".join(quoted(err))
    assert re.search(r"rank 1 of 2, on \S+ exited with status 3", tail), tail
    assert re.search(r"broken: job \d+ FAILED after .*: command exited with status 3", err), err


@pytest.mark.parametrize(
    "how",
    [
        ["scontrol", "requeue"],  # no warning: SIGTERM to every task, then requeued by Slurm
        ["scancel", "--signal=USR2"],  # what --signal=USR2@N sends before the time limit
    ],
    ids=["scontrol-requeue", "time-limit-warning"],
)
def test_a_requeued_two_task_stage_resumes_every_rank_from_its_checkpoint_dir(scale_project: Path, how):
    """After both ranks saved, the job is requeued: by `scontrol requeue`, or at Slurm's
    warning, which reaches every task (each forwards SIGTERM to its command; rank 0 requeues
    the allocation). The whole allocation comes back under the same job id, and both ranks
    find what they saved in the same HPCPIPE_CHECKPOINT_DIR."""
    progress = scale_project / "progress"
    driver = launch(
        scale_project, "resumed", ["resume", "out/resumed.json", str(progress)], outs=["out/resumed.json"]
    )
    try:
        wait_for(lambda: len(list(progress.glob("saved-*"))) == 2 or driver.poll() is not None, timeout=240)
        assert driver.poll() is None, driver.communicate()[1]
    except BaseException:
        driver.kill()
        raise
    job_id = (progress / "saved-0").read_text()
    subprocess.run([*how, job_id], check=True, capture_output=True)
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    assert job_of(err, "resumed") == job_id and f"job {job_id} requeued by Slurm" in err
    ends = json.loads((scale_project / "out" / "resumed.json").read_text())
    assert [(e["rank"], e["step"]) for e in ends] == [("0", 1), ("1", 1)]
    assert {e["restart"] for e in ends} == {"1"}
    stopped = sorted(p.name for p in progress.glob("sigterm-*"))
    assert stopped == ["sigterm-0", "sigterm-1"]  # every rank's command was stopped
    if how[0] == "scancel":  # rank 1 was told by the warning, not only killed by the requeue
        first = scale_project / ".hpcpipe" / "jobs" / "resumed" / f"{job_id}_ranks" / "attempt-0"
        assert json.loads((first / "rank-1.json").read_text())["warned"] is True


def test_a_two_task_function_stage_publishes_rank_0s_outputs_only(scale_project: Path):
    driver = launch_function(scale_project, "everywhere", "write_rank")
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, err
    assert (scale_project / "out" / "result.txt").read_text() == "rank 0 of 2"
    assert json.loads((scale_project / "out" / "report" / "rank.json").read_text())["rank"] == "0"
    assert sorted(p.name for p in (scale_project / "out").iterdir()) == ["report", "result.txt"]


def test_a_rank_that_raises_fails_the_function_stage_and_nothing_is_published(scale_project: Path):
    driver = launch_function(scale_project, "halfway", "fail_on_rank_1")
    _, err = driver.communicate(timeout=300)
    assert driver.returncode == 1, err
    assert re.search(
        r"rank 1 of 2, on \S+ raised ValueError: rank 1 broke on purpose: outputs not published", err
    )
    assert not (scale_project / "out" / "result.txt").exists()
