"""Sweeps under faults (issue 13, point 9): each case on real components.

The project is the tutorial example (tests/support/tutorial: plain `python src/*.py`
stages, a whole repro in seconds), with the real `dvc` and `git` CLIs. Where Slurm is
part of the case the array goes to the real test cluster: its refusal is a real one
(a sweep task asking for more memory than the node has). Two things cannot be made to
happen on demand, and are stood in for at the process boundary, by a PATH shim: a
Ctrl-C that lands while `sbatch` runs (a shim that runs the real sbatch, then sends
SIGINT to the sweep before printing the job id). A refused `scancel`: tests/unit/test_sweep_cancel.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import yaml

from hpcpipe.sweep import record, workspace
from hpcpipe.validation import ConfigError
from tests.support.commands import git, run_cli


def experiment_params(root: Path) -> dict[str, dict]:
    """``dvc exp show --json``: experiment name -> its params.yaml, every baseline."""
    out = subprocess.run(
        ["dvc", "exp", "show", "--json", "--all-commits"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = {}
    for baseline in json.loads(out):
        for branch in baseline.get("experiments") or []:
            for rev in branch["revs"]:
                found[rev["name"]] = rev["data"]["params"]["params.yaml"]["data"]
    return found


def worktrees(root: Path) -> int:
    return len(git(root, "worktree", "list").splitlines())


def shim(folder: Path, name: str, body: str) -> Path:
    """An executable ``name`` in ``folder``, to put first on PATH."""
    folder.mkdir(exist_ok=True)
    path = folder / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return folder


def slurm_jobs(name: str) -> dict[str, str]:
    """Job id -> state of every job or array task called ``name`` that Slurm knows: from
    slurmctld (squeue, which keeps ended jobs for MinJobAge) and from accounting (sacct,
    which may lag behind a second or two)."""
    found = {}
    for command in (
        ["sacct", "-n", "-P", "-X", "--name", name, "-S", "now-1hour", "-o", "JobID,State"],
        ["squeue", "-h", "-r", "-t", "all", "--name", name, "-o", "%i|%T"],
    ):
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        found.update(line.split("|")[:2] for line in out.splitlines() if line)
    return found


@pytest.fixture
def unique_name() -> str:
    """A sweep name no other test session on the shared cluster uses."""
    return f"t{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- workspaces
def test_point_workspaces_get_the_projects_config_local(tutorial_project: Path, tmp_path: Path):
    """The project's own local DVC settings (hardlink locks and a group-shared cache on
    Lustre, a scratch remote given relative to .dvc/) hold in every point's worktree."""
    root = tutorial_project
    store = tmp_path / "store"
    (root / ".dvc" / "config.local").write_text(
        "[core]\n    hardlink_lock = true\n    remote = scratch\n"
        "[cache]\n    shared = group\n"
        f"['remote \"scratch\"']\n    url = {os.path.relpath(store, root / '.dvc')}\n"
    )
    point = root / ".hpcpipe" / "sweeps" / "s" / "points" / "001-x"
    git(root, "worktree", "add", "--detach", "--quiet", str(point), "HEAD")
    cache = root / ".dvc" / "cache"
    workspace.finish(root, point, cache)

    done = subprocess.run(["dvc", "config", "--list"], cwd=point, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert config["core.hardlink_lock"] == "true"
    assert config["cache.shared"] == "group"
    assert Path(config["cache.dir"]) == cache  # the project's cache, absolute
    url = config["remote.scratch.url"]
    assert (point / ".dvc" / url).resolve() == store.resolve()  # the same place, seen from here
    assert "hardlink" in config["cache.type"]


# --------------------------------------------------------------------------- experiments
@pytest.mark.slow
def test_an_experiment_name_that_exists_is_never_overwritten(tutorial_project: Path):
    """The user's own experiment `s-lr-0.1` keeps its params; the sweep's point of that
    name is saved beside it, as `s-lr-0.1-2`, and the sweep says so."""
    root = tutorial_project
    mine = subprocess.run(
        ["dvc", "exp", "run", "-q", "-n", "s-lr-0.1", "-S", "train.lr=0.3"], cwd=root, capture_output=True
    )
    assert mine.returncode == 0, mine.stderr
    subprocess.run(["dvc", "checkout", "-q", "--force"], cwd=root, check=True)  # params as committed
    done = run_cli("sweep", "-S", "train.lr=0.1", "--name", "s", cwd=root)
    assert done.returncode == 0, done.stderr
    assert (
        "saved as experiment s-lr-0.1-2 (an experiment s-lr-0.1 exists already, and is kept)" in done.stderr
    )

    found = experiment_params(root)
    assert found["s-lr-0.1"]["train"]["lr"] == 0.3  # the user's, untouched
    assert found["s-lr-0.1-2"]["train"]["lr"] == 0.1
    assert record.load(root, "s").points[0].experiment == "s-lr-0.1-2"
    # the experiment as `dvc exp save` makes it (issue 17: made with git's plumbing): a
    # child of HEAD holding the project with the point's files; no DVC-cached output in git
    head = git(root, "rev-parse", "HEAD").strip()
    ref = f"refs/exps/{head[:2]}/{head[2:]}/s-lr-0.1-2"
    assert git(root, "log", "-1", "--format=%P %s", ref).split()[:4] == [head, "dvc:", "commit", "experiment"]
    changed = set(git(root, "diff", "--name-only", "HEAD", ref).split())
    assert {"params.yaml", "dvc.lock"} <= changed
    assert all(c in ("params.yaml", "dvc.lock") or c.endswith(".gitignore") or c.startswith("eval/")
               for c in changed), changed  # fmt: skip
    tree = git(root, "ls-tree", "-r", "--name-only", ref).split()
    assert set(git(root, "ls-tree", "-r", "--name-only", "HEAD").split()) <= set(tree)
    assert not [f for f in tree if f.startswith(("data/", "models/")) and not f.endswith(".gitignore")]


# --------------------------------------------------------------------------- the name
def test_a_sweep_name_is_claimed_once(tutorial_project: Path):
    """A second `hpcpipe sweep --name s` while the first (here on another login node) is
    still making its worktrees stops in one line, makes nothing and removes nothing of
    the first's. The first's claim is its folder, as `record.claim` makes it."""
    root = tutorial_project
    theirs = record.sweep_dir(root, "s")
    (theirs / "points" / "001-lr-0.1").mkdir(parents=True)  # a worktree on its way
    (theirs / "claim.json").write_text(json.dumps({"host": "login2", "pid": 4242, "time": time.time()}))
    done = run_cli("sweep", "-S", "train.lr=0.1,0.2", "--name", "s", cwd=root)
    assert done.returncode == 2, done.stderr
    assert "sweep 's' is being set up by pid 4242 on login2" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert sorted(p.name for p in theirs.iterdir()) == ["claim.json", "points"]  # theirs, kept
    assert worktrees(root) == 1


def test_a_claim_is_taken_once_and_let_go_on_bad_input(tutorial_project: Path):
    root = tutorial_project
    record.claim(root, "s")
    with pytest.raises(ConfigError, match=r"sweep 's' is being set up by pid \d+ on "):
        record.claim(root, "s")
    done = run_cli("sweep", "-S", "wandb.project=a,b", "--name", "t", cwd=root)  # found after the claim
    assert done.returncode == 2 and "no stage reads wandb.project" in done.stderr, done.stderr
    assert not record.sweep_dir(root, "t").exists()


# --------------------------------------------------------------------------- Slurm
@pytest.mark.slurm
@pytest.mark.slow
def test_an_sbatch_refusal_is_one_line_and_removes_the_worktrees(
    tutorial_project: Path, slurm_cluster, monkeypatch, unique_name: str
):
    """A real refusal: each task asks for more memory than the cluster's node has."""
    root = tutorial_project
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
    (root / "configs" / "cluster").mkdir(parents=True)
    (root / "configs" / "cluster" / "testcluster.yaml").write_text(
        yaml.safe_dump({"stages": {"sweep": {"mem_gb": 4096}}})
    )
    git(root, "add", "-A")
    git(root, "commit", "-qm", "a greedy sweep")
    done = run_cli("sweep", "-S", "train.lr=0.1,0.2", "--name", unique_name, cwd=root)
    assert done.returncode == 1, done.stderr
    refused = [line for line in done.stderr.splitlines() if "sbatch" in line]
    assert refused == [
        f"hpcpipe: sweep {unique_name}: sbatch refused the array: sbatch: error: Batch job submission "
        "failed: Requested node configuration is not available; nothing was submitted, and its "
        "workspaces were removed"
    ], done.stderr
    assert "Traceback" not in done.stderr
    assert worktrees(root) == 1 and not record.sweep_dir(root, unique_name).exists()
    # nothing queued (accounting keeps a refused submission as a FAILED record, never run)
    assert set(slurm_jobs(f"hpcpipe-sweep-{unique_name}").values()) <= {"FAILED"}
    # the name is free again: the same sweep, asking for what the node has, goes on
    (root / "configs" / "cluster" / "testcluster.yaml").unlink()
    again = run_cli("sweep", "-S", "train.lr=0.1,0.2", "--name", unique_name, "--detach", cwd=root)
    assert again.returncode == 0, again.stderr
    subprocess.run(["scancel", "--name", f"hpcpipe-sweep-{unique_name}"], check=False)


@pytest.mark.slurm
@pytest.mark.slow
def test_an_array_that_cannot_be_recorded_is_cancelled_not_left_running(
    tutorial_project: Path, slurm_cluster, monkeypatch, unique_name: str
):
    """A real write failure after a real sbatch: the ledger entry's path is a directory, so
    the rename fails. The array Slurm queued is cancelled and the sweep says so, in one
    line, instead of calling it refused and removing the workspaces under a running array."""
    root = tutorial_project
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
    (root / ".hpcpipe" / "jobs" / "ledger" / f"sweep-{unique_name}.json").mkdir(parents=True)
    done = run_cli("sweep", "-S", "train.lr=0.1,0.2", "--name", unique_name, cwd=root)
    try:
        assert done.returncode == 1, done.stderr
        assert "Traceback" not in done.stderr and "refused" not in done.stderr, done.stderr
        (line,) = [line for line in done.stderr.splitlines() if "cannot record" in line]
        array = re.search(r"cannot record job (\d+) ", line).group(1)
        assert line.endswith(
            f"; cancelled job {array} rather than leave it running untracked; nothing is queued, "
            "and its workspaces were removed"
        ), line
        assert worktrees(root) == 1 and not record.sweep_dir(root, unique_name).exists()
        deadline = time.monotonic() + 60
        jobs = slurm_jobs(f"hpcpipe-sweep-{unique_name}")
        while not jobs or not all(state.startswith("CANCELLED") for state in jobs.values()):
            assert time.monotonic() < deadline, jobs
            time.sleep(1)
            jobs = slurm_jobs(f"hpcpipe-sweep-{unique_name}")
        assert {job.split("_")[0] for job in jobs} == {array}  # the array it queued, and only that
    finally:
        subprocess.run(["scancel", "--name", f"hpcpipe-sweep-{unique_name}"], check=False)


@pytest.mark.slurm
@pytest.mark.slow
def test_ctrl_c_during_submission_leaves_the_array_tracked_and_cancelled(
    tutorial_project: Path, slurm_cluster, monkeypatch, tmp_path: Path, unique_name: str
):
    """The Ctrl-C lands after sbatch queued the array and before its id was read back
    (the shim runs the real sbatch, then sends SIGINT to the sweep's process group, as a
    terminal does, then prints the id)."""
    root = tutorial_project
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
    real = shutil.which("sbatch")
    bin_dir = shim(
        tmp_path / "bin",
        "sbatch",
        # a terminal's Ctrl-C: SIGINT to the whole process group, arriving while "sbatch"
        # has queued the array but not yet printed its id (without the fix, it dies there)
        f'out=$("{real}" "$@") || exit $?\n(sleep 0.3; kill -INT -- -$(ps -o pgid= $$)) &\n'
        'sleep 2\necho "$out"\n',
    )
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    done = subprocess.run(
        ["hpcpipe", "sweep", "-S", "train.lr=0.1,0.2", "--name", unique_name],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, start_new_session=True,
    )  # fmt: skip
    try:
        assert done.returncode == 130, done.stderr
        assert "Traceback" not in done.stderr
        sweep = record.load(root, unique_name)
        tracked = {p.attempts[-1].job_id for p in sweep.points if p.attempts}
        queued = slurm_jobs(f"hpcpipe-sweep-{unique_name}")
        arrays = {job.split("_")[0] for job in queued}
        assert len(arrays) == 1, queued  # one sbatch
        (array,) = arrays
        assert tracked == {f"{array}_0", f"{array}_1"}  # the array is the record's
        assert [p.state for p in sweep.points] == ["CANCELLED", "CANCELLED"]
        deadline = time.monotonic() + 60
        while any(
            not s.startswith("CANCELLED") and s not in ("COMPLETED", "FAILED") for s in queued.values()
        ):
            assert time.monotonic() < deadline, queued
            time.sleep(1)
            queued = slurm_jobs(f"hpcpipe-sweep-{unique_name}")
        assert all(state.startswith("CANCELLED") for state in queued.values()), queued
    finally:
        subprocess.run(["scancel", "--name", f"hpcpipe-sweep-{unique_name}"], check=False)


@pytest.mark.slurm
@pytest.mark.slow
def test_a_grid_larger_than_max_array_size_goes_out_as_arrays_one_after_another(
    tutorial_project: Path, slurm_cluster, tmp_path_factory, monkeypatch, unique_name: str
):
    """Issue 17: on a second test cluster with MaxArraySize=2, five points go out as three
    arrays (2 + 2 + 1), said in one line; each later array waits for the end of the one
    before (afterany) and each runs at most --parallelism tasks, so that is the cap over
    all of them; `status` and `resume` take the three as one sweep."""
    from tests.support.slurm import second_cluster

    root = tutorial_project
    with second_cluster(tmp_path_factory.mktemp("tc-arrays"), max_array_size="2") as conf:
        monkeypatch.setenv("SLURM_CONF", str(conf))
        monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
        grid = ["-S", "train.lr=0.1,0.2,0.3,0.4,0.5", "--parallelism", "1", "--name", unique_name]
        done = run_cli("sweep", *grid, "--detach", cwd=root)
        assert done.returncode == 0, done.stderr
        said = [line for line in done.stderr.splitlines() if "submitted as" in line]
        assert len(said) == 1 and "5 points submitted as 3 job arrays" in said[0], done.stderr
        assert "MaxArraySize is 2" in said[0] and "at most 1 at once" in said[0], said

        def arrays_of(sweep: record.Sweep) -> list[str]:
            return list(dict.fromkeys(p.attempts[-1].job_id.split("_")[0] for p in sweep.points))

        sweep = record.load(root, unique_name)
        arrays = arrays_of(sweep)
        assert [p.attempts[-1].job_id for p in sweep.points] == [
            f"{arrays[0]}_0", f"{arrays[0]}_1", f"{arrays[1]}_0", f"{arrays[1]}_1", arrays[2]
        ]  # fmt: skip
        try:
            shown = {a: subprocess.run(["scontrol", "show", "job", a], capture_output=True, text=True).stdout
                     for a in arrays}  # fmt: skip
            assert f"Dependency=afterany:{arrays[0]}" in shown[arrays[1]], shown[arrays[1]]
            assert f"Dependency=afterany:{arrays[1]}" in shown[arrays[2]], shown[arrays[2]]
            assert "ArrayTaskThrottle=1" in shown[arrays[0]] and "ArrayTaskThrottle=1" in shown[arrays[1]]

            status = run_cli("sweep", "status", unique_name, cwd=root)
            assert status.returncode == 0, status.stderr
            rows = [line for line in status.stdout.splitlines()[1:] if line.strip()[:1].isdigit()]
            assert len(rows) == 5, status.stdout  # one table, whatever array a point is in
        finally:
            subprocess.run(["scancel", *arrays], check=False)
        deadline = time.monotonic() + 60
        while any(p.state != "CANCELLED" for p in record.load(root, unique_name).points):
            assert time.monotonic() < deadline, [p.state for p in record.load(root, unique_name).points]
            run_cli("sweep", "status", unique_name, cwd=root)
            time.sleep(1)
        resumed = run_cli("sweep", "resume", unique_name, "--detach", cwd=root)
        try:
            assert resumed.returncode == 0, resumed.stderr
            assert "resubmitting 5 of 5 points" in resumed.stderr
            assert "5 points submitted as 3 job arrays" in resumed.stderr
            again = arrays_of(record.load(root, unique_name))
            assert len(again) == 3 and not set(again) & set(arrays)
        finally:
            subprocess.run(["scancel", *arrays_of(record.load(root, unique_name))], check=False)
