"""What the launcher costs on top of Slurm and submitit, on the real test cluster.

    bash slurm/testcluster/install && python benchmarks/launch_overhead.py [--repeat 5]

In one run, each measured --repeat times (median reported), in a real DVC project
(git + dvc init) whose dvc.yaml has a function stage and a command stage that do
nothing, each launched as `dvc repro` launches it (`hpcpipe run NAME ...`, a fresh
process, the stage looked up through DVC's own parser):
  a. function stage `hpcpipe run fn --fn bench_stages:nothing --out out.txt`: submit -> exit 0
  a2. command stage `hpcpipe run cmd -- python -c ...`: submit -> exit 0
  b. bare submitit, the same function, submit + result(), also in a fresh process
  b2. bare submitit running the same command (submitit.helpers.CommandFunction)
  c. `sbatch --wait --wrap true`
  d. launcher start -> the sbatch call (a shim on PATH records when sbatch starts), per
     kind, after a params edit (as when `dvc repro` reruns a stage: DVC's last answer
     brought up to date without DVC, launch.stage_memo); d3/d4 the same stage relaunched
     unchanged; d5 after an edit of its code (a small dep file); d6 after an edit of
     dvc.yaml, when DVC's parser is asked again (imported and run)
  e. a job killed on its node (SIGKILL of the stage's process) -> the launcher's exit
Ratios: a/b and a/c. Targets (issues 3, 12): a - b <= 0.5 s, a2 - b2 <= 0.5 s, d <= 0.5 s, e <= 10 s.
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
DVC_YAML = textwrap.dedent(
    """
    stages:
      fn:
        cmd: hpcpipe run fn --fn bench_stages:nothing --out out.txt
        deps: [bench_stages.py]
        params: [train.lr]
        outs: [out.txt]
      slow:
        cmd: hpcpipe run slow --fn bench_stages:sleep_long --out slow.txt
        deps: [bench_stages.py]
        outs: [slow.txt]
      cmd:
        cmd: hpcpipe run cmd -- python -c "open('cmd.txt', 'w').write('ok')"
        deps: [bench_stages.py]
        params: [train.lr]
        outs: [cmd.txt]
    """
)
FUNCTION = ["hpcpipe", "run", "fn", "--fn", "bench_stages:nothing", "--out", "out.txt"]
COMMAND = ["hpcpipe", "run", "cmd", "--", "python", "-c", "open('cmd.txt', 'w').write('ok')"]
SLOW = ["hpcpipe", "run", "slow", "--fn", "bench_stages:sleep_long", "--out", "slow.txt"]
BARE = textwrap.dedent(
    """
    import submitit
    from bench_stages import nothing
    from pathlib import Path
    from types import SimpleNamespace

    ex = submitit.SlurmExecutor(folder=".bare-jobs")
    ex.update_parameters(partition="cpu", time=10, cpus_per_task=1, mem="2GB")
    job = ex.submit(nothing, SimpleNamespace(train={"lr": 0.1}), out=Path("bare.txt"))
    job.result()
    """
)
BARE_COMMAND = textwrap.dedent(
    """
    import submitit
    from submitit.helpers import CommandFunction

    ex = submitit.SlurmExecutor(folder=".bare-jobs")
    ex.update_parameters(partition="cpu", time=10, cpus_per_task=1, mem="2GB")
    job = ex.submit(CommandFunction(["python", "-c", "open('bare-cmd.txt', 'w').write('ok')"]))
    job.result()
    """
)
SHIM = textwrap.dedent(
    """\
    #!/bin/sh
    date +%s.%N >> "$SBATCH_CALLS"
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
    shutil.copy2(REPO / "params.yaml", root / "params.yaml")
    (root / "bench_stages.py").write_text(STAGES)
    (root / "dvc.yaml").write_text(DVC_YAML)
    (root / "bare.py").write_text(BARE)
    (root / "bare_command.py").write_text(BARE_COMMAND)
    for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(command, cwd=root, check=True, capture_output=True)


def set_lr(root: Path, value: float) -> None:
    text = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(re.sub(r"(?m)^(  lr: ).*$", rf"\g<1>{value:.4f}", text, count=1))


def edit_code(root: Path, n: int) -> None:
    with open(root / "bench_stages.py", "a") as f:
        f.write(f"# edit {n}\n")


def edit_dvc_yaml(root: Path, n: int) -> None:
    with open(root / "dvc.yaml", "a") as f:
        f.write(f"# edit {n}\n")


