"""Peak host memory of the `train` stage on full CIFAR-10 on the CPU (issue 6: < 2 GB).

    python benchmarks/train_memory.py [--data .bench-data] [--epochs 1]

``--data``: train/<class>/*.jpg and test/<class>/*.jpg, the JPEG copy of
../shared/data/cifar10-jpeg.tar.xz (``tar -xJf ../shared/data/cifar10-jpeg.tar.xz -C .bench-data``).

Runs the real stage functions, each in a fresh Python process that reports its own
peak resident set size (``ru_maxrss``): ``prepare`` on all 50,000 + 10,000 images,
then ``train`` with params.yaml's recipe (its model, width and batch size) for
``--epochs``. Memory reaches its steady state within the first epoch: the data set
is loaded once and every later step reuses the same buffers. The baseline in the
same run is a bare ``python -c "import torch"`` (what any torch process costs), so
the ratio shows what the stage adds on top. Each process first tunes glibc's allocator
as the job side does (``hpcpipe.launch.host_memory``); a second ``train`` with glibc's
defaults, in the same run, shows what that tuning saves and costs.
Prints a Markdown block for RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from hpcpipe.launch.host_memory import OPT_OUT  # its switch back to glibc's defaults

REPO = Path(__file__).resolve().parents[1]
TARGET_MB = 2048

CHILD = textwrap.dedent(
    """
    import dataclasses, resource, sys, time
    from pathlib import Path
    sys.path.insert(0, {src!r})
    from hpcpipe.launch.host_memory import tune_host_allocator
    tune_host_allocator()  # what the job side does first (run_stage), before torch is imported
    from hpcpipe.config import load_params
    params = load_params({params!r})
    params = dataclasses.replace(
        params,
        data=dataclasses.replace(params.data, source="imagefolder", path={data!r}),
        prepare=dataclasses.replace(params.prepare, train_size=0, test_size=0),
        train=dataclasses.replace(params.train, epochs={epochs}),
    )
    out = Path({out!r})
    began = time.perf_counter()
    if {stage!r} == "prepare":
        from hpcpipe.stages.prepare import prepare
        result = prepare(params, prepared=out / "prepared")
    elif {stage!r} == "train":
        from hpcpipe.stages.train import train
        result = train(params, prepared=out / "prepared", model=out / "model.pt",
                       metrics=out / "train.json", history=out / "history.csv")
    else:
        import torch
        result = {{}}
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"PEAK {{peak_mb:.0f}} SECONDS {{time.perf_counter() - began:.1f}}", flush=True)
    """
)


def peak(stage: str, data: Path, out: Path, epochs: int, allocator: str = "hpcpipe") -> tuple[float, float]:
    code = CHILD.format(
        src=str(REPO / "src"),
        params=str(REPO / "params.yaml"),
        data=str(data),
        out=str(out),
        stage=stage,
        epochs=epochs,
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the CPU path, as the issue asks
    env.pop(OPT_OUT, None)
    if allocator == "default":
        env[OPT_OUT] = "default"  # glibc's and PyTorch's own allocator settings
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=7200)
    if done.returncode != 0:
        raise RuntimeError(f"{stage} failed:\n{done.stderr[-3000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("PEAK "))
    _, mb, _, seconds = line.split()
    return float(mb), float(seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=REPO / ".bench-data")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    if not (args.data / "train").is_dir():
        sys.exit(f"{args.data}: no train/ folder; unpack ../shared/data/cifar10-jpeg.tar.xz there")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        torch_mb, _ = peak("baseline", args.data, out, args.epochs)
        prepare_mb, prepare_s = peak("prepare", args.data, out, args.epochs)
        train_mb, train_s = peak("train", args.data, out, args.epochs)
        default_mb, default_s = peak("train", args.data, out, args.epochs, allocator="default")
    print(f"## train_memory ({time.strftime('%Y-%m-%d')}, {platform.node() or 'vm'}, {os.cpu_count()} CPUs)")
    print(f"command: python benchmarks/train_memory.py --epochs {args.epochs}  (full CIFAR-10, CPU)")
    print()
    print("| process | peak RSS (MB) | vs bare torch | seconds | target |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| bare `import torch` (baseline) | {torch_mb:.0f} | 1.00 | | |")
    rows = [
        ("prepare, 50,000 + 10,000 JPEGs", prepare_mb, prepare_s, ""),
        (f"train, params.yaml's recipe, {args.epochs} epoch(s)", train_mb, train_s, f"< {TARGET_MB} MB"),
        (f"train, same, glibc's default allocator settings ({OPT_OUT}=default)", default_mb, default_s, ""),
    ]
    for name, mb, seconds, target in rows:
        print(f"| {name} | {mb:.0f} | {mb / torch_mb:.2f} | {seconds:.0f} | {target} |")
    print(f"\ntrain's peak is {train_mb / TARGET_MB:.2f} of the {TARGET_MB} MB target;")
    ratios = f"memory {train_mb / default_mb:.2f}, time {train_s / default_s:.2f}"
    print(f"tuned allocator vs glibc's defaults: {ratios}")


if __name__ == "__main__":
    main()
