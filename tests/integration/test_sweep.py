"""``hpcpipe sweep`` end to end: real dvc, real git, point workspaces, real jobs.

Local sweeps run submitit's local executor; the array test runs on the real
one-node Slurm test cluster (slurm/testcluster). W&B is the real library, offline.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from hpcpipe.sweep import record
from hpcpipe.tracking.records import read_run
from hpcpipe.tracking.run import segments
from tests.support.commands import commit_all, experiments, git, run_cli
from tests.support.project import update_params
from tests.support.slurm import jobs_named, now


def overlapping(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


# --------------------------------------------------------------------------- bad input: nothing made
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["-S", "train.lr=fast,0.1"],
            "point 1 (train.lr=fast): params.yaml: train.lr: expected a number like its value",
        ),
        (  # the train function stage's schema, read from its --fn declaration
            ["-S", "train.lr=0.1,-1"],
            "point 2 (train.lr=-1): params.yaml: train.lr: expected a number > 0",
        ),
        (["-S", "train.nope=1,2"], "unknown key 'nope' in train"),
        (["-S", "train.lr=interval(0,1)"], "interval() is not supported"),
        (["-S", "wandb.project=a,b"], "no stage reads wandb.project"),
        (["-S", "train.lr=0.1", "--detach"], "drop --detach, or use a Slurm profile"),
        (["-S", "train.lr=0.1", "--parallelism", "0"], "--parallelism must be >= 1"),
        (["-S", "train.lr=0.1", "--name", "a/b"], "sweep name 'a/b'"),
        ([], "give at least one -S"),
    ],
)
def test_bad_sweeps_are_one_line_and_submit_nothing(project: Path, args, message):
    commit_all(project)
    done = run_cli("sweep", *args, cwd=project)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert not (project / record.SWEEPS_DIR).exists() or not any((project / record.SWEEPS_DIR).iterdir())
    assert len(git(project, "worktree", "list").splitlines()) == 1  # no point's worktree left behind


def test_status_of_an_unknown_sweep(project: Path):
    done = run_cli("sweep", "status", "nope", cwd=project)
    assert done.returncode == 2 and "no sweep named 'nope'" in done.stderr


def test_a_sweep_needs_a_commit_to_base_experiments_on(project: Path):
    done = run_cli("sweep", "-S", "train.lr=0.1,0.2", cwd=project)
    assert done.returncode == 2 and "commit first" in done.stderr


# --------------------------------------------------------------------------- local executor
@pytest.mark.slow
def test_local_sweep_runs_points_in_parallel_and_each_becomes_an_experiment(project: Path):
    update_params(project, wandb={"enabled": True})
    commit_all(project)
    done = run_cli(
        "sweep", "-S", "train.lr=0.1,0.05", "-S", "train.batch_size=16,32", "--parallelism", "2",
        "--name", "grid", cwd=project,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "4 of 4 points saved as experiments" in done.stderr

    found = experiments(project)
    names = sorted(n for n in found if n.startswith("grid-"))
    assert len(names) == 4, found.keys()
    grid = {(found[n]["params"]["train"]["lr"], found[n]["params"]["train"]["batch_size"]) for n in names}
    assert grid == {(0.1, 16), (0.1, 32), (0.05, 16), (0.05, 32)}
    assert all("test_accuracy" in found[n]["metrics"]["metrics/evaluate.json"] for n in names)

    sweep = record.load(project, "grid")
    spans = []
    for point in sweep.points:
        attempt = point.attempts[-1]
        result = Path(attempt.folder) / f"{attempt.job_id}_0_result.pkl"
        spans.append((attempt.submitted_at, result.stat().st_mtime))
        runs = list((project / point.workspace / "wandb").glob("*/segment-*"))
        assert {read_run(segments(r.parent)[-1]).group for r in runs} == {"grid"}  # one W&B group
    assert overlapping(spans) == 2  # in parallel, never more than --parallelism

    applied = run_cli("sweep", "status", "grid", cwd=project)
    assert applied.returncode == 0 and applied.stdout.count("COMPLETED") == 4
    subprocess.run(["dvc", "exp", "apply", "grid-lr-0.1-batch_size-16"], cwd=project, check=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    assert (params["train"]["lr"], params["train"]["batch_size"]) == (0.1, 16)
    assert (project / "models" / "model.pt").exists()  # from the shared cache

    # `sweep clean`: refused while a point's W&B run is not uploaded, then removes the
    # workspaces and keeps the experiments (no W&B server here: the runs are removed by
    # hand, as the refusal says one may)
    refused = run_cli("sweep", "clean", "grid", cwd=project)
    assert refused.returncode == 2 and "W&B run(s) of its points are not uploaded" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    for point in sweep.points:
        shutil.rmtree(project / point.workspace / "wandb")
    cleaned = run_cli("sweep", "clean", "grid", cwd=project)
    assert cleaned.returncode == 0, cleaned.stderr
    assert "removed its 4 workspaces" in cleaned.stderr
    assert not (project / record.SWEEPS_DIR / "grid").exists()
    assert sorted(n for n in experiments(project) if n.startswith("grid-")) == names


# --------------------------------------------------------------------------- Slurm job array
def wait_until_final(project: Path, name: str, timeout_s: float = 300) -> record.Sweep:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert run_cli("sweep", "status", name, cwd=project).returncode == 0
        sweep = record.load(project, name)
        if all(p.state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT") for p in sweep.points):
            return sweep
        time.sleep(2)
    raise AssertionError(f"sweep {name} not over after {timeout_s} s: {[p.state for p in sweep.points]}")


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_sweep_is_one_array_prepare_runs_once_and_resume_reruns_only_the_failed(
    project: Path, slurm_cluster, monkeypatch
):
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
    commit_all(project)
    since = now()
    waiting = subprocess.Popen(
        ["hpcpipe", "sweep", "-S", "train.lr=0.1,0.05", "-S", "train.batch_size=16,32", "--parallelism", "2",
         "--name", "arr"],
        cwd=project, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    path = project / record.SWEEPS_DIR / "arr" / record.RECORD_FILE
    deadline = time.monotonic() + 240
    while not path.exists():  # written once the workspaces exist, before the sbatch
        assert time.monotonic() < deadline and waiting.poll() is None, "the sweep never wrote its record"
        time.sleep(0.1)
    sweep = record.load(project, "arr")
    busy = run_cli("sweep", "clean", "arr", cwd=project)  # its points are queued: nothing removed
    assert busy.returncode == 2 and "still queued or running" in busy.stderr, busy.stderr
    assert len(busy.stderr.strip().splitlines()) == 1 and path.exists()
    # Break the last point's workspace while it waits behind the %2 limit: a missing
    # stage dependency makes its `dvc repro` fail, as a lost file on scratch would.
    broken = project / sweep.points[-1].workspace / "src" / "hpcpipe" / "stages" / "train.py"
    broken.unlink()
    _, err = waiting.communicate(timeout=600)
    assert waiting.returncode == 1, err  # it waited, and one point failed
    assert "3 of 4 points saved as experiments, 1 not (4)" in err
    assert "hpcpipe sweep resume arr" in err

    sweep = record.load(project, "arr")
    assert [p.state for p in sweep.points] == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED"]
    arrays = {p.attempts[-1].job_id.split("_")[0] for p in sweep.points}
    assert len(arrays) == 1  # ONE sbatch
    array = arrays.pop()
    tasks = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", array, "-o", "JobID,State"], capture_output=True, text=True
    ).stdout.split()
    assert sorted(tasks) == [f"{array}_{i}|{s}" for i, s in enumerate(["COMPLETED"] * 3 + ["FAILED"])]
    assert len(jobs_named("hpcpipe-prepare", since, project)) == 1  # prepare once, for every point
    logs = "".join(p.read_text() for p in (project / record.SWEEPS_DIR / "arr" / "jobs").glob("*_log.out"))
    assert "Running stage 'train'" in logs and "Running stage 'prepare'" not in logs
    assert len([n for n in experiments(project) if n.startswith("arr-")]) == 3  # the others are kept

    base = project / record.SWEEPS_DIR / "arr" / "base" / "src" / "hpcpipe" / "stages" / "train.py"
    os.link(base, broken)  # the point's link to the sweep's checkout, back
    resumed = run_cli("sweep", "resume", "arr", "--detach", cwd=project, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resubmitting 1 of 4 points" in resumed.stderr
    after = wait_until_final(project, "arr")  # `sweep status` brings it in as an experiment
    assert [p.state for p in after.points] == ["COMPLETED"] * 4
    assert [len(p.attempts) for p in after.points] == [1, 1, 1, 2]  # only the failed point again
    assert after.points[-1].attempts[-1].job_id.split("_")[0] != array  # as a new array
    assert len([n for n in experiments(project) if n.startswith("arr-")]) == 4
    assert len(jobs_named("hpcpipe-prepare", since, project)) == 1


@pytest.mark.slow
def test_ctrl_c_cancels_the_running_point_and_keeps_the_rest_resumable(project: Path):
    commit_all(project)
    sweep = subprocess.Popen(
        ["hpcpipe", "sweep", "-S", "train.lr=0.1,0.05,0.02", "--parallelism", "1", "--name", "stop"],
        cwd=project,
        stderr=subprocess.PIPE,
        text=True,
    )
    path = project / record.SWEEPS_DIR / "stop" / record.RECORD_FILE
    deadline = time.monotonic() + 120
    while not (path.exists() and "RUNNING" in path.read_text()):
        assert time.monotonic() < deadline and sweep.poll() is None, "the sweep never started a point"
        time.sleep(0.2)
    sweep.send_signal(signal.SIGINT)
    _, err = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, err
    assert "hpcpipe sweep resume stop" in err
    states = [p.state for p in record.load(project, "stop").points]
    assert states == ["CANCELLED", "WAITING", "WAITING"], states
    pid = int(record.load(project, "stop").points[0].attempts[-1].job_id)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
        assert time.monotonic() < deadline, "the cancelled point's process is still running"
        time.sleep(0.2)


def du_bytes(path: Path) -> int:
    """Disk used under ``path``, each hard-linked file counted once (du's own rule)."""
    return int(
        subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True).stdout.split()[0]
    )