def kill_detection(root: Path) -> float:
    """Seconds from SIGKILL of the stage process (on the node) to the launcher's exit."""
    (root / "stage.pid").unlink(missing_ok=True)
    launcher = subprocess.Popen(
        SLOW,
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
    os.environ["HPCPIPE_CLUSTER"] = "testcluster"
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
        kinds = ("launcher", "command", "bare", "bare_command", "sbatch", "detect")
        runs: dict[str, list[float]] = {k: [] for k in kinds}
        runs.update(to_sbatch=[], to_sbatch_command=[], to_sbatch_again=[], to_sbatch_command_again=[])
        runs.update(after_code_edit=[], after_dvc_yaml_edit=[])
        lr = [0.1]

        def to_sbatch(argv: list[str]) -> float:
            calls.unlink(missing_ok=True)
            began = time.time()
            timed(argv, root, env=shim_env)
            return float(calls.read_text().split()[0]) - began

        for n in range(repeat):
            runs["launcher"].append(timed(FUNCTION, root))
            runs["command"].append(timed(COMMAND, root))
            runs["bare"].append(timed([sys.executable, "bare.py"], root))
            runs["bare_command"].append(timed([sys.executable, "bare_command.py"], root))
            runs["sbatch"].append(
                timed(["sbatch", "--wait", "-p", "cpu", "-o", "/dev/null", "--wrap", "true"], root)
            )
            for key, argv in (("to_sbatch", FUNCTION), ("to_sbatch_command", COMMAND)):
                # as under `dvc repro`: the stage runs because something changed (here
                # train.lr), so DVC is asked; then relaunched unchanged (DVC's answer kept)
                lr[0] += 0.001
                set_lr(root, lr[0])
                for suffix in ("", "_again"):
                    runs[key + suffix].append(to_sbatch(argv))
            edit_code(root, n)
            runs["after_code_edit"].append(to_sbatch(COMMAND))
            edit_dvc_yaml(root, n)
            runs["after_dvc_yaml_edit"].append(to_sbatch(COMMAND))
        for _ in range(max(1, repeat // 2)):
            runs["detect"].append(kill_detection(root))
    return {k: statistics.median(v) for k, v in runs.items()}


def report(med: dict[str, float], repeat: int) -> None:
    print(f"## launch_overhead ({time.strftime('%Y-%m-%d')}, {platform.node()}, {os.cpu_count()} CPUs)")
    print(f"command: python benchmarks/launch_overhead.py --repeat {repeat}  (medians)\n")
    print("| measure | seconds | target |")
    print("| --- | --- | --- |")
    print(f"| a. hpcpipe run, no-op function stage, submit -> exit 0 | {med['launcher']:.2f} | |")
    print(f"| a2. hpcpipe run, no-op command stage, submit -> exit 0 | {med['command']:.2f} | |")
    print(f"| b. bare submitit submit + result(), same function | {med['bare']:.2f} | |")
    print(f"| b2. bare submitit, the same command (CommandFunction) | {med['bare_command']:.2f} | |")
    print(f"| c. sbatch --wait --wrap true | {med['sbatch']:.2f} | |")
    print(f"| overhead a - b | {med['launcher'] - med['bare']:.2f} | <= 0.5 |")
    print(f"| overhead a2 - b2 | {med['command'] - med['bare_command']:.2f} | <= 0.5 |")
    print(f"| d. launcher start -> sbatch call, function stage | {med['to_sbatch']:.2f} | <= 0.5 |")
    print(f"| d2. launcher start -> sbatch call, command stage | {med['to_sbatch_command']:.2f} | <= 0.5 |")
    print(f"| d3. the same, relaunched unchanged, function stage | {med['to_sbatch_again']:.2f} | |")
    print(f"| d4. the same, relaunched unchanged, command stage | {med['to_sbatch_command_again']:.2f} | |")
    print(f"| d5. after an edit of its code (a small dep), command stage | {med['after_code_edit']:.2f} | |")
    print(f"| d6. after a dvc.yaml edit (DVC asked), command stage | {med['after_dvc_yaml_edit']:.2f} | |")
    print(f"| e. job SIGKILLed on its node -> launcher exit | {med['detect']:.2f} | <= 10 |")
    print(f"\nratios: a/b = {med['launcher'] / med['bare']:.2f}, a/c = {med['launcher'] / med['sbatch']:.2f}")


if __name__ == "__main__":
    main()
