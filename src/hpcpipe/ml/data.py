"""Raw image sources, the stratified seeded subset, and the prepared tensors.

``prepare`` decodes the raw images ONCE into two uint8 tensors (N x 3 x 32 x 32)
and writes them with their int64 labels; training then never touches an image
file again. That is what makes a CPU epoch cost seconds and a GPU epoch cost
milliseconds: no PIL, no worker processes, no per-image Python.

Two sources (``data.source`` in params.yaml):

- ``imagefolder``: ``path/train/<class>/*.jpg|png`` and ``path/test/<class>/*``;
  classes are the sorted folder names (for CIFAR-10 that is its label order).
  Decoding the 60,000 CIFAR-10 JPEGs takes about 10 s on one core.
- ``cifar10``: torchvision's download of the official archive into ``path``
  (md5 checked by torchvision); an archive already there is used offline.

Whatever goes wrong reaching the data is a ``DataSourceError`` whose message is
one line: what was tried, and how to supply the data instead.

The prepared directory is byte-identical for identical input (tensors are
serialised through a buffer, the manifest is JSON in a fixed key order), so DVC sees no
change when ``prepare`` reruns on the same data.
"""

from __future__ import annotations

import hashlib
import io
import json
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

IMAGE_SHAPE = (3, 32, 32)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")
DOWNLOAD_TIMEOUT_S = 60.0  # a compute node without internet may drop packets rather than refuse


class DataSourceError(RuntimeError):
    """The raw data cannot be read; the message is the one line shown to the user."""


@dataclass(frozen=True)
class Split:
    """One split held in memory: uint8 images N x 3 x 32 x 32 and int64 labels N."""

    images: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: Tensor) -> Split:
        return Split(self.images[index].contiguous(), self.labels[index].contiguous())

    def per_class(self, classes: tuple[str, ...]) -> dict[str, int]:
        counts = torch.bincount(self.labels, minlength=len(classes)).tolist()
        return dict(zip(classes, counts, strict=True))


@dataclass(frozen=True)
class Dataset:
    classes: tuple[str, ...]
    train: Split
    test: Split


# --------------------------------------------------------------------------- sources
def load_source(source: str, path: str | Path) -> Dataset:
    """Read the raw data named by ``data.source`` / ``data.path``."""
    if source == "imagefolder":
        return read_imagefolder(Path(path))
    if source == "cifar10":
        return download_cifar10(Path(path))
    raise DataSourceError(f"data.source {source!r}: unknown; expected 'cifar10' or 'imagefolder'")


def read_imagefolder(root: Path) -> Dataset:
    """Decode ``root/{train,test}/<class>/*`` into tensors; classes are sorted folder names."""
    dirs = {split: root / split for split in SPLITS}
    class_sets = {split: _class_dirs(d) for split, d in dirs.items()}
    if not all(class_sets.values()):
        raise DataSourceError(
            f"data.path '{root}': no train/ and test/ folders with one folder per class; "
            "unpack CIFAR-10 there (e.g. tar -xJf tests/data/cifar10-sample.tar.xz -C data) "
            "or set data.source: cifar10"
        )
    classes = class_sets["train"]
    if class_sets["test"] != classes:
        raise DataSourceError(
            f"data.path '{root}': train/ has classes {list(classes)} but test/ has "
            f"{list(class_sets['test'])}; both need the same class folders"
        )
    train, test = (_read_split(root, dirs[split], classes) for split in SPLITS)
    return Dataset(classes, train, test)


def _class_dirs(split_dir: Path) -> tuple[str, ...]:
    if not split_dir.is_dir():
        return ()
    return tuple(sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith(".")))


