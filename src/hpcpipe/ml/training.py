"""The training loop, readable top to bottom, its checkpoints, and ``predict`` for evaluation.

Recipe: SGD with nesterov momentum; weight decay on weights only (not on biases or
BatchNorm parameters, which it would only pull toward zero for no regularising
gain, as nanoGPT does); a learning rate set every step: linear warmup over the
first 10% of steps, then cosine decay to zero; plain cross-entropy. The ``fast``
recipe (``hpcpipe.ml.fast``) swaps in a triangular schedule, faster-learning
biases, label smoothing and ``Lookahead``: the ``Plan`` says which.

Resume: with a checkpoint path, ``fit`` saves everything the rest of the run
depends on after every epoch (weights, optimiser, lookahead average, RNG states,
history; the schedule is a function of the step, the loader's batches a function
of the epoch) and picks up after the last saved epoch.

On a GPU the model runs channels_last under bf16 autocast (tensor cores, no loss
scaling needed); on a CPU everything stays float32, which is also what makes a
CPU run bit-for-bit repeatable for a given seed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpcpipe.files import TEMP_MARK, write_atomically
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
) -> list[EpochStats]:
    """Train ``model`` (already on ``device``) for ``epochs`` passes of ``loader``; return the history.

    With ``checkpoint``, the whole training state is written there after every epoch,
    and a run that finds one resumes after its last epoch (see ``resume``): on a CPU
    the result is bitwise the one of an uninterrupted run. ``on_epoch`` is called
    for the epochs run in this call only (a resumed run's earlier ones are in the history).
    """
    optimizer = plan.optimizer
    total_steps = epochs * len(loader)
    fmt = memory_format(device)
    history: list[EpochStats] = []
    if checkpoint is not None:
        history = resume(checkpoint, model, plan, epochs=epochs, steps_per_epoch=len(loader))
    step = len(history) * len(loader)
    for epoch in range(len(history), epochs):
        model.train()
        start = time.perf_counter()
        # Sums stay on the device: calling .item() every step would stall the GPU.
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        current_lr = 0.0
        for images, labels in loader.epoch(epoch):
            for group in optimizer.param_groups:
                group["lr"] = plan.schedule(step, total_steps, group["base_lr"])
            current_lr = optimizer.param_groups[0]["lr"]
            with autocast(device):
                logits = model(images.contiguous(memory_format=fmt))
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=plan.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if plan.lookahead is not None:
                plan.lookahead.step(model, step, total_steps)
            loss_sum += loss.detach() * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            seen += len(labels)
        loss_value, correct_value = loss_sum.item(), correct.item()  # syncs the device: timing is honest
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
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, plan, history, epochs=epochs, steps_per_epoch=len(loader))
        if on_epoch is not None:
            on_epoch(stats)
    if plan.lookahead is not None:
        plan.lookahead.finish(model)
    return history


def _training_state(
    model: nn.Module, plan: Plan, history: list[EpochStats], *, epochs: int, steps_per_epoch: int
) -> dict[str, Any]:
    return {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "history": [dataclasses.asdict(s) for s in history],  # the loader's position: len(history) epochs
        "model": model.state_dict(),
        "optimizer": plan.optimizer.state_dict(),  # momentum buffers, and each group's lr and base_lr
        "lookahead": plan.lookahead.state_dict() if plan.lookahead is not None else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }


def save_checkpoint(
    path: Path, model: nn.Module, plan: Plan, history: list[EpochStats], *, epochs: int, steps_per_epoch: int
) -> None:
    """Write the training state to ``path`` whole, and on disk before it replaces the
    previous one (``files.write_atomically``: temp file, fsync, rename): a kill or the
    loss of the node mid-write leaves the previous checkpoint."""
    state = _training_state(model, plan, history, epochs=epochs, steps_per_epoch=steps_per_epoch)
    write_atomically(path, lambda f: torch.save(state, f))


def resume(
    path: Path, model: nn.Module, plan: Plan, *, epochs: int, steps_per_epoch: int
) -> list[EpochStats]:
    """Load ``path`` into ``model`` and ``plan`` if it exists; return the epochs it had done.

    A checkpoint that cannot be resumed (truncated, unreadable, or of another run shape or
    model: the caller keys checkpoints by the stage's fingerprint, so that is a safety
    net) is said in one line on stderr and set aside as ``NAME.unusable`` (the last one
    only: checkpoints can be large); training starts over instead of failing on every
    rerun. It is checked whole before anything is loaded, so a refused one changes
    nothing. Temp files of writers killed mid-save are removed first.
    """
    for stale in path.parent.glob(f".{path.name}{TEMP_MARK}*"):
        stale.unlink(missing_ok=True)
    if not path.exists():
        return []
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        problem = _mismatch(state, model, plan, epochs=epochs, steps_per_epoch=steps_per_epoch)
    except Exception as err:  # torch says a torn zip or pickle in many ways
        first_line = (str(err).strip().splitlines() or [""])[0]
        problem = f"unreadable ({type(err).__name__}: {first_line})"
    if problem:
        aside = path.with_name(f"{path.name}.unusable")
        os.replace(path, aside)
        print(f"checkpoint {path}: {problem}; set aside as {aside.name}, training starts over",
              file=sys.stderr, flush=True)  # fmt: skip
        return []
    model.load_state_dict(state["model"])
    plan.optimizer.load_state_dict(state["optimizer"])
    if plan.lookahead is not None and state["lookahead"] is not None:
        plan.lookahead.load_state_dict(state["lookahead"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    history = [EpochStats(**row) for row in state["history"]]
    print(f"resuming from {path} after epoch {len(history)}", flush=True)
    return history


def _mismatch(state: Any, model: nn.Module, plan: Plan, *, epochs: int, steps_per_epoch: int) -> str:
    """Why ``state`` cannot be resumed into this run; "" if it can."""
    keys = {"epochs", "steps_per_epoch", "history", "model", "optimizer", "lookahead", "rng"}
    if not isinstance(state, dict) or not keys <= state.keys():
        return "not a training checkpoint of this recipe"
    shape = (state["epochs"], state["steps_per_epoch"])
    if shape != (epochs, steps_per_epoch) or len(state["history"]) > epochs:
        return (
            f"a checkpoint of {shape[0]} epochs x {shape[1]} steps, "
            f"not of this run ({epochs} x {steps_per_epoch})"
        )
    ours = model.state_dict()
    theirs = state["model"]
    if theirs.keys() != ours.keys() or any(theirs[k].shape != v.shape for k, v in ours.items()):
        return "a checkpoint of another model"
    groups = state["optimizer"].get("param_groups", [])
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in plan.optimizer.param_groups]:
        return "a checkpoint of another optimiser setup"
    if (state["lookahead"] is None) != (plan.lookahead is None):
        return "a checkpoint of another recipe (lookahead)"
    return ""


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
