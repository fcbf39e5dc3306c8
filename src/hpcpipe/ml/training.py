"""The training recipe, readable top to bottom, and ``predict`` for evaluation.

Recipe: SGD with nesterov momentum; weight decay on weights only (not on biases or
BatchNorm parameters, which it would only pull toward zero for no regularising
gain, as nanoGPT does); a learning rate set every step: linear warmup over the
first 10% of steps, then cosine decay to zero; plain cross-entropy.

On a GPU the model runs channels_last under bf16 autocast (tensor cores, no loss
scaling needed); on a CPU everything stays float32, which is also what makes a
CPU run bit-for-bit repeatable for a given seed.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpcpipe.ml.loader import BatchLoader

WARMUP_FRACTION = 0.1


@dataclass(frozen=True)
class EpochStats:
    """One line of the training history."""

    epoch: int
    loss: float  # mean cross-entropy over the epoch's (augmented) batches
    accuracy: float  # on those same batches, as the model stood at each step
    lr: float  # at the epoch's last step
    images_per_s: float
    seconds: float


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_format(device: torch.device) -> torch.memory_format:
    # channels_last lets cuDNN use tensor-core kernels without transposes; on the
    # CPU it brings nothing for these sizes, so keep the default layout there.
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def autocast(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """bf16 autocast on a GPU; a no-op on the CPU (float32 keeps CPU runs deterministic)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def lr_at(step: int, total_steps: int, peak: float, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """Learning rate for 0-based ``step``: linear warmup to ``peak``, then cosine to 0.

    Warmup keeps the first steps of a freshly initialised net (and of large batches)
    from diverging; the cosine tail anneals, where most of the final accuracy comes from.
    """
    warmup = max(1, round(warmup_fraction * total_steps))
    if step < warmup:
        return peak * (step + 1) / warmup
    # Reaches zero one step after the last, so no step is spent at lr 0.
    progress = (step - warmup + 1) / (total_steps - warmup + 1)
    return peak * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD, nesterov when there is momentum; weight decay only on >=2-D tensors (weights)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


def fit(
    model: nn.Module,
    loader: BatchLoader,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Train ``model`` (already on ``device``) for ``epochs`` passes of ``loader``; return the history."""
    optimizer = make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay)
    total_steps = epochs * len(loader)
    fmt = memory_format(device)
    history: list[EpochStats] = []
    step = 0
    for epoch in range(epochs):
        model.train()
        start = time.perf_counter()
        # Sums stay on the device: calling .item() every step would stall the GPU.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for images, labels in loader.epoch(epoch):
            current_lr = lr_at(step, total_steps, lr)
            for group in optimizer.param_groups:
                group["lr"] = current_lr
            with autocast(device):
                logits = model(images.contiguous(memory_format=fmt))
                loss = F.cross_entropy(logits.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            step += 1
        loss_value, correct_value = loss_sum.item(), correct.item()  # syncs the device: timing is honest
        seconds = time.perf_counter() - start
        stats = EpochStats(
            epoch=epoch + 1,
            loss=loss_value / max(1, seen),
            accuracy=correct_value / max(1, seen),
            lr=current_lr if seen else 0.0,
            images_per_s=seen / seconds,
            seconds=seconds,
        )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)
    return history


@torch.no_grad()
def predict(model: nn.Module, loader: BatchLoader, device: torch.device) -> tuple[Tensor, float]:
    """Predicted class per image (CPU int64, in the loader's order) and the mean cross-entropy."""
    model.eval()
    fmt = memory_format(device)
    predictions: list[Tensor] = []
    loss_sum = torch.zeros((), device=device)
    seen = 0
    for images, labels in _batches(loader):
        with autocast(device):
            logits = model(images.contiguous(memory_format=fmt)).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        predictions.append(logits.argmax(1))
        seen += len(labels)
    preds = torch.cat(predictions).cpu() if predictions else torch.zeros(0, dtype=torch.int64)
    return preds, loss_sum.item() / max(1, seen)


def _batches(loader: BatchLoader) -> Iterator[tuple[Tensor, Tensor]]:
    if loader.shuffle or loader.augment:
        raise ValueError("predict needs a loader without shuffle or augment (predictions follow its order)")
    return loader.epoch(0)
