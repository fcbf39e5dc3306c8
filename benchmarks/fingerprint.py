"""How long the launcher takes to fingerprint a stage, against `dvc status` of it.

    python benchmarks/fingerprint.py [--repeat 3] [--data DIR]

The `prepare` stage of the example over the full CIFAR-10 JPEG copy (60,000 files in
data/raw), in a temp git + DVC project. The fingerprint is DVC's hashes of the deps
(from its state cache where the files are unchanged), the params values and the
command (hpcpipe.launch.dvc_stage.load_stage). Each measure runs in a fresh process,
--repeat times, median reported, in three states:

  warm: DVC's state knows every file, and hpcpipe's memos hold DVC's last answer; a
        params value of the stage was just edited (prepare.seed), so the launcher
        brings the answer up to date (launch.stage_memo), as when `dvc repro` reruns
        the stage after a params edit, right after DVC hashed the deps
  dvc:  the same, but the stage memo deleted first, so DVC's parser is asked (DVC's
        import is not in (a); it is in (b)); hpcpipe's memo of the folder's DVC hash
        (.dvc/tmp/hpcpipe-dep-hashes.json, keyed by the files' inode, size, mtime) kept
  cold: DVC's state and every hpcpipe memo deleted (a fresh clone, another machine)

for (a) load_stage, timed inside the process after its imports, (b) the whole process
that does it, and (c) `dvc status prepare`, the baseline, which does the same hashing.
Target (issue 12): (a) warm <= 0.3 s. Prints a Markdown block for benchmarks/RESULTS.md.
The data: ``tar -xJf ../shared/data/cifar10-jpeg.tar.xz -C DIR``
(about 2 s; done here into a temp folder when --data is not given).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(1, str(REPO))  # the tests' example project: one home (tests/support/project.py)
from tests.support.project import make_project as build_project  # noqa: E402

ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.xz"
PROBE = """
import sys, time
from pathlib import Path
started = time.perf_counter()
if sys.argv[1] != "warm":
    import dvc.repo
from hpcpipe.launch.dvc_stage import load_stage
imported = time.perf_counter()
stage = load_stage(Path.cwd(), "prepare")
print(time.perf_counter() - imported, imported - started, stage.fingerprint, "dvc.repo" in sys.modules)
"""
MEMO = Path(".dvc") / "tmp" / "hpcpipe-dep-hashes.json"  # hpcpipe.launch.dvc_stage.DEP_HASH_MEMO
STAGE_MEMO = Path(".dvc") / "tmp" / "hpcpipe-stages.json"  # hpcpipe.launch.stage_memo.MEMO


def sh(root: Path, *args: str) -> str:
    return subprocess.run(args, cwd=root, check=True, capture_output=True, text=True).stdout


def make_project(root: Path, raw: Path) -> None:
    """The tests' example project over ``raw`` with the repository's params (prepare's own
    seed, which ``edit_seed`` edits), ``dvc add``-ed here, after the state cache is moved."""
    build_project(root, raw, params=None)
    # DVC's state (the hash cache) in a folder of this project, so "cold" can delete it
    sh(root, "dvc", "config", "--local", "core.site_cache_dir", str(root / ".dvc-site"))
    sh(root, "dvc", "add", "-q", "data/raw")


def timed_process(root: Path, argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(argv, cwd=root, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - started, out


def edit_seed(root: Path, seed: int) -> None:
    params = root / "params.yaml"
    params.write_text(re.sub(r"(?m)^(  seed: )\d+", rf"\g<1>{seed}", params.read_text(), count=1))


def measure(root: Path, repeat: int, state: str) -> dict[str, float]:
    inner, imports, whole, status = [], [], [], []
    cold = state == "cold"
    for n in range(repeat):
        if cold:  # what a fresh clone has: neither DVC's state nor hpcpipe's memos
            shutil.rmtree(root / ".dvc-site", ignore_errors=True)
            (root / MEMO).unlink(missing_ok=True)
        if state != "warm":
            (root / STAGE_MEMO).unlink(missing_ok=True)
        else:
            edit_seed(root, n + 1)
        seconds, out = timed_process(root, [sys.executable, "-c", PROBE, state])
        if state == "warm" and out.split()[3] == "True":
            raise RuntimeError("the warm launch asked DVC: the stage memo was not used")
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
        timed_process(root, [sys.executable, "-c", PROBE, "dvc"])  # DVC's state and the memos filled
        warm = measure(root, args.repeat, "warm")
        asked = measure(root, args.repeat, "dvc")
        cold = measure(root, args.repeat, "cold")
    print(f"## fingerprint ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs)")
    print(f"command: python benchmarks/fingerprint.py --repeat {args.repeat}  (medians; {files} files)\n")
    states = {"warm": warm, "dvc": asked, "cold": cold}
    print("| measure | warm (s) | DVC asked (s) | cold (s) | target |")
    print("| --- | --- | --- | --- | --- |")
    rows = (
        ("a. load_stage, in process", "inner", "warm <= 0.3"),
        ("(imports first: hpcpipe; dvc.repo too when asked, cold)", "imports", ""),
        ("b. the whole process doing (a)", "whole", ""),
        ("c. dvc status prepare (baseline)", "status", ""),
    )
    for label, key, target in rows:
        print(f"| {label} | " + " | ".join(f"{m[key]:.2f}" for m in states.values()) + f" | {target} |")
    print("\nratios b/c: " + ", ".join(f"{k} {m['whole'] / m['status']:.2f}" for k, m in states.items()))


if __name__ == "__main__":
    main()