def test_a_points_workspace_holds_only_what_its_stages_need(project: Path):
    """Issue 17: a 50 MB file no stage reads (made here, in the test's repo) is in no
    workspace; each point costs well under 0.5 MB beyond the sweep's one checkout, and
    still has what DVC and its stages need, uncommitted changes included."""
    from hpcpipe.sweep import snapshot, workspace
    from hpcpipe.sweep.pipeline import DvcProject, plan
    from hpcpipe.sweep.points import index_path, make_workspaces, points_of

    (project / "notebooks").mkdir(exist_ok=True)
    with open(project / "notebooks" / "big.bin", "wb") as handle:
        handle.write(os.urandom(50 * 1024 * 1024))
    commit_all(project)
    train = project / "src" / "hpcpipe" / "stages" / "train.py"
    train.write_text(train.read_text() + "\n# an uncommitted change\n")
    grid = [{"train.lr": 0.01 * (i + 1)} for i in range(16)]
    points = points_of("many", grid)
    index = index_path(project, "many")
    snapshot.snapshot(project, workspace.base_commit(project), index)
    with DvcProject(project) as dvc:
        nodes = dvc.nodes()
        cache = dvc.cache_dir()
    affected = plan(nodes, ["train.lr"]).affected
    make_workspaces(project, "many", points, snapshot.tree_files(project, index), nodes, affected)
    folder = project / record.SWEEPS_DIR / "many"
    for point in points:
        where = project / point.workspace
        params = yaml.safe_load((where / "params.yaml").read_text())
        assert params["train"]["lr"] == point.overrides["train.lr"]
        assert (where / "src" / "hpcpipe" / "stages" / "train.py").read_text() == train.read_text()
        assert (where / "dvc.yaml").exists() and (where / "data" / "raw.dvc").exists()
        assert not (where / "notebooks").exists() and not (where / "tests").exists()
    assert not list(folder.rglob("big.bin"))
    per_point = (du_bytes(folder) - du_bytes(folder / "base")) / len(points)
    assert per_point <= 0.5e6, per_point
    assert du_bytes(folder / "base") < 2e6  # the code and DVC files, never the 50 MB

    first = project / points[0].workspace
    workspace.finish(project, first, cache)
    listed = subprocess.run(["dvc", "stage", "list"], cwd=first, capture_output=True, text=True)
    assert listed.returncode == 0 and "train" in listed.stdout, listed.stderr
    no_scm = subprocess.run(["dvc", "config", "core.no_scm"], cwd=first, capture_output=True, text=True)
    assert no_scm.stdout.strip() == "true"  # DVC in a point never stages files in the project's git
    changed = git(project, "status", "--porcelain", "--untracked-files=no").splitlines()
    assert changed == [" M src/hpcpipe/stages/train.py"]  # the project's index untouched
