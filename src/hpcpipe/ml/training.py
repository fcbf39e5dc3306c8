"""The training loop, readable top to bottom, its checkpoints, and ``predict`` for evaluation.

Recipe: SGD with nesterov momentum; weight decay on weights only (not on biases or
BatchNorm parameters, which it would only pull toward zero for no regularising
gain, as nanoGPT does); a learning rate set every step: linear warmup over the
first 10% of steps, then cosine decay to zero; plain cross-entropy. The ``fast``
recipe (``hpcpipe.ml.recipe``) swaps in a triangular schedule, faster-learning
biases, label smoothing and ``Lookahead``: the ``Plan`` says which.

Resume: with a checkpoint path, ``fit`` saves everything the rest of the run
depends on after every epoch (weights, optimiser, lookahead average, RNG states,
history; the schedule is a function of the step, the loader's batches a function
of the epoch) and picks up after the last saved epoch. Given a ``stop`` predicate (the
job's warning signal, ``hpcpipe.ml.stopping``), it stops at the next step where it is
true, saves the state mid-epoch with the batch reached, and raises ``Stopped``.

Several tasks (``ranks``, see ``hpcpipe.ml.distributed``): the model is wrapped in
DistributedDataParallel, each rank trains on its share of every global batch, the
epoch's loss and accuracy are summed over the ranks, the ranks agree on a stop
(every ``STOP_CHECK_STEPS`` steps: each agreement is a device sync), and only rank 0
writes the checkpoint; every rank resumes from it. BatchNorm running statistics are
rank 0's at the end (see the README, "One stage on several tasks").

On a GPU the model runs channels_last under bf16 autocast (tensor cores, no loss
scaling needed); on a CPU everything stays float32, which is also what makes a
CPU run bit-for-bit repeatable for a given seed.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpcpipe.ml.checkpoint import load_state, resume, save_checkpoint
from hpcpipe.ml.distributed import (
    Ranks,
    agree,
    broadcast_buffers,
    gather_rows,
    pick_device,
    shard_bounds,
    sum_across,
)
from hpcpipe.ml.loader import BatchLoader

# each has one home (ml.distributed, ml.checkpoint); importable from here as before
__all__ = ["pick_device", "resume", "save_checkpoint"]

WARMUP_FRACTION = 0.1
STOP_CHECK_STEPS = 10  # several tasks: how often they agree on a stop (each time a device sync)


class Stopped(Exception):
    """Training stopped at the warning signal; its state is in the checkpoint (rank 0 wrote it)."""


@dataclass(frozen=True)
class EpochStats:
    """One line of the training history."""

    epoch: int
    loss: float  # mean cross-entropy over the epoch's (augmented) batches
    accuracy: float  # on those same batches, as the model stood at each step
    lr: float  # at the epoch's last step
    images_per_s: float
    seconds: float


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


def triangle(step: int, total_steps: int, peak: float, start: float = 0.2, peak_at: float = 0.23) -> float:
    """The speed-run schedule: linear from ``start`` x peak up to ``peak`` at ``peak_at`` of the
    steps, then linearly down to 0 (reached one step after the last)."""
    top = max(1, round(peak_at * total_steps))
    if step <= top:
        return peak * (start + (1 - start) * min(1.0, step / top))
    return peak * max(0.0, 1 - (step - top) / (total_steps - top))


SCHEDULES: dict[str, Callable[[int, int, float], float]] = {"cosine": lr_at, "triangle": triangle}


def make_optimizer(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float, bias_lr_scale: float = 1.0
) -> torch.optim.SGD:
    """SGD, nesterov when there is momentum; weight decay only on >=2-D tensors (weights).

    Biases and BatchNorm shifts learn ``bias_lr_scale`` times faster: with BatchNorm
    after a conv, the weights' effective step is scaled by their norm, the biases'
    is not, so at one learning rate the biases learn far too slowly. Each group
    keeps its peak learning rate as ``base_lr``; the schedule scales that every step.
    Frozen parameters (requires_grad False) are left out.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.ndim >= 2]
    no_decay = [p for p in trainable if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay, "base_lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "base_lr": lr * bias_lr_scale},
    ]
    return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)


