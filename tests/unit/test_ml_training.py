"""Models, the plain recipe's schedule and optimiser, and a short real training run built by
``recipe.build`` (the ``fast`` recipe's parts: test_ml_fast.py)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from hpcpipe.config import TrainParams
from hpcpipe.ml.data import load_split, read_manifest
from hpcpipe.ml.loader import BatchLoader
from hpcpipe.ml.models import build_model
from hpcpipe.ml.recipe import Run, build, lr_at, make_optimizer
from hpcpipe.ml.training import fit, predict

CPU = torch.device("cpu")


def test_tutorial_model_is_the_tutorial_cnn() -> None:
    model = build_model("tutorial")
    assert sum(p.numel() for p in model.parameters()) == 62006  # the tutorial's Net
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_has_a_cifar_stem() -> None:
    model = build_model("resnet18", num_classes=10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    model.eval()
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


def test_unknown_model_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        build_model("vgg")


def test_lr_warms_up_then_decays_to_zero() -> None:
    lrs = [lr_at(step, 100, peak=0.1) for step in range(100)]
    assert lrs[0] == pytest.approx(0.01)  # 10 warmup steps
    assert lrs[9] == pytest.approx(0.1) == max(lrs)
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    assert 0 < lrs[-1] < 1e-3  # annealed, but no step is wasted at exactly 0
    assert lr_at(0, 1, peak=0.1) == pytest.approx(0.1)  # a one-step run still trains


def test_optimizer_uses_nesterov_and_decays_only_weights() -> None:
    model = build_model("tutorial")
    opt = make_optimizer(model, lr=0.1, momentum=0.9, weight_decay=5e-4)
    decay, no_decay = opt.param_groups
    assert opt.defaults["nesterov"] is True
    assert decay["weight_decay"] == 5e-4 and all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim == 1 for p in no_decay["params"])
    assert make_optimizer(model, lr=0.1, momentum=0.0, weight_decay=0.0).defaults["nesterov"] is False


# The plain recipe is ``TrainParams``' defaults (SGD + nesterov 0.9, decay 5e-4, cosine).
TUTORIAL = TrainParams(model="tutorial", epochs=4, batch_size=32, lr=0.05, seed=0)


def _run(prepared: Path) -> tuple[Run, BatchLoader, torch.Tensor]:
    """``TUTORIAL``'s run on the prepared sample, and a loader of its test images."""
    manifest = read_manifest(prepared)
    train, test = load_split(prepared, "train"), load_split(prepared, "test")
    stats = {"mean": manifest["mean"], "std": manifest["std"]}
    run = build(TUTORIAL, train.images, train.labels, **stats)
    return run, BatchLoader(test.images, test.labels, batch_size=250, **stats), test.labels


@pytest.mark.slow  # real training: tens of seconds on 2 cores
def test_tutorial_model_learns_above_chance_on_real_images(prepared_sample: Path) -> None:
    # 2,000 real CIFAR-10 images, 4 epochs: ~3 s on 2 CPU cores. Chance is 10%.
    run, test_loader, test_labels = _run(prepared_sample)
    model = run.model
    seen = []
    history = fit(*run, epochs=TUTORIAL.epochs, device=CPU, on_epoch=seen.append)
    assert seen == history and [s.epoch for s in history] == [1, 2, 3, 4]
    assert history[-1].loss < history[0].loss
    assert history[-1].lr < 1e-3
    predictions, loss = predict(model, test_loader, CPU)
    assert predictions.shape == test_labels.shape and predictions.dtype == torch.int64
    accuracy = (predictions == test_labels).float().mean().item()
    assert accuracy > 0.2, accuracy
    assert loss < 2.2


def test_predict_refuses_a_shuffling_loader(prepared_sample: Path) -> None:
    run, _, _ = _run(prepared_sample)
    with pytest.raises(ValueError, match="without shuffle"):
        predict(run.model, run.loader, CPU)
