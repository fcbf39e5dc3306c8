"""``python benchmarks/sweep.py --submit-only``: sweeps of 16 to 1,000 points, this design
against the one before it, in one run (see sweep.py's docstring for what is measured).

The old design runs from a ``git archive`` of its commit (``--baseline-rev``) on
PYTHONPATH, so nothing of it has to stay in the package.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sweep import REPO, extract, make_project, sh

IMPORT = """
import json, sys, time
from pathlib import Path
from hpcpipe.sweep import record
from hpcpipe.sweep.experiments import import_point
root, name, count = Path.cwd(), sys.argv[1], int(sys.argv[2])
sweep = record.load(root, name)
points = sweep.points[:count]
began = time.perf_counter()
for point in points:
    point.state = "COMPLETED"
    import_point(root, sweep, point, point.name)
seconds = time.perf_counter() - began
saved = sum(bool(p.experiment) for p in points)
print(json.dumps({"points": len(points), "seconds": seconds, "saved": saved}))
"""
OUTPUTS = ("dvc.lock", "models/model.pt", "metrics/train.json", "metrics/train_history.csv",
           "metrics/evaluate.json", "metrics/confusion.csv")  # fmt: skip


def lr_grid(count: int) -> list[str]:
    return ["-S", "train.lr=" + ",".join(f"{0.0001 * (i + 1):.4f}" for i in range(count))]


def du_bytes(path: Path) -> int:
    """Disk used under ``path``, each hard-linked file counted once (du's own rule)."""
    out = subprocess.run(["du", "-s", "-B1", str(path)], capture_output=True, text=True).stdout
    return int(out.split()[0])


def submit(root: Path, count: int, env: dict[str, str]) -> dict[str, float]:
    name = f"n{count}"
    began = time.perf_counter()
    command = ["hpcpipe", "sweep", *lr_grid(count), "--parallelism", "2", "--name", name, "--detach"]
    sh(*command, cwd=root, env=env)
    seconds = time.perf_counter() - began
    subprocess.run(["scancel", "--name", f"hpcpipe-sweep-{name}"], check=False)
    folder = root / ".hpcpipe" / "sweeps" / name
    return {"seconds": seconds, "disk_per_point": du_bytes(folder) / count}


def finish_points(root: Path, name: str, env: dict[str, str], linked: int) -> None:
    """Every point of ``name`` as if it had run: the outputs of one real train + evaluate, and
    in the first ``linked`` the reused ``data/prepared`` linked in as the task links it (the
    old design's ``dvc exp save`` hashes the saved stages' dependencies again)."""
    inline = {**env, "HPCPIPE_CLUSTER": "inline"}
    sh("dvc", "repro", "--single-item", "train", "evaluate", cwd=root, env=inline)
    for number, folder in enumerate(sorted((root / ".hpcpipe" / "sweeps" / name / "points").iterdir())):
        for out in OUTPUTS:
            target = folder / out
            target.parent.mkdir(parents=True, exist_ok=True)
            target.unlink(missing_ok=True)
            shutil.copy2(root / out, target)
        if number < linked:
            sh("dvc", "checkout", "-q", "prepare", cwd=folder, env=env)


def import_rate(root: Path, name: str, count: int, env: dict[str, str]) -> dict[str, float]:
    out = sh(sys.executable, "-c", IMPORT, name, str(count), cwd=root, env=env)
    found = json.loads(out.strip().splitlines()[-1])
    assert found["saved"] == found["points"], found
    return found


def exp_show_seconds(root: Path, saved: int) -> float:
    """How long ``dvc exp show`` takes to list the saved experiments (and that it lists them)."""
    from sweep import experiments

    began = time.perf_counter()
    listed = experiments(root)
    assert listed == saved, f"dvc exp show lists {listed} experiments, {saved} were saved"
    return time.perf_counter() - began


def scale(counts: list[int], baseline_rev: str, old_import: int, env: dict[str, str]) -> None:
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        raw = extract(Path(tmp))  # all 12,000 images of the committed sample
        old_src = Path(tmp) / "old-source"
        old_src.mkdir()
        command = ["git", "archive", baseline_rev, "src"]
        archive = subprocess.run(command, cwd=REPO, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(old_src)], input=archive.stdout, check=True)
        for design, src in (("new", REPO / "src"), ("old", old_src / "src")):
            root = Path(tmp) / design
            root.mkdir()
            design_env = {**env, "PYTHONPATH": str(src)}
            make_project(root, raw, design_env, whole=True)
            rows = {count: submit(root, count, design_env) for count in counts}
            largest = f"n{max(counts)}"
            wanted = max(counts) if design == "new" else old_import
            finish_points(root, largest, design_env, 0 if design == "new" else wanted)
            rate = import_rate(root, largest, wanted, design_env)
            results[design] = {
                "rows": rows,
                "import": rate,
                "exp_show": exp_show_seconds(root, rate["saved"]),
            }
            print(f"# {design}: {json.dumps(results[design])}", file=sys.stderr, flush=True)
    report(results, counts, baseline_rev)


def report(results: dict[str, dict], counts: list[int], baseline_rev: str) -> None:
    new, old = results["new"], results["old"]
    load = os.getloadavg()[0]
    where = f"{platform.node() or 'vm'}, {os.cpu_count()} CPUs"
    print(f"## sweep --submit-only ({time.strftime('%Y-%m-%d')}, {where})")
    print(
        f"command: python benchmarks/sweep.py --submit-only --counts {','.join(map(str, counts))} "
        f"(old design: {baseline_rev}; load average at the end: {load:.1f})"
    )
    print()
    print("| points | submit (s) | submit (s), old | disk per point (MB) | disk, old (MB) | target |")
    print("| --- | --- | --- | --- | --- | --- |")
    for count in counts:
        a, b = new["rows"][count], old["rows"][count]
        print(
            f"| {count} | {a['seconds']:.1f} | {b['seconds']:.1f} | {a['disk_per_point'] / 1e6:.3f} | "
            f"{b['disk_per_point'] / 1e6:.2f} | 1,000 in <= 15 s; <= 0.5 MB |"
        )
    for design, row in (("this design", new), ("old", old)):
        rate = row["import"]
        print(
            f"| import, {design} | {rate['points']} points in {rate['seconds']:.1f} s = "
            f"{rate['points'] / rate['seconds']:.2f} points/s | `dvc exp show` {row['exp_show']:.1f} s "
            "| | | >= 2/s |"
        )
    sys.stdout.flush()
