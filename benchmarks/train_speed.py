"""Training speed: hpcpipe's tensor-resident loader and loop against the tutorial-style pipeline.

    python benchmarks/train_speed.py a b                  # CPU throughput, ~3 minutes
    python benchmarks/train_speed.py c --budget 600       # accuracy in a 10-minute budget, ~25 minutes
    python benchmarks/train_speed.py d --seeds 5          # GPU: `fast` vs airbench94, same GPU and data
    python benchmarks/train_speed.py a b --data tests-sample --limit 200 --steps 2   # smoke run

Each part runs ours and the baseline in the same invocation and prints their ratio:

a. images/s of a training step, loader included, same network (the tutorial CNN and
   resnet18), on the CPU: our ``BatchLoader`` (uint8 tensors in memory, crop and flip
   per batch) vs ImageFolder + PIL transforms + DataLoader (2 workers), the tutorial's way.
b. the loaders alone: augmented batches/s.
c. test accuracy after a fixed training budget on the CPU: our best CPU setting
   (``fast`` at width 0.5, epochs fitted to the budget) vs the tutorial CNN fed by the
   tutorial-style pipeline for the same wall-clock time.
d. GPU only: seconds to train ``fast`` (width 1, params.yaml's recipe) and airbench94
   (PyPI ``airbench``: ``pip install airbench-0.1.8.tar.gz`` where there is no index) on
   the same GPU and data, over ``--seeds`` seeds each, with mean TTA test accuracy.
   airbench reads ``cifar10/{train,test}.pt`` from its working directory; they are
   built here from the same JPEGs. Without CUDA it says so and exits 0.

``--data`` is a folder with ``train/<class>/*.jpg`` and ``test/<class>/*.jpg`` (default
``.bench-data``: ``tar -xJf ../shared/data/cifar10-jpeg.tar.xz -C .bench-data``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hpcpipe.config import load_params  # noqa: E402
from hpcpipe.ml.data import Split, channel_stats, read_imagefolder, stratified_subset  # noqa: E402
from hpcpipe.ml.loader import BatchLoader  # noqa: E402
from hpcpipe.ml.models import build_model  # noqa: E402
from hpcpipe.ml.recipe import build  # noqa: E402
from hpcpipe.ml.training import fit, predict  # noqa: E402

BATCH = 128
DEFAULT_DATA = REPO / ".bench-data"
WORKERS = 2


@dataclasses.dataclass
class Data:
    root: Path
    train: Split
    test: Split
    mean: list[float]
    std: list[float]
    train_index: torch.Tensor  # into ImageFolder's sorted file list: the same images for the baseline
    test_index: torch.Tensor


def load_data(root: Path, limit: int, cache: Path | None) -> Data:
    """Decode the JPEGs (once, with a ``cache`` file); ``limit`` keeps a stratified subset."""
    if cache is not None and cache.exists():
        blob = torch.load(cache, weights_only=True)
        train, test = Split(*blob["train"]), Split(*blob["test"])
    else:
        dataset = read_imagefolder(root)
        train, test = dataset.train, dataset.test
        if cache is not None:
            torch.save({"train": (train.images, train.labels), "test": (test.images, test.labels)}, cache)
    train_index = stratified_subset(train.labels, limit, 0) if limit else torch.arange(len(train))
    test_index = stratified_subset(test.labels, max(1, limit // 5), 1, split="test") if limit else None
    test_index = test_index if test_index is not None else torch.arange(len(test))
    train, test = train.subset(train_index), test.subset(test_index)
    mean, std = channel_stats(train.images)
    return Data(root, train, test, mean, std, train_index, test_index)


# --------------------------------------------------------------------------- the two pipelines
def baseline_loader(data: Data, batch: int, split: str = "train", augment: bool = True) -> Any:
    """The tutorial's way: ImageFolder, PIL transforms per image, a DataLoader with workers."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if augment else []
    steps += [transforms.ToTensor(), transforms.Normalize(data.mean, data.std)]
    folder = datasets.ImageFolder(str(data.root / split), transform=transforms.Compose(steps))
    index = data.train_index if split == "train" else data.test_index
    return DataLoader(
        Subset(folder, index.tolist()),
        batch_size=batch,
        shuffle=split == "train",
        num_workers=WORKERS,
        drop_last=split == "train",
        persistent_workers=True,
    )


def our_loader(data: Data, batch: int, **options: Any) -> BatchLoader:
    return BatchLoader(
        data.train.images, data.train.labels, batch_size=batch, mean=data.mean, std=data.std,
        shuffle=True, augment=True, drop_last=True, **options,
    )  # fmt: skip


def endless(batches: Callable[[int], Iterator[Any]]) -> Iterator[Any]:
    epoch = 0
    while True:
        yield from batches(epoch)
        epoch += 1