class Lookahead:
    """Lookahead toward an exponential average of the weights (the speed-run variant).

    Every ``every`` steps the average takes a step toward the current weights and the
    weights are reset to the average; its decay rises as (progress)^3 to ``peak_decay``,
    so early training is left alone and the last epochs are averaged. ``finish`` sets
    the weights to the average. BatchNorm running statistics are averaged too.
    """

    def __init__(self, model: nn.Module, every: int = 5, peak_decay: float = 0.95**5) -> None:
        self.every, self.peak_decay = every, peak_decay
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """Call after optimiser step number ``step`` (1-based)."""
        if step % self.every:
            return
        decay = self.peak_decay * (step / total_steps) ** 3
        for name, value in model.state_dict().items():
            if name in self.average:
                self.average[name].lerp_(value, 1 - decay)
                value.copy_(self.average[name])

    @torch.no_grad()
    def finish(self, model: nn.Module) -> None:
        for name, value in model.state_dict().items():
            if name in self.average:
                value.copy_(self.average[name])

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.average)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, value in state.items():
            self.average[name].copy_(value)


@dataclass
class Plan:
    """How to train: the optimiser, its schedule and the extras of a recipe."""

    optimizer: torch.optim.Optimizer
    schedule: Callable[[int, int, float], float] = lr_at  # (step, total steps, base lr) -> lr
    label_smoothing: float = 0.0
    lookahead: Lookahead | None = None


def sgd_plan(model: nn.Module, *, lr: float, momentum: float, weight_decay: float) -> Plan:
    """The plain recipe of the module docstring (the ``tutorial``/``resnet18`` defaults)."""
    return Plan(make_optimizer(model, lr=lr, momentum=momentum, weight_decay=weight_decay))


def fit(
    model: nn.Module,
    loader: BatchLoader,
    plan: Plan,
    *,
    epochs: int,
    device: torch.device,
    on_epoch: Callable[[EpochStats], None] | None = None,
    checkpoint: Path | None = None,
    ranks: Ranks | None = None,
    stop: Callable[[], bool] | None = None,
) -> list[EpochStats]:
    """Train ``model`` (already on ``device``) for ``epochs`` passes of ``loader``; return the history.

    With ``checkpoint``, the whole training state is written there after every epoch,
    and a run that finds one resumes after its last epoch (see ``resume``): on a CPU
    the result is bitwise the one of an uninterrupted run. ``on_epoch`` is called
    for the epochs run in this call only (a resumed run's earlier ones are in the history).
    ``ranks``/``stop``: see the module docstring.
    """
    ranks = ranks or Ranks(device=device)
    optimizer = plan.optimizer
    steps_per_epoch = len(loader)
    total_steps = epochs * steps_per_epoch
    fmt = memory_format(device)
    history: list[EpochStats] = []
    partial: dict[str, Any] | None = None
    if checkpoint is not None:
        history, partial = load_state(checkpoint, model, plan, epochs, steps_per_epoch, ranks)
    trainer = _wrap(model, ranks)
    step = len(history) * steps_per_epoch
    for epoch in range(len(history), epochs):
        trainer.train()
        start = time.perf_counter()
        # Sums stay on the device: calling .item() every step would stall the GPU.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        done = 0  # batches of this epoch behind us
        if partial is not None:  # resumed mid-epoch: this rank's sums so far, and the batch reached
            done, earlier_s = partial["batches"], partial["seconds"]
            mine = _my_sums(partial["sums"], ranks)
            loss_sum += mine[0].float().to(device)
            correct += mine[1].long().to(device)
            seen = int(mine[2].item())
            start -= earlier_s
            step += done
            partial = None
        current_lr = 0.0
        stopping = False
        for images, labels in loader.epoch(epoch, start=done):
            for group in optimizer.param_groups:
                group["lr"] = plan.schedule(step, total_steps, group["base_lr"])
            current_lr = optimizer.param_groups[0]["lr"]
            with autocast(device):
                logits = trainer(images.contiguous(memory_format=fmt))
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=plan.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            done += 1
            if plan.lookahead is not None:
                plan.lookahead.step(model, step, total_steps)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
            if stop is not None and _stop_now(ranks, stop, step, done == steps_per_epoch):
                stopping = True
                break
        if done < steps_per_epoch:  # stopped mid-epoch: save where every rank stands, then end
            sums = torch.stack([loss_sum.double(), correct.double(), torch.tensor(seen, dtype=torch.float64)])
            gathered = gather_rows(ranks, sums.to(device)).view(-1, 3).cpu()  # rank by rank
            if checkpoint is not None and ranks.primary:
                position = {"batches": done, "sums": gathered, "seconds": time.perf_counter() - start}
                save_checkpoint(checkpoint, model, plan, history, epochs=epochs,
                                steps_per_epoch=steps_per_epoch, partial=position)  # fmt: skip
            raise Stopped(f"stopped at the warning signal in epoch {epoch + 1}, after batch {done}")
        loss_total, correct_total, seen_total = sum_across(
            ranks, loss_sum, correct, torch.tensor(seen, device=device)
        )
        loss_value, correct_value = loss_total.item(), correct_total.item()  # syncs: timing is honest
        seen = int(seen_total.item())
        seconds = time.perf_counter() - start
        stats = EpochStats(
            epoch=epoch + 1,
            loss=loss_value / max(1, seen),
            accuracy=correct_value / max(1, seen),
            lr=current_lr,
            images_per_s=seen / seconds,
            seconds=seconds,
        )
        history.append(stats)
        if checkpoint is not None and ranks.primary:
            save_checkpoint(checkpoint, model, plan, history, epochs=epochs, steps_per_epoch=steps_per_epoch)
        if on_epoch is not None:
            on_epoch(stats)
        if stopping and epoch + 1 < epochs:
            raise Stopped(f"stopped at the warning signal after epoch {epoch + 1}")
    if plan.lookahead is not None:
        plan.lookahead.finish(model)
    broadcast_buffers(ranks, model)  # BatchNorm statistics: rank 0's on every rank
    return history


