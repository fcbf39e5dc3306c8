"""Fixtures for the ML and stage tests: real CIFAR-10 images, shrunk so a test takes seconds.

- ``sample_raw``: 2,500 real JPEGs (200 train + 50 test per class) of the committed
  sample (tests/data/cifar10-sample.tar.xz), unpacked once per session.
- ``mini_raw``: 400 of them (30 + 10 per class), for tests that decode a folder repeatedly.
- ``make_params``: a valid ``Params`` for a tiny CPU run, with per-section overrides.
- ``cifar10_classes``: the class names in CIFAR-10 label order.
- ``prepared_sample``: the prepare stage's output for 2,000 train / 500 test images.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hpcpipe.config import DataParams, EvaluateParams, Params, PrepareParams, TrainParams
from tests.support.sample import extract

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@pytest.fixture(scope="session")
def cifar10_classes() -> tuple[str, ...]:
    """CIFAR-10's class names in label order (what sorted folder names must give)."""
    return CIFAR10_CLASSES


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Run the tiny CPU trainings on one thread.

    For a 62k-parameter net on batches of 32, a second OpenMP thread adds little, and
    on a busy machine (CI, another pytest beside this one) two threads spin-waiting for
    two shared cores made these tests 3-4x slower. Restored afterwards.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def sample_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """200 train and 50 test real CIFAR-10 JPEGs per class (2,500), from the committed sample."""
    return extract(tmp_path_factory.mktemp("sample"), {"train": 200, "test": 50})


@pytest.fixture(scope="session")
def mini_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 train and 10 test images per class (400): for tests that decode a folder repeatedly."""
    return extract(tmp_path_factory.mktemp("mini"), {"train": 30, "test": 10})


def _params(data_path: Path, **sections: dict[str, Any]) -> Params:
    base = Params(
        data=DataParams(source="imagefolder", path=str(data_path)),
        prepare=PrepareParams(train_size=0, test_size=0, seed=0),
        train=TrainParams(model="tutorial", epochs=1, batch_size=32, lr=0.05, seed=0),
        evaluate=EvaluateParams(batch_size=1000),
    )
    updates = {name: dataclasses.replace(getattr(base, name), **values) for name, values in sections.items()}
    return dataclasses.replace(base, **updates)


@pytest.fixture
def make_params(mini_raw: Path) -> Callable[..., Params]:
    """``make_params(train={"epochs": 2})``: params for a tiny run, reading ``mini_raw`` by default."""

    def make(**sections: dict[str, Any]) -> Params:
        return _params(mini_raw, **sections)

    return make


@pytest.fixture(scope="session")
def prepared_sample(sample_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All of ``sample_raw`` (2,000 train / 500 test), prepared once for every training test."""
    from hpcpipe.stages.prepare import prepare

    out = tmp_path_factory.mktemp("prepared") / "prepared"
    prepare(_params(sample_raw), prepared=out)
    return out