def baseline_batches(loader: Any) -> Iterator[Any]:
    return endless(lambda _epoch: iter(loader))


def our_batches(loader: BatchLoader) -> Iterator[Any]:
    return endless(loader.epoch)


def rate(batches: Iterator[Any], count: int, work: Callable[[Any], None], warmup: int = 2) -> float:
    """Images per second over ``count`` batches, after ``warmup`` batches (workers started, caches warm)."""
    for _ in range(warmup):
        work(next(batches))
    seen, began = 0, time.perf_counter()
    for _ in range(count):
        images, labels = next(batches)
        work((images, labels))
        seen += len(labels)
    return seen / (time.perf_counter() - began)


def sgd_step(model: torch.nn.Module, lr: float = 0.01) -> Callable[[Any], None]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step(batch: Any) -> None:
        images, labels = batch
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def ratio_line(name: str, ours: float, baseline: float, unit: str, target: str = "") -> str:
    wanted = f"  (target {target})" if target else ""
    sides = f"ours {ours:,.1f} {unit}, baseline {baseline:,.1f} {unit}"
    return f"{name}: {sides}, ratio {ours / baseline:.2f}x{wanted}"


# --------------------------------------------------------------------------- parts
def part_a(data: Data, args: argparse.Namespace) -> None:
    for name in args.models:
        steps = args.steps if name == "tutorial" else max(2, args.steps // 10)
        results = []
        for batches in (our_batches(our_loader(data, BATCH)), baseline_batches(baseline_loader(data, BATCH))):
            torch.manual_seed(0)
            model = build_model(name).train()
            results.append(rate(batches, steps, sgd_step(model)))
        target = ">= 2x" if name == "tutorial" else ""
        print(ratio_line(f"a. train step, {name}, batch {BATCH}", *results, "images/s", target), flush=True)


def part_b(data: Data, args: argparse.Namespace) -> None:
    steps = args.steps * 5
    ours = rate(our_batches(our_loader(data, BATCH)), steps, lambda _b: None) / BATCH
    base = rate(baseline_batches(baseline_loader(data, BATCH)), steps, lambda _b: None) / BATCH
    print(
        ratio_line(f"b. loader alone, batch {BATCH}, augmented", ours, base, "batches/s", ">= 20x"),
        flush=True,
    )


def test_accuracy(model: torch.nn.Module, data: Data, device: torch.device) -> float:
    loader = BatchLoader(
        data.test.images.to(device),
        data.test.labels.to(device),
        batch_size=1000,
        mean=data.mean,
        std=data.std,
    )
    predictions, _ = predict(model, loader, device)
    return (predictions == data.test.labels).float().mean().item()


def train_fast(data: Data, device: torch.device, *, width: float, epochs: int, seed: int) -> torch.nn.Module:
    """params.yaml's ``fast`` recipe at ``width`` for ``epochs`` and ``seed``, data on ``device``:
    the run the train stage builds (``recipe.build``), trained by the same ``fit``."""
    recipe = load_params(REPO / "params.yaml").train
    p = dataclasses.replace(recipe, model="fast", width=width, epochs=epochs, seed=seed)
    run = build(p, data.train.images, data.train.labels, mean=data.mean, std=data.std, device=device)
    fit(*run, epochs=epochs, device=device)
    return run.model


def part_c(data: Data, args: argparse.Namespace) -> None:
    cpu = torch.device("cpu")
    began = time.perf_counter()
    # Ours: fit the epoch count to the budget from a short probe of the same network (counted in it).
    probe = build_model("fast", width=args.width)
    step = sgd_step(probe)
    images_per_s = rate(our_batches(our_loader(data, min(1024, len(data.train)))), 2, step, warmup=1)
    epochs = max(1, int((args.budget - (time.perf_counter() - began)) * images_per_s * 0.9 / len(data.train)))
    model = train_fast(data, cpu, width=args.width, epochs=epochs, seed=0)
    ours_s, ours_acc = time.perf_counter() - began, test_accuracy(model, data, cpu)
    print(f"c. ours: fast width {args.width}, {epochs} epochs, {ours_s:.0f} s, test accuracy {ours_acc:.4f}")

    # Baseline: the tutorial CNN, tutorial-style pipeline, for as long as ours took (ours
    # cannot stop mid-schedule, so it may overrun the budget by part of an epoch).
    torch.manual_seed(0)
    model = build_model("tutorial").train()
    step, batches = sgd_step(model), baseline_batches(baseline_loader(data, 32))
    began, steps = time.perf_counter(), 0
    while time.perf_counter() - began < max(args.budget, ours_s):
        step(next(batches))
        steps += 1
    base_s = time.perf_counter() - began
    accuracy = tutorial_accuracy(model, data)
    epochs = steps * 32 / len(data.train)
    print(f"c. baseline: tutorial CNN, {epochs:.1f} epochs, {base_s:.0f} s, test accuracy {accuracy:.4f}")
    print(f"c. accuracy in the same budget: ours {ours_acc:.4f} vs baseline {accuracy:.4f}", flush=True)


@torch.no_grad()
def tutorial_accuracy(model: torch.nn.Module, data: Data) -> float:
    model.eval()
    hits = total = 0
    for images, labels in baseline_loader(data, 500, split="test", augment=False):
        hits += (model(images).argmax(1) == labels).sum().item()
        total += len(labels)
    return hits / total


def part_d(data: Data, args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print("d. skipped: no CUDA GPU on this machine (the part needs one)")
        return
    try:
        import airbench
    except ImportError:
        print("d. skipped: `airbench` is not installed (pip install airbench, or airbench-0.1.8.tar.gz)")
        return
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    folder = data.root / "airbench" / "cifar10"
    folder.mkdir(parents=True, exist_ok=True)
    for name, split in (("train.pt", data.train), ("test.pt", data.test)):  # airbench's layout: N x H x W x C
        images = split.images.permute(0, 2, 3, 1).contiguous()
        torch.save({"images": images, "labels": split.labels, "classes": list(range(10))}, folder / name)
    os.chdir(folder.parent)  # airbench's test loader reads ./cifar10/test.pt

    def ours(seed: int) -> torch.nn.Module:
        model = train_fast(data, device, width=1.0, epochs=args.epochs, seed=seed)
        torch.cuda.synchronize()
        return model

    def theirs(seed: int) -> Any:
        torch.manual_seed(seed)
        loader = airbench.CifarLoader(
            "cifar10", train=True, batch_size=1024, aug={"flip": True, "translate": 2}, altflip=True
        )
        return airbench.train94(train_loader=loader, verbose=False)

    def their_accuracy(model: Any) -> float:
        return airbench.evaluate(
            model, airbench.CifarLoader("cifar10", train=False, batch_size=2000), tta_level=2
        )

    ours(0), theirs(0)  # warm-up: cuDNN autotuning, lazy CUDA init
    rows = {"ours (fast)": [], "airbench94": []}
    for seed in range(1, args.seeds + 1):
        for name, train, accuracy in (
            ("ours (fast)", ours, lambda m: test_accuracy(m, data, device)),
            ("airbench94", theirs, their_accuracy),
        ):
            torch.cuda.synchronize()
            began = time.perf_counter()
            model = train(seed)
            torch.cuda.synchronize()
            rows[name].append((time.perf_counter() - began, accuracy(model)))
    for name, values in rows.items():
        seconds = sum(s for s, _ in values) / len(values)
        acc = sum(a for _, a in values) / len(values)
        print(f"d. {name}: {len(values)} seeds, mean {seconds:.2f} s, mean test accuracy {acc:.4f}")
    ours_s = sum(s for s, _ in rows["ours (fast)"]) / args.seeds
    theirs_s = sum(s for s, _ in rows["airbench94"]) / args.seeds
    print(
        f"d. time ratio ours/airbench94: {ours_s / theirs_s:.2f}  (target <= 1.5, stretch <= 1.0)", flush=True
    )


PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", choices=[*PARTS, "all"])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="train/ and test/ class folders")
    parser.add_argument("--cache", type=Path, help="decoded tensors (default: .bench-data/tensors.pt there)")
    parser.add_argument(
        "--limit", type=int, default=0, help="keep this many training images (smoke runs); 0 = all"
    )
    parser.add_argument("--steps", type=int, default=30, help="timed batches per measurement in a and b")
    parser.add_argument(
        "--models", nargs="+", default=["tutorial", "resnet18"], choices=["tutorial", "resnet18"]
    )
    parser.add_argument("--budget", type=float, default=600.0, help="c: training seconds per side")
    parser.add_argument("--width", type=float, default=0.5, help="c: width of our fast net on the CPU")
    parser.add_argument("--seeds", type=int, default=5, help="d: seeds per side")
    parser.add_argument("--epochs", type=int, default=10, help="d: epochs of our fast recipe")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    parts = list(PARTS) if "all" in args.parts else args.parts
    when = time.strftime("%Y-%m-%d %H:%M")
    setup = f"torch {torch.__version__}  threads {torch.get_num_threads()}  load {os.getloadavg()[0]:.2f}"
    print(f"# {when}  {setup}  data {args.data}  limit {args.limit or 'all'}", flush=True)
    if parts == ["d"] and not torch.cuda.is_available():
        part_d(None, args)  # type: ignore[arg-type]  # says why and returns before touching data
        return 0
    cache = args.cache or (DEFAULT_DATA / "tensors.pt" if args.data == DEFAULT_DATA else None)
    data = load_data(args.data, args.limit, cache)
    for part in parts:
        PARTS[part](data, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