def _wrap(model: nn.Module, ranks: Ranks) -> nn.Module:
    """The module to run forward and backward through: DDP over the ranks, or ``model`` itself.

    Lookahead, checkpoints and the saved weights use ``model`` (no ``module.`` prefix).
    Buffers are not broadcast every step: with SyncBatchNorm they agree anyway, and
    per-rank BatchNorm statistics never reach the weights in training mode; ``fit``
    makes them rank 0's at the end.
    """
    if not ranks.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    # torch renamed the switch (broadcast_buffers is deprecated from 2.10 or so)
    parameters = inspect.signature(DistributedDataParallel).parameters
    no_sync = "forward_sync_buffers" if "forward_sync_buffers" in parameters else "broadcast_buffers"
    return DistributedDataParallel(model, device_ids=ids, **{no_sync: False})


def _stop_now(ranks: Ranks, stop: Callable[[], bool], step: int, epoch_end: bool) -> bool:
    """Whether every rank stops after this step. One task asks ``stop`` every step; several
    agree every ``STOP_CHECK_STEPS`` global steps and at each epoch's end (the same steps on
    every rank, so each all_reduce has all of them)."""
    if not ranks.distributed:
        return stop()
    if step % STOP_CHECK_STEPS and not epoch_end:
        return False
    return agree(ranks, stop())


def _my_sums(sums: Tensor, ranks: Ranks) -> Tensor:
    """This rank's (loss sum, correct, seen) of a mid-epoch checkpoint; if it was saved by
    another number of tasks, rank 0 carries them all."""
    if len(sums) == ranks.world_size:
        return sums[ranks.rank]
    return sums.sum(0) if ranks.primary else torch.zeros(3, dtype=torch.float64)


@torch.no_grad()
def predict(
    model: nn.Module, loader: BatchLoader, device: torch.device, ranks: Ranks | None = None
) -> tuple[Tensor, float]:
    """Predicted class per image (CPU int64, in the loader's order) and the mean cross-entropy.

    Several tasks: each rank predicts its contiguous share of the images and every rank
    gets all the predictions, in order, and the loss over all of them.
    """
    ranks = ranks or Ranks(device=device)
    if loader.shuffle or loader.augment:
        raise ValueError("predict needs a loader without shuffle or augment (predictions follow its order)")
    if ranks.distributed:
        lo, hi = shard_bounds(len(loader.labels), ranks)
        loader = BatchLoader(loader.images[lo:hi], loader.labels[lo:hi], batch_size=loader.batch_size,
                             mean=loader.mean, std=loader.std)  # fmt: skip
    model.eval()
    fmt = memory_format(device)
    predictions: list[Tensor] = []
    loss_sum = torch.zeros((), device=device)
    seen = 0
    for images, labels in loader.epoch(0):
        with autocast(device):
            logits = model(images.contiguous(memory_format=fmt)).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        predictions.append(logits.argmax(1))
        seen += len(labels)
    preds = torch.cat(predictions).cpu() if predictions else torch.zeros(0, dtype=torch.int64)
    preds = gather_rows(ranks, preds)
    loss_total, seen_total = sum_across(ranks, loss_sum, torch.tensor(seen, device=device))
    return preds, loss_total.item() / max(1, int(seen_total.item()))