def _read_split(root: Path, split_dir: Path, classes: tuple[str, ...]) -> Split:
    images: list[Tensor] = []
    labels: list[int] = []
    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec and warns on
        # EVERY call (60,000 warnings here); they still work, and TorchCodec is not a dependency.
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        for label, name in enumerate(classes):
            decoded = _decode_folder(root, split_dir / name)
            images += decoded
            labels += [label] * len(decoded)
    return Split(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def _decode_folder(root: Path, folder: Path) -> list[Tensor]:
    """Decode one class folder's images, in sorted file-name order, checking each is 32x32 RGB."""
    # Sequential decoding is the fastest option measured on 2 cores: decode_image on
    # a 32x32 JPEG is ~60 us, and a thread pool only added overhead.
    from torchvision.io import decode_image

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataSourceError(
            f"data.path '{root}': {folder.parent.name}/{folder.name}/ has no .jpg or .png images; "
            "every class folder needs at least one"
        )
    images = []
    for file in files:
        raw = torch.frombuffer(bytearray(file.read_bytes()), dtype=torch.uint8)
        try:
            image = decode_image(raw)
        except RuntimeError as err:
            reason = " ".join(str(err).split())
            raise DataSourceError(f"{file}: cannot decode image ({reason})") from None
        if tuple(image.shape) != IMAGE_SHAPE:
            c, h, w = image.shape
            raise DataSourceError(
                f"{file}: image is {h}x{w} with {c} channel(s); expected 32x32 RGB "
                "(resize or convert the images before prepare)"
            )
        images.append(image)
    return images


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # urllib waits forever by default; torchvision's download gives no timeout knob.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def download_cifar10(root: Path) -> Dataset:
    """The official CIFAR-10 via torchvision (downloads once, checks md5, extracts)."""
    from torchvision.datasets import CIFAR10

    try:
        with _socket_timeout(DOWNLOAD_TIMEOUT_S):
            sets = [CIFAR10(root=str(root), train=train, download=True) for train in (True, False)]
    except (OSError, RuntimeError) as err:  # URLError and timeouts are OSErrors; bad md5 is a RuntimeError
        reason = " ".join(str(getattr(err, "reason", None) or err).split())
        raise DataSourceError(
            f"could not download CIFAR-10 from {CIFAR10.url} into '{root}' ({reason}); "
            f"download {CIFAR10.filename} on a machine with internet and put it in '{root}', "
            "or use data.source: imagefolder"
        ) from None
    train, test = (
        # torchvision keeps N x H x W x C numpy arrays; the model wants N x C x H x W.
        Split(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets))
        for s in sets
    )
    return Dataset(tuple(sets[0].classes), train, test)


# --------------------------------------------------------------------------- subset
def stratified_subset(labels: Tensor, size: int, seed: int, *, split: str = "train") -> Tensor:
    """Indices of ``size`` items whose class proportions match ``labels`` (0 = all).

    Each class gets floor(count * size / total); the few left over go to the classes
    with the largest remainders (ties: lowest class index), so the result depends on
    nothing but (labels, size, seed). Within a class the pick is a seeded permutation.
    Returned indices are sorted, so the subset keeps the source's order.
    """
    total = len(labels)
    if size == 0:
        return torch.arange(total)
    if size > total:
        raise ValueError(f"prepare.{split}_size: {size} is more than the {total} {split} images available")
    counts = torch.bincount(labels).tolist()
    quota = [c * size // total for c in counts]
    remainder = [c * size % total for c in counts]
    left = size - sum(quota)
    for cls in sorted(range(len(counts)), key=lambda k: (-remainder[k], k))[:left]:
        quota[cls] += 1
    generator = torch.Generator().manual_seed(seed)
    picked = []
    for cls, n in enumerate(quota):
        members = torch.nonzero(labels == cls).flatten()
        picked.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return torch.cat(picked).sort().values


def channel_stats(images: Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std on the 0..1 scale, computed exactly.

    A 256-bin histogram per channel gives exact integer sums, so the numbers do not
    depend on reduction order or thread count (the manifest must be reproducible).
    """
    mean, std = [], []
    values = torch.arange(256, dtype=torch.float64) / 255
    for c in range(images.shape[1]):
        hist = torch.bincount(images[:, c].flatten(), minlength=256).to(torch.float64)
        n = hist.sum()
        m = (hist * values).sum() / n
        var = (hist * (values - m) ** 2).sum() / n
        mean.append(round(m.item(), 6))
        std.append(round(var.sqrt().item(), 6))
    return mean, std


# --------------------------------------------------------------------------- prepared directory
def torch_save(obj: Any, path: Path) -> None:
    """torch.save, byte-identical for identical ``obj`` whatever ``path`` is called.

    torch.save names its zip records after the file, and the job runner writes to
    temporary names; saving through a buffer fixes the record name to 'archive'.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def save_prepared(directory: Path, data: Dataset, *, source: str) -> dict[str, Any]:
    """Write ``train.pt``, ``test.pt`` and ``manifest.json`` into ``directory``; return the manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    splits = {"train": data.train, "test": data.test}
    for name, split in splits.items():
        torch_save({"images": split.images, "labels": split.labels}, directory / f"{name}.pt")
        digest.update(split.images.numpy().tobytes())
        digest.update(split.labels.numpy().tobytes())
    mean, std = channel_stats(data.train.images)
    manifest = {
        "source": source,
        "classes": list(data.classes),
        **{name: {"count": len(s), "per_class": s.per_class(data.classes)} for name, s in splits.items()},
        "mean": mean,
        "std": std,
        "sha256": digest.hexdigest(),
    }
    write_json(directory / "manifest.json", manifest)
    return manifest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataSourceError(f"{path}: not found; run the prepare stage first") from None


def load_split(directory: Path, split: str) -> Split:
    """One prepared split, on the CPU (the caller moves it to its device once)."""
    path = directory / f"{split}.pt"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataSourceError(f"{path}: not found; run the prepare stage first") from None
    return Split(blob["images"], blob["labels"])
