"""Scale-out: the real train stage on 1 and on 2 tasks (torch.distributed, gloo) on this machine's CPUs.

    python benchmarks/scale.py                               # a and b, ~5 minutes on 2 cores
    python benchmarks/scale.py --images 2000 --epochs 1      # smoke run, ~1 minute
    python benchmarks/scale.py --parts b --data .bench-data  # b alone, on a CUDA machine: the full set

a. images/s of ``hpcpipe.stages.train:train`` (params.yaml's ``fast`` recipe, global batch
   and learning rate as there) on the committed sample's first ``--images`` training
   images, run as the job side runs it: once as one process (the baseline, no
   WORLD_SIZE), once as 2 processes with torchrun's environment (RANK, WORLD_SIZE,
   LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free MASTER_PORT), the
   machine's cores shared evenly (torch threads = cores / tasks). The figure is the
   stage's own (rank 0's metrics: all ranks' images over the epochs' seconds); the
   ratio 2/1 is what a second task brings on the same cores: the cost of DDP's
   gradient all-reduce and of smaller per-rank batches, not a speed-up (that needs
   more cores or GPUs than one task can use).
b. CUDA only: one GPU, params.yaml's recipe at width 1 (airbench94's network) on
   ``--data`` (the full CIFAR-10 as JPEG folders: ``tar -xJf
   ../shared/data/cifar10-jpeg.tar.xz -C .bench-data``): images/s and seconds of
   training, and the test accuracy, so "time to 94%" is the seconds when the accuracy
   reaches 0.94. Without CUDA it says so in one line.

Prints a Markdown block to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(1, str(REPO))

from hpcpipe.config import load_params  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(spec_path: str) -> None:
    """One task: the train stage, as the job side calls it in each task."""
    import torch

    from hpcpipe.stages.train import train

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    params = load_params(REPO / "params.yaml")
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, epochs=spec["epochs"]))
    out = Path(spec["out"])
    train(params, prepared=Path(spec["prepared"]), model=out / "model.pt", metrics=out / "train.json",
          history=out / "history.csv")  # fmt: skip


def run_tasks(tasks: int, prepared: Path, epochs: int, scratch: Path) -> tuple[dict, float]:
    """The stage on ``tasks`` processes; rank 0's metrics and the wall-clock seconds of the whole run."""
    out = scratch / f"tasks-{tasks}"
    spec = scratch / f"spec-{tasks}.json"
    threads = max(1, (os.cpu_count() or 1) // tasks)
    spec.write_text(
        json.dumps({"out": str(out), "prepared": str(prepared), "epochs": epochs, "threads": threads})
    )
    port = str(free_port())
    began = time.perf_counter()
    procs = []
    for rank in range(tasks):
        env = dict(os.environ)
        if tasks > 1:
            env.update(RANK=str(rank), WORLD_SIZE=str(tasks), LOCAL_RANK=str(rank),
                       LOCAL_WORLD_SIZE=str(tasks), MASTER_ADDR="127.0.0.1", MASTER_PORT=port)  # fmt: skip
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", str(spec)], env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise SystemExit(f"{tasks} tasks: exit statuses {codes}")
    return json.loads((out / "train.json").read_text()), time.perf_counter() - began


def part_a(args: argparse.Namespace, scratch: Path) -> list[str]:
    from hpcpipe.config import DataParams, PrepareParams
    from hpcpipe.stages.prepare import prepare
    from tests.support.sample import extract

    raw = extract(scratch / "sample", {"train": args.images // 10, "test": 1})
    params = load_params(REPO / "params.yaml")
    params = dataclasses.replace(
        params,
        data=DataParams(source="imagefolder", path=str(raw)),
        prepare=PrepareParams(train_size=0, test_size=0, seed=0),
    )
    prepared = scratch / "prepared"
    prepare(params, prepared=prepared)
    rows = {tasks: run_tasks(tasks, prepared, args.epochs, scratch) for tasks in (1, 2)}
    one, two = rows[1][0], rows[2][0]
    recipe = params.train
    lines = [
        f"a. train stage, fast width {recipe.width}, global batch {recipe.batch_size}, {args.epochs} epochs "
        f"of {args.images} images, CPU, gloo:",
        "",
        "| tasks | torch threads each | images/s (stage) | training s | whole run s (start to exit) | loss |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for tasks, (metrics, wall) in rows.items():
        threads = max(1, (os.cpu_count() or 1) // tasks)
        lines.append(f"| {tasks} | {threads} | {metrics['images_per_s']:.0f} | {metrics['seconds']:.1f} | "
                     f"{wall:.1f} | {metrics['train_loss']:.4f} |")  # fmt: skip
    lines += ["", f"a. ratio 2 tasks / 1 task, images/s: {two['images_per_s'] / one['images_per_s']:.2f}"]
    return lines


def part_b(args: argparse.Namespace) -> list[str]:
    import torch

    if not torch.cuda.is_available():
        return ["b. skipped: no CUDA GPU on this machine (1-GPU images/s and time to 94% need one)"]
    import train_speed  # benchmarks/train_speed.py: the same data loading and recipe as its part d

    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    data = train_speed.load_data(args.data, 0, args.data / "tensors.pt")
    epochs = load_params(REPO / "params.yaml").train.epochs
    train_speed.train_fast(data, device, width=1.0, epochs=1, seed=0)  # warm-up: cuDNN autotuning, CUDA init
    torch.cuda.synchronize()
    began = time.perf_counter()
    model = train_speed.train_fast(data, device, width=1.0, epochs=epochs, seed=1)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - began
    accuracy = train_speed.test_accuracy(model, data, device)
    reached = (
        f"{seconds:.2f} s" if accuracy >= 0.94 else f"not reached ({accuracy:.4f} after {seconds:.2f} s)"
    )
    return [
        f"b. 1 GPU ({torch.cuda.get_device_name()}), fast width 1, {epochs} epochs of "
        f"{len(data.train)} images: {epochs * len(data.train) / seconds:.0f} images/s, "
        f"{seconds:.2f} s, test accuracy {accuracy:.4f}; "
        f"time to 94%: {reached}"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="a: training images of the sample")
    parser.add_argument("--epochs", type=int, default=2, help="a: epochs per run")
    parser.add_argument("--data", type=Path, default=REPO / ".bench-data", help="b: the full set's folders")
    parser.add_argument("--parts", default="ab", help="which parts to run: a, b or ab (the default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    import torch

    load = os.getloadavg()[0]
    header = (f"# {time.strftime('%Y-%m-%d %H:%M')}  {platform.processor() or platform.machine()}  "
              f"{os.cpu_count()} cores  torch {torch.__version__}  load {load:.2f} at start")  # fmt: skip
    lines = []
    if "a" in args.parts:
        with tempfile.TemporaryDirectory(prefix="hpcpipe-scale-") as tmp:
            lines += part_a(args, Path(tmp))
    if "b" in args.parts:
        lines += part_b(args)
    print("\n```\n" + header + "\n```\n\n" + "\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
