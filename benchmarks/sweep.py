"""A 16-point sweep: ``hpcpipe sweep`` (one job array on the test cluster) against DVC's
own queue (``dvc exp run --queue`` + ``dvc queue start -j 2``), same grid, same machine.

    bash slurm/testcluster/install && python benchmarks/sweep.py [--points 16]

Both sides get a fresh copy of the example project (the committed CIFAR-10 sample,
shrunk params: 300 training images, 1 epoch, so each point is a short train +
evaluate), with ``prepare`` already reproduced and committed, and run the same grid
over train.lr x train.batch_size, two points at a time, one math thread per point.

Measured, in one invocation:
  submit  hpcpipe: command start -> the array is queued (the "submitted as" line), and
          --repeat ``hpcpipe sweep --detach`` calls (each cancelled at once): the first
          one in the fresh project (DVC hashes prepare's inputs to say it is up to
          date) and the median of the others (that answer remembered, see
          ``hpcpipe.sweep.freshness``);
          DVC: the whole ``dvc exp run --queue -S ... -S ...`` call.
  wall    command start -> every point saved as a DVC experiment (hpcpipe waits and
          saves them; DVC: queue, start 2 workers, poll ``dvc queue status`` until none
          is queued or running).
Targets (issue 5): hpcpipe's submit < 2 s; its wall time no worse than DVC's queue.

``--submit-only`` (issue 17) is the scale mode: 16, 64, 256 and 1,000 points
(``--counts``), each ``hpcpipe sweep --detach`` on the test cluster and cancelled at
once, in a copy of the whole example repository as committed (its tests/ data included,
which no stage reads), for this design and for the one before it (the hpcpipe source
of ``--baseline-rev``, run from a ``git archive`` of it: a git worktree and a
``dvc exp save`` per point) in the same run. It reports the submit seconds, the disk
each point costs (``du`` of the sweep's folder, hard links counted once, over the
points), and the import rate: the train and evaluate outputs of one real run are put
in every point's folder, and the points are saved as experiments as ``sweep status``
saves them (``experiments.import_point``; the old design on ``--old-import`` points).

Prints a Markdown block to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from launch_overhead import REPO, start_cluster

sys.path.insert(1, str(REPO))  # the tests' example project: one home (tests/support/project.py)
from tests.support.project import PROJECT_FILES
from tests.support.project import make_project as build_project
from tests.support.sample import extract

LRS = ("0.1", "0.05", "0.02", "0.01", "0.005", "0.002", "0.001", "0.0005")
BATCHES = ("16", "32", "48", "64")
BASELINE_REV = "b62f1d7"  # main before issue 17: a git worktree and a `dvc exp save` per point


def grid(points: int) -> list[str]:
    """-S arguments for ``points`` = 4 batch sizes x points/4 learning rates."""
    return [
        "-S",
        f"train.lr={','.join(LRS[: points // len(BATCHES)])}",
        "-S",
        f"train.batch_size={','.join(BATCHES)}",
    ]


def sh(*command: str, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def make_project(root: Path, raw: Path, env: dict[str, str], whole: bool = False) -> None:
    """The tests' example project (tests/support/project.make_project: shrunk params, 300
    training images, 1 epoch), ``dvc add``-ed, prepare reproduced and everything committed.
    ``whole``: every file the repository commits (tests/ data and all), as a user's clone has them."""
    if whole:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(root)], input=archive.stdout, check=True)
    build_project(root, raw, files=() if whole else PROJECT_FILES)
    sh("dvc", "add", "-q", "data/raw", cwd=root, env=env)  # the whole sample: its hashing is part of the cost
    sh("dvc", "repro", "prepare", cwd=root, env={**env, "HPCPIPE_CLUSTER": "inline"})
    sh("git", "add", "-A", cwd=root)
    sh("git", "commit", "-q", "-m", "project", cwd=root, env=env)


def experiments(root: Path) -> int:
    shown = json.loads(sh("dvc", "exp", "show", "--json", cwd=root))
    return sum(len(b["revs"]) for base in shown for b in (base.get("experiments") or []))


def submit_times(root: Path, points: int, env: dict[str, str], repeat: int) -> list[float]:
    """``hpcpipe sweep --detach`` start to return (= queued), ``repeat`` times; each array is
    cancelled at once. Its workspaces stay (cheap) and its record names it."""
    times = []
    for i in range(repeat):
        name = f"submit{i}"
        command = ["hpcpipe", "sweep", *grid(points), "--parallelism", "2", "--name", name, "--detach"]
        began = time.perf_counter()
        sh(*command, cwd=root, env=env)
        times.append(time.perf_counter() - began)
        subprocess.run(["scancel", "--name", f"hpcpipe-sweep-{name}"], check=False)
    return times


