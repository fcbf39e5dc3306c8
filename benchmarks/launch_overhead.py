"""What the launcher costs on top of Slurm and submitit, on the real test cluster.

    bash slurm/testcluster/install && python benchmarks/launch_overhead.py [--repeat 5]

In one run, each measured --repeat times (median reported), for a stage function
that does nothing:
  a. `hpcpipe`'s launcher (a fresh python process, as `dvc repro` starts it) submit -> exit 0
  b. bare submitit, the same function, submit + result(), also in a fresh process
  c. `sbatch --wait --wrap true`
  d. launcher start -> the sbatch call (a shim on PATH records when sbatch starts)
  e. a job killed on its node (SIGKILL of the stage's process) -> the launcher's exit
Ratios: a/b and a/c. Targets (issue 3): a - b <= 0.5 s, d <= 0.5 s, e <= 10 s.
Prints a Markdown block to paste into benchmarks/RESULTS.md.
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
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

STAGES = textwrap.dedent(
    """
    import os, time
    from pathlib import Path

    def nothing(params, *, out):
        out.write_text("ok")
        return {}

    def sleep_long(params, *, out):
        Path("stage.pid").write_text(str(os.getpid()))
        time.sleep(300)
        return {}
    """
)
LAUNCH = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from hpcpipe.config import load_params, load_profile
    from hpcpipe.launch.launcher import launch
    from hpcpipe.stages import StageSpec

    root = Path.cwd()
    spec = StageSpec("bench", "bench_stages:" + sys.argv[1], (), (), ("out",))
    profile = load_profile("testcluster", root)
    sys.exit(launch(spec, load_params(root / "params.yaml"), {"out": "out.txt"}, profile, root))
    """
)
BARE = textwrap.dedent(
    """
    import submitit
    from bench_stages import nothing
    from pathlib import Path
    from hpcpipe.config import load_params

    ex = submitit.SlurmExecutor(folder=".bare-jobs")
    ex.update_parameters(partition="cpu", time=10, cpus_per_task=1, mem="2GB")
    job = ex.submit(nothing, load_params("params.yaml"), out=Path("bare.txt"))
    job.result()
    """
)
SHIM = textwrap.dedent(
    """\
    #!/bin/sh
    python3 -c 'import time; print(time.time())' >> "$SBATCH_CALLS"
    exec {real} "$@"
    """
)


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, env=env, check=True, capture_output=True, timeout=300)
    return time.perf_counter() - start


def start_cluster() -> tuple[str, bool]:
    """SLURM_CONF of the test cluster, and whether this run started it (then it stops it)."""
    out = subprocess.run(
        ["bash", str(REPO / "slurm/testcluster/start")], capture_output=True, text=True, check=True
    ).stdout
    return re.search(r"export SLURM_CONF=(\S+)", out).group(1), out.startswith("# testcluster: started")


def make_project(root: Path) -> None:
    for name in ("params.yaml", "configs"):
        src = REPO / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, root / name)
    (root / "bench_stages.py").write_text(STAGES)
    (root / "launch.py").write_text(LAUNCH)
    (root / "bare.py").write_text(BARE)


def kill_detection(root: Path) -> float:
    """Seconds from SIGKILL of the stage process (on the node) to the launcher's exit."""
    (root / "stage.pid").unlink(missing_ok=True)
    launcher = subprocess.Popen(
        [sys.executable, "launch.py", "sleep_long"],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not (root / "stage.pid").exists():
        if time.monotonic() > deadline:
            raise RuntimeError("the stage never started")
        time.sleep(0.1)
    time.sleep(1.0)
    killed = time.perf_counter()
    os.kill(int((root / "stage.pid").read_text()), 9)
    launcher.wait(timeout=120)
    if launcher.returncode == 0:
        raise RuntimeError("the launcher reported success for a killed job")
    return time.perf_counter() - killed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    os.environ["SLURM_CONF"], started = start_cluster()
    try:
        med = measure(args.repeat)
    finally:
        if started:
            subprocess.run(["bash", str(REPO / "slurm/testcluster/stop")], capture_output=True, check=False)
    report(med, args.repeat)


def measure(repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_project(root)
        shim_dir = root / "shim"
        shim_dir.mkdir()
        shim = shim_dir / "sbatch"
        shim.write_text(SHIM.format(real=shutil.which("sbatch")))
        shim.chmod(0o755)
        calls = root / "sbatch-calls.txt"
        shim_env = {**os.environ, "PATH": f"{shim_dir}:{os.environ['PATH']}", "SBATCH_CALLS": str(calls)}
        launcher, bare, sbatch, to_sbatch, detect = [], [], [], [], []
        for _ in range(repeat):
            launcher.append(timed([sys.executable, "launch.py", "nothing"], root))
            bare.append(timed([sys.executable, "bare.py"], root))
            sbatch.append(timed(["sbatch", "--wait", "-p", "cpu", "-o", "/dev/null", "--wrap", "true"], root))
            calls.unlink(missing_ok=True)
            began = time.time()
            timed([sys.executable, "launch.py", "nothing"], root, env=shim_env)
            to_sbatch.append(float(calls.read_text().split()[0]) - began)
        for _ in range(max(1, repeat // 2)):
            detect.append(kill_detection(root))
    runs = {"launcher": launcher, "bare": bare, "sbatch": sbatch, "to_sbatch": to_sbatch, "detect": detect}
    return {k: statistics.median(v) for k, v in runs.items()}


def report(med: dict[str, float], repeat: int) -> None:
    print(f"## launch_overhead ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs)")
    print(f"command: python benchmarks/launch_overhead.py --repeat {repeat}  (medians)\n")
    print("| measure | seconds | target |")
    print("| --- | --- | --- |")
    print(f"| a. hpcpipe launcher, no-op stage, submit -> exit 0 | {med['launcher']:.2f} | |")
    print(f"| b. bare submitit submit + result(), same function | {med['bare']:.2f} | |")
    print(f"| c. sbatch --wait --wrap true | {med['sbatch']:.2f} | |")
    print(f"| overhead a - b | {med['launcher'] - med['bare']:.2f} | <= 0.5 |")
    print(f"| d. launcher start -> sbatch call | {med['to_sbatch']:.2f} | <= 0.5 |")
    print(f"| e. job SIGKILLed on its node -> launcher exit | {med['detect']:.2f} | <= 10 |")
    print(f"\nratios: a/b = {med['launcher'] / med['bare']:.2f}, a/c = {med['launcher'] / med['sbatch']:.2f}")


if __name__ == "__main__":
    main()
