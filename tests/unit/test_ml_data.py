"""Raw sources, the stratified subset, channel statistics and the tensor loader."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest
import torch
from torchvision.io import decode_image, encode_png

from hpcpipe.ml.data import (
    DataSourceError,
    channel_stats,
    load_source,
    read_imagefolder,
    stratified_subset,
)
from hpcpipe.ml.loader import BatchLoader, normalize, random_crop, random_flip


# --------------------------------------------------------------------------- sources
@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision 0.29 decode_image
def test_imagefolder_decodes_real_jpegs_into_uint8_tensors(mini_raw: Path, cifar10_classes: tuple) -> None:
    data = read_imagefolder(mini_raw)
    assert data.classes == cifar10_classes
    assert data.train.images.shape == (300, 3, 32, 32)
    assert data.train.images.dtype == torch.uint8
    assert data.train.labels.dtype == torch.int64
    assert data.test.per_class(data.classes) == dict.fromkeys(cifar10_classes, 10)
    # Files are read class by class in sorted order: image 0 is the first airplane.
    first = sorted((mini_raw / "train" / "airplane").iterdir())[0]
    assert torch.equal(data.train.images[0], decode_image(str(first)))


def test_missing_folders_raise_one_line_that_says_how_to_fix_it(tmp_path: Path) -> None:
    with pytest.raises(DataSourceError) as err:
        load_source("imagefolder", tmp_path / "nowhere")
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere") in message
    assert "tar -xJf tests/data/cifar10-sample.tar.xz" in message
    assert "data.source: cifar10" in message


def _write_png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image).numpy().tobytes())


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision 0.29 encode_png
@pytest.mark.parametrize(
    ("shape", "what"),
    [((3, 40, 40), "40x40 with 3 channel"), ((1, 32, 32), "32x32 with 1 channel")],
)
def test_images_that_are_not_32x32_rgb_are_refused(tmp_path: Path, shape: tuple, what: str) -> None:
    good = torch.zeros(3, 32, 32, dtype=torch.uint8)
    _write_png(tmp_path / "train" / "cat" / "a.png", good)
    _write_png(tmp_path / "train" / "cat" / "b.png", torch.zeros(shape, dtype=torch.uint8))
    _write_png(tmp_path / "test" / "cat" / "a.png", good)
    with pytest.raises(DataSourceError, match=what) as err:
        read_imagefolder(tmp_path)
    assert "b.png" in str(err.value)


def test_train_and_test_must_have_the_same_classes(mini_raw: Path, tmp_path: Path) -> None:
    shutil.copytree(mini_raw, tmp_path / "raw")
    shutil.rmtree(tmp_path / "raw" / "test" / "truck")
    with pytest.raises(DataSourceError, match="same class folders"):
        read_imagefolder(tmp_path / "raw")


def test_cifar10_without_network_fails_fast_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Stand-in for a compute node without internet, at the socket boundary, so the
    # test never downloads 170 MB on a machine that does have a network.
    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", refuse)
    with pytest.raises(DataSourceError) as err:
        load_source("cifar10", tmp_path / "cifar")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("could not download CIFAR-10 from https://")
    assert "Connection refused" in message
    assert "cifar-10-python.tar.gz" in message and "data.source: imagefolder" in message


# --------------------------------------------------------------------------- subset
def test_subset_keeps_class_proportions_and_spreads_the_remainder() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    picked = stratified_subset(labels, 10, seed=0)
    assert torch.bincount(labels[picked]).tolist() == [5, 3, 2]
    # 7 of 100: floors 3, 2, 1; the one left goes to the largest remainder (class 0: 0.5).
    assert torch.bincount(labels[stratified_subset(labels, 7, seed=0)]).tolist() == [4, 2, 1]
    # Equal remainders: lowest class index first, never by chance.
    balanced = torch.arange(10).repeat_interleave(100)
    assert torch.bincount(balanced[stratified_subset(balanced, 15, seed=3)]).tolist() == [2] * 5 + [1] * 5


def test_subset_is_deterministic_for_a_seed_and_sorted() -> None:
    labels = torch.arange(10).repeat(100)
    a, b = stratified_subset(labels, 120, seed=7), stratified_subset(labels, 120, seed=7)
    assert torch.equal(a, b)
    assert not torch.equal(a, stratified_subset(labels, 120, seed=8))
    assert torch.equal(a, a.unique())  # sorted, no repeats
    assert torch.equal(stratified_subset(labels, 0, seed=7), torch.arange(1000))


def test_subset_larger_than_the_data_is_an_error() -> None:
    with pytest.raises(ValueError, match=r"prepare.test_size: 11 is more than the 10 test images"):
        stratified_subset(torch.zeros(10, dtype=torch.int64), 11, seed=0, split="test")


def test_channel_stats_match_a_float_computation(mini_raw: Path) -> None:
    images = read_imagefolder(mini_raw).train.images
    mean, std = channel_stats(images)
    x = images.double() / 255
    assert mean == pytest.approx(x.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert std == pytest.approx(x.std(dim=(0, 2, 3), correction=0).tolist(), abs=1e-6)


# --------------------------------------------------------------------------- loader
def _loader(n: int = 100, **kwargs: object) -> BatchLoader:
    images = torch.randint(
        0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    options = {"batch_size": 32, "mean": [0.5] * 3, "std": [0.25] * 3, **kwargs}
    return BatchLoader(images, torch.arange(n), **options)  # type: ignore[arg-type]


def test_loader_batches_have_the_right_shapes_and_types() -> None:
    loader = _loader(shuffle=True, augment=True)
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader) == 4
    assert [len(y) for _, y in batches] == [32, 32, 32, 4]
    x, y = batches[0]
    assert x.shape == (32, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    dropped = _loader(shuffle=True, drop_last=True)
    assert len(dropped) == 3 and dropped.num_images == 96
    assert sum(len(y) for _, y in dropped.epoch(0)) == 96


def test_loader_without_shuffle_or_augment_is_the_normalised_data_in_order() -> None:
    loader = _loader()
    x = torch.cat([x for x, _ in loader.epoch(5)])
    assert torch.equal(x, normalize(loader.images, loader.mean, loader.std))
    assert torch.equal(torch.cat([y for _, y in loader.epoch(5)]), torch.arange(100))


def test_augmentation_is_reproducible_for_a_seed_and_epoch() -> None:
    def first_batch(seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        return next(iter(_loader(shuffle=True, augment=True, seed=seed).epoch(epoch)))

    x, y = first_batch(0, 1)
    x2, y2 = first_batch(0, 1)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, first_batch(0, 2)[0])
    assert not torch.equal(x, first_batch(1, 1)[0])
    # Augmented images are crops/flips of the originals: not the plain normalised image.
    plain = normalize(_loader().images[y], [0.5] * 3, [0.25] * 3)
    assert not torch.equal(x, plain)


def test_random_crop_offsets_and_flip() -> None:
    images = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    centred = random_crop(images, torch.tensor([[4, 4], [4, 4]]))
    assert torch.equal(centred, images)  # offset (pad, pad) is the original image
    shifted = random_crop(images, torch.tensor([[4, 6], [8, 4]]))
    assert torch.equal(shifted[0, :, :, :30], images[0, :, :, 2:])  # moved left by 2
    assert torch.equal(shifted[1, :, :28, :], images[1, :, 4:, :])  # moved up by 4
    flipped = random_flip(images, torch.tensor([True, False]))
    assert torch.equal(flipped[0], images[0].flip(2)) and torch.equal(flipped[1], images[1])
