"""How long the launcher takes to fingerprint a stage, against `dvc status` of it.

    python benchmarks/fingerprint.py [--repeat 3] [--data DIR]

The `prepare` stage of the example over the full CIFAR-10 JPEG copy (60,000 files in
data/raw), in a temp git + DVC project. The fingerprint is DVC's hashes of the deps
(from its state cache where the files are unchanged), the params values and the
command (hpcpipe.launch.dvc_stage.load_stage). Each measure runs in a fresh process,
--repeat times, median reported:

  warm: DVC's state already knows every file (as right after `dvc repro` hashed the
        deps to decide the stage must run, which is when the launcher starts)
  cold: DVC's state deleted first (a fresh clone, or another machine's state folder)

for (a) load_stage, timed inside the process after its imports (DVC's import is in
launch_overhead's numbers), (b) the whole process that does it, and (c) `dvc status
prepare`, the baseline, which does the same hashing. "warm" includes hpcpipe's memo of
the folder's DVC hash (.dvc/tmp/hpcpipe-dep-hashes.json, keyed by the files' inode,
size and mtime); "cold" has neither. Target (issue 12): (a) warm <= 0.3 s. Prints a Markdown block for
benchmarks/RESULTS.md. The data: ``tar -xJf ../shared/data/cifar10-jpeg.tar.xz -C DIR``
(about 2 s; done here into a temp folder when --data is not given).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
PROJECT_FILES = ("dvc.yaml", "params.yaml", "src", ".dvcignore")
PROBE = """
import sys, time
from pathlib import Path
started = time.perf_counter()
import dvc.repo
from hpcpipe.launch.dvc_stage import load_stage
imported = time.perf_counter()
stage = load_stage(Path.cwd(), "prepare")
print(time.perf_counter() - imported, imported - started, stage.fingerprint)
"""
MEMO = Path(".dvc") / "tmp" / "hpcpipe-dep-hashes.json"  # hpcpipe.launch.dvc_stage.DEP_HASH_MEMO


def sh(root: Path, *args: str) -> str:
    return subprocess.run(args, cwd=root, check=True, capture_output=True, text=True).stdout


def make_project(root: Path, raw: Path) -> None:
    for name in PROJECT_FILES:
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    (root / "data").mkdir()
    shutil.copytree(raw, root / "data" / "raw", copy_function=os.link)
    sh(root, "git", "init", "-q")
    sh(root, "dvc", "init", "-q")
    # DVC's state (the hash cache) in a folder of this project, so "cold" can delete it
    sh(root, "dvc", "config", "--local", "core.site_cache_dir", str(root / ".dvc-site"))
    sh(root, "dvc", "add", "-q", "data/raw")


def timed_process(root: Path, argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(argv, cwd=root, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - started, out


def measure(root: Path, repeat: int, cold: bool) -> dict[str, float]:
    inner, imports, whole, status = [], [], [], []
    for _ in range(repeat):
        if cold:  # what a fresh clone has: neither DVC's state nor hpcpipe's folder-hash memo
            shutil.rmtree(root / ".dvc-site", ignore_errors=True)
            (root / MEMO).unlink(missing_ok=True)
        seconds, out = timed_process(root, [sys.executable, "-c", PROBE])
        whole.append(seconds)
        inner.append(float(out.split()[0]))
        imports.append(float(out.split()[1]))
        if cold:
            shutil.rmtree(root / ".dvc-site", ignore_errors=True)
        status.append(timed_process(root, ["dvc", "status", "prepare"])[0])
    return {
        "inner": statistics.median(inner),
        "imports": statistics.median(imports),
        "whole": statistics.median(whole),
        "status": statistics.median(status),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, help="a folder holding train/ and test/ (default: unpack)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = args.data
        if raw is None:
            with tarfile.open(ARCHIVE) as archive:
                archive.extractall(Path(tmp) / "unpacked", filter="data")
            raw = Path(tmp) / "unpacked"
        files = sum(1 for _ in raw.rglob("*.jpg"))
        root = Path(tmp) / "project"
        root.mkdir()
        make_project(root, raw)
        warm = measure(root, args.repeat, cold=False)
        cold = measure(root, args.repeat, cold=True)
    print(f"## fingerprint ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs)")
    print(f"command: python benchmarks/fingerprint.py --repeat {args.repeat}  (medians; {files} files)\n")
    print("| measure | warm state (s) | cold state (s) | target |")
    print("| --- | --- | --- | --- |")
    print(f"| a. load_stage, in process | {warm['inner']:.2f} | {cold['inner']:.2f} | warm <= 0.3 |")
    print(f"| (importing dvc.repo and hpcpipe first) | {warm['imports']:.2f} | {cold['imports']:.2f} | |")
    print(f"| b. the whole process doing (a) | {warm['whole']:.2f} | {cold['whole']:.2f} | |")
    print(f"| c. dvc status prepare (baseline) | {warm['status']:.2f} | {cold['status']:.2f} | |")
    ratios = {k: (warm, cold)[i]["whole"] / (warm, cold)[i]["status"] for i, k in enumerate(("warm", "cold"))}
    print(f"\nratios b/c: warm {ratios['warm']:.2f}, cold {ratios['cold']:.2f}")


if __name__ == "__main__":
    main()
