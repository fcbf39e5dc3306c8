"""The training loop, generic over recipes, its checkpoints, and ``predict`` for evaluation.

``fit`` trains a ``recipe.Run`` (``hpcpipe.ml.recipe.build`` makes one from the params):
each step it asks the run's ``Plan`` for the learning rate and the loss and calls its
``after_step``, and ``finish`` at the end; what those do (schedules, label smoothing,
Lookahead) is the recipe's, read in ``hpcpipe.ml.recipe``. What is here is the same for
every recipe: steps, epoch statistics, devices, several tasks, checkpoints and stops.

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
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpcpipe.ml.checkpoint import load_state, save_checkpoint
from hpcpipe.ml.distributed import (
    Ranks,
    agree,
    broadcast_buffers,
    gather_rows,
    shard_bounds,
    sum_across,
)
from hpcpipe.ml.loader import BatchLoader

if TYPE_CHECKING:
    from hpcpipe.ml.recipe import Plan

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
    """Train ``model`` (already on ``device``) for ``epochs`` passes of ``loader`` by ``plan``
    (the three ``recipe.build`` returns, in this order); return the history.

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
            current_lr = plan.set_lr(step, total_steps)
            with autocast(device):
                logits = trainer(images.contiguous(memory_format=fmt))
                loss = plan.loss(logits, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            done += 1
            plan.after_step(model, step, total_steps)
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
    plan.finish(model)
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