def run_hpcpipe(root: Path, points: int, env: dict[str, str]) -> dict[str, float]:
    command = ["hpcpipe", "sweep", *grid(points), "--parallelism", "2", "--name", "bench"]
    began = time.perf_counter()
    proc = subprocess.Popen(
        command, cwd=root, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
    )
    submitted, lines = None, []
    for line in proc.stderr:
        lines.append(line)
        if submitted is None and "submitted as" in line:
            submitted = time.perf_counter() - began
    if proc.wait() != 0 or submitted is None:
        raise RuntimeError(f"hpcpipe sweep failed ({proc.returncode}):\n{''.join(lines[-20:])}")
    wall = time.perf_counter() - began
    assert experiments(root) == points, "hpcpipe: not every point became an experiment"
    return {"submit": submitted, "wall": wall}


def run_dvc_queue(root: Path, points: int, env: dict[str, str]) -> dict[str, float]:
    env = {**env, "HPCPIPE_CLUSTER": "inline"}  # DVC's workers run each stage on this machine
    began = time.perf_counter()
    sh("dvc", "exp", "run", "--queue", *grid(points), cwd=root, env=env)
    submitted = time.perf_counter() - began
    sh("dvc", "queue", "start", "-j", "2", cwd=root, env=env)
    while True:
        status = sh("dvc", "queue", "status", cwd=root, env=env)
        if not any(word in status for word in ("Queued", "Running")):
            break
        time.sleep(1)
    wall = time.perf_counter() - began
    sh("dvc", "queue", "stop", cwd=root, env=env)
    if "Failed" in status:
        raise RuntimeError(f"dvc queue: a point failed:\n{status}")
    assert experiments(root) == points, "dvc queue: not every point became an experiment"
    return {"submit": submitted, "wall": wall}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=16, choices=(4, 8, 16, 32))
    parser.add_argument("--repeat", type=int, default=5, help="detached submissions timed (median)")
    parser.add_argument("--submit-only", action="store_true", help="the scale mode (module docstring)")
    parser.add_argument("--counts", default="16,64,256,1000", help="--submit-only: points per sweep")
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="--submit-only: the old design's commit")
    parser.add_argument("--old-import", type=int, default=16, help="--submit-only: points the old one saves")
    args = parser.parse_args()
    os.environ["SLURM_CONF"], started = start_cluster()
    env = {
        **os.environ,
        "HPCPIPE_CLUSTER": "testcluster",
        "OMP_NUM_THREADS": "1",  # both sides: one math thread per point, two points at a time
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@example.invalid",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@example.invalid",
    }
    if args.submit_only:
        try:
            from sweep_scale import scale

            scale([int(c) for c in args.counts.split(",")], args.baseline_rev, args.old_import, env)
        finally:
            if started:
                subprocess.run(["bash", str(REPO / "slurm/testcluster/stop")], capture_output=True)
        return
    try:
        with tempfile.TemporaryDirectory() as tmp:
            raw = extract(Path(tmp))  # all 12,000 images of the committed sample
            ours_root, theirs_root = Path(tmp) / "hpcpipe", Path(tmp) / "dvcqueue"
            for root in (ours_root, theirs_root):
                root.mkdir()
                make_project(root, raw, env)
            submits = submit_times(ours_root, args.points, env, args.repeat)
            ours = run_hpcpipe(ours_root, args.points, env)
            ours["submit_first"] = submits[0]  # DVC hashes prepare's inputs: nothing remembered yet
            ours["submit_median"] = statistics.median(submits[1:] or submits)
            ours["repeat"] = len(submits[1:] or submits)
            theirs = run_dvc_queue(theirs_root, args.points, env)
    finally:
        if started:
            subprocess.run(["bash", str(REPO / "slurm/testcluster/stop")], capture_output=True, check=False)
    report(ours, theirs, args.points)


def report(ours: dict[str, float], theirs: dict[str, float], points: int) -> None:
    load = os.getloadavg()[0]
    print(f"## sweep ({time.strftime('%Y-%m-%d')}, {platform.node() or 'vm'}, {os.cpu_count()} CPUs)")
    print(f"command: python benchmarks/sweep.py --points {points}  (load average at the end: {load:.1f})")
    print()
    print("| measure | hpcpipe sweep (job array) | dvc exp run --queue + queue start -j 2 | ratio | target |")
    print("| --- | --- | --- | --- | --- |")
    print(
        f"| submit {points} points (s) | {ours['submit']:.2f} | {theirs['submit']:.2f} | "
        f"{ours['submit'] / theirs['submit']:.2f} | hpcpipe < 2 s |"
    )
    print(
        f"| submit {points} points, --detach, first in the project (s) | "
        f"{ours['submit_first']:.2f} | | | < 2 s |"
    )
    print(
        f"| submit {points} points, --detach, median of the next {ours['repeat']:.0f} (s) | "
        f"{ours['submit_median']:.2f} | | | < 2 s |"
    )
    print(
        f"| all {points} points saved as experiments (s) | {ours['wall']:.1f} | {theirs['wall']:.1f} | "
        f"{ours['wall'] / theirs['wall']:.2f} | <= 1.0 |"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
