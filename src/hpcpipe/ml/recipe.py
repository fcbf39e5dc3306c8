"""The training recipe, top to bottom: settings, network, optimiser, schedule, Lookahead, plan, ``build``.

``train.model: fast`` is a CIFAR-10 speed-run recipe built from the public write-ups of
that line of work (David Page, "How to train your ResNet", 2018; tysam-code's
hlb-CIFAR10; Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024,
whose airbench94 it follows most closely), written from the descriptions, not from their
code. ``tutorial`` and ``resnet18`` train by the plain recipe, which is the same code with
other params (``TrainParams``' defaults): SGD with nesterov momentum, weight decay on
weights only, linear warmup then cosine decay, plain cross-entropy.

    # params.yaml (the committed defaults):
    #   train: {model: fast, width: 0.5, epochs: 10, batch_size: 1024, lr: 1.5, momentum: 0.85,
    #           weight_decay: 0.0013, bias_lr_scale: 64, label_smoothing: 0.2, lookahead: true,
    #           schedule: triangle, augment: true, translate: 2, alternating_flip: true}
    hpcpipe run train   # or: dvc repro

Measured (benchmarks/RESULTS.md; 2 CPU cores, no GPU, 2026-11-27):

- the committed 10k-image sample, params.yaml as committed (width 0.5, 10 epochs):
  73.5-73.9% test accuracy, 5-7 minutes of training;
- full CIFAR-10, width 0.5, 4 epochs (what fits 10 minutes on 2 cores):
  84.3% in 623-693 s (``python benchmarks/train_speed.py c --budget 600``);
- on a GPU, with width 1 (airbench94's network): not measured yet, no GPU was at
  hand. airbench94 reaches 94% mean test accuracy in ~10 epochs, a few seconds on an
  A100; ``python benchmarks/train_speed.py d`` measures ours against it on one GPU.

The techniques, and why each is here:

- **Whitening first layer.** A frozen 2x2 conv whose 24 filters are the eigenvectors
  of the covariance of 2x2 patches of the training images, scaled by
  1/sqrt(eigenvalue), with their negatives (``whiten_init``). The first layer then
  starts out decorrelating pixels, which a randomly initialised one spends epochs
  learning to do.
- **Identity (Dirac) initialisation** of the first in-channels of each conv, so a
  freshly built deep net passes its input through and trains from the first step.
- **BatchNorm with frozen scale, fast-learning shift.** The BN weights stay 1 (a
  following BN makes them redundant); the biases learn ``bias_lr_scale`` (64x) faster
  than the weights, because with BN the weights' effective step is set by their norm,
  while a bias's is not (``make_optimizer``).
- **Label smoothing** (0.2): a cheap regulariser that keeps logits from growing to fit
  noisy labels (``Plan.loss``).
- **Lookahead**: every 5 steps the weights are pulled to an exponential average of
  themselves, with a decay that rises to 0.95^5 as training ends; the final weights are
  the average. A free ensemble over the last epochs.
- **Alternating flips** (in the loader, ``hpcpipe.ml.loader``, which ``build`` sets up):
  each image is flipped at random in the first epoch and then the opposite way each
  epoch after, so consecutive epochs see both views of every image, not a coin toss.
- **Translate by 2** (reflect padding) and a **triangular learning rate** (0.2x up to 1x
  at 23% of the steps, then linearly to 0).
- **Test-time flip augmentation**: in eval mode the net averages its logits on the
  image and its mirror image, so ``evaluate`` gets it without knowing the model.
- Max-pool inside each block, global max-pool, logits scaled by 1/9, GELU.

``hpcpipe.ml.training.fit`` is the loop; it calls the ``Plan``'s methods for everything
recipe-specific and knows nothing else of the recipe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hpcpipe.config import TrainParams
from hpcpipe.ml.distributed import Ranks
from hpcpipe.ml.loader import BatchLoader, normalize
from hpcpipe.ml.models import build_model
from hpcpipe.ml.training import memory_format

WIDTHS = (64, 256, 256)
WHITEN_CHANNELS = 24  # 12 eigen-filters of 2x2x3 patches and their negatives
WHITEN_IMAGES = 5000  # enough for a stable 12x12 covariance, cheap on a CPU
WHITEN_EPS = 5e-4
WHITEN_CHUNK = 500  # images per step of the covariance sum
BN_MOMENTUM = 0.4  # PyTorch's convention: 0.4 of each new batch's statistics
LOGIT_SCALE = 1 / 9
WARMUP_FRACTION = 0.1  # the plain recipe's warmup


# --------------------------------------------------------------------------- published settings
@dataclass(frozen=True)
class Setting:
    """One of airbench94's published settings beside ours: ``ours`` is a ``train:`` key of
    params.yaml or a constant of this module, ``value`` what params.yaml commits (or the
    constant is); tests/unit/test_ml_fast.py checks that they are."""

    theirs: str  # airbench94.py's name
    published: float | str  # its value there, in its units
    ours: str
    value: float | str | bool
    note: str = ""


# airbench94's loss is summed over the batch and its lr and decay are given per 1024 examples
# with momentum folded in (x 1024 / (1 + 1/(1 - 0.85)) = 1/7.67); ours is a mean over the batch.
AIRBENCH94 = (
    Setting("opt.batch_size", 1024, "batch_size", 1024),
    Setting("opt.lr", 11.5, "lr", 1.5, "11.5 / 7.67 on a mean loss"),
    Setting("opt.momentum", 0.85, "momentum", 0.85, "nesterov"),
    Setting("opt.weight_decay", 0.0153, "weight_decay", 0.0013,
            "0.0153 / 7.67 = 0.002 per step = lr x 0.0013; theirs decays BN biases too, ours weights only"),
    Setting("opt.bias_scaler", 64.0, "bias_lr_scale", 64, "theirs: BN biases; ours: every 1-D tensor"),
    Setting("opt.label_smoothing", 0.2, "label_smoothing", 0.2),
    Setting("opt.train_epochs", 9.9, "epochs", 10, "whole epochs here"),
    Setting("opt.whiten_bias_epochs", 3, "-", "all", "our whitening bias learns all along"),
    Setting("triangle(start, peak, end)", "0.2, 0.23, 0.07", "schedule", "triangle", "ours ends at 0"),
    Setting("lookahead every 5, decay 0.95**5 * progress**3", "on", "lookahead", True),
    Setting("aug.translate", 2, "translate", 2, "reflect padding"),
    Setting("aug.flip, altflip", "on", "alternating_flip", True),
    Setting("net.widths", "64, 256, 256", "width", 0.5,
            "x WIDTHS; 0.5 keeps the README's first run to minutes on 2 CPU cores; 1 on a GPU"),
    Setting("net.batchnorm_momentum", 0.6, "BN_MOMENTUM", 0.4, "torch's convention: 1 - 0.6"),
    Setting("net.scaling_factor", 1 / 9, "LOGIT_SCALE", 1 / 9),
    Setting("whitening images", 5000, "WHITEN_IMAGES", 5000),
    Setting("net.tta_level", 2, "-", 1, "mirror only; theirs adds translated views"),
)  # fmt: skip


# --------------------------------------------------------------------------- the network
def _batch_norm(channels: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, momentum=BN_MOMENTUM, eps=1e-12)
    bn.weight.requires_grad_(False)  # scale fixed at 1; only the shift learns
    return bn


class ConvGroup(nn.Sequential):
    """conv -> max-pool 2 -> BN -> GELU -> conv -> BN -> GELU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        super().__init__(
            conv1, nn.MaxPool2d(2), _batch_norm(out_channels), nn.GELU(),
            conv2, _batch_norm(out_channels), nn.GELU(),
        )  # fmt: skip
        for conv in (conv1, conv2):
            # The first in_channels filters start as the identity (see the module docstring).
            with torch.no_grad():
                nn.init.dirac_(conv.weight[: conv.in_channels])


class FastNet(nn.Module):
    """The speed-run network (about 2M parameters). In eval mode it predicts with flip TTA."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = WIDTHS) -> None:
        super().__init__()
        self.whiten = nn.Conv2d(3, WHITEN_CHANNELS, kernel_size=2, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)  # set from the data by whiten_init, then frozen
        self.layers = nn.Sequential(
            ConvGroup(WHITEN_CHANNELS, widths[0]),
            ConvGroup(widths[0], widths[1]),
            ConvGroup(widths[1], widths[2]),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)

    def _logits(self, x: Tensor) -> Tensor:
        x = F.gelu(self.whiten(x))
        x = self.layers(x)
        x = torch.amax(x, dim=(2, 3))
        return self.head(x) * LOGIT_SCALE

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return self._logits(x)
        # Test-time augmentation: the mean of the logits on both mirror images.
        return 0.5 * (self._logits(x) + self._logits(x.flip(3)))


@torch.no_grad()
def whiten_init(model: FastNet, images: Tensor, eps: float = WHITEN_EPS) -> None:
    """Set the frozen first layer to whiten 2x2 patches of ``images`` (normalised float N x 3 x H x W).

    Computed in float64 on the CPU from the first ``WHITEN_IMAGES`` images, so the
    result does not depend on the device or on reduction order.
    """
    # Accumulated over chunks: all 2x2 patches of 5,000 images at once would be ~0.5 GB
    # of float64, a host-memory peak above the training loop's own (issue 6: < 2 GB).
    total = torch.zeros(12, dtype=torch.float64)
    products = torch.zeros(12, 12, dtype=torch.float64)
    count = 0
    for chunk in images[:WHITEN_IMAGES].detach().split(WHITEN_CHUNK):
        chunk = chunk.to("cpu", torch.float64)
        # each row one patch, its 12 values ordered (c, kh, kw) as the conv weights are
        patches = F.unfold(chunk, kernel_size=2).transpose(1, 2).reshape(-1, 12)
        total += patches.sum(0)
        products += patches.T @ patches
        count += len(patches)
    mean = total / count
    covariance = products / count - torch.outer(mean, mean)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    order = eigenvalues.argsort(descending=True)  # strongest directions first
    filters = eigenvectors.T[order] / (eigenvalues[order, None] + eps).sqrt()
    filters = filters.reshape(12, 3, 2, 2)
    weight = torch.cat([filters, -filters]).to(model.whiten.weight.dtype)
    model.whiten.weight.copy_(weight)
    model.whiten.bias.zero_()


# --------------------------------------------------------------------------- optimiser groups
def make_optimizer(
    model: nn.Module, *, lr: float, momentum: float, weight_decay: float, bias_lr_scale: float = 1.0
) -> torch.optim.SGD:
    """SGD, nesterov when there is momentum; weight decay only on >=2-D tensors (weights).

    Decay would only pull biases and BatchNorm shifts toward zero for no regularising
    gain (as nanoGPT leaves them out). They learn ``bias_lr_scale`` times faster: with
    BatchNorm after a conv, the weights' effective step is scaled by their norm, the
    biases' is not, so at one learning rate the biases learn far too slowly. Each group
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


# --------------------------------------------------------------------------- schedules
Schedule = Callable[[int, int, float], float]  # (0-based step, total steps, peak lr) -> lr


def lr_at(step: int, total_steps: int, peak: float, warmup_fraction: float = WARMUP_FRACTION) -> float:
    """The plain recipe's (``cosine``): linear warmup to ``peak``, then cosine to 0.

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


SCHEDULES: dict[str, Schedule] = {"cosine": lr_at, "triangle": triangle}  # train.schedule


# --------------------------------------------------------------------------- Lookahead
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


# --------------------------------------------------------------------------- the loop's recipe steps
@dataclass
class Plan:
    """How to train: the optimiser and the recipe's steps, which ``fit`` calls in this order
    each step: ``set_lr``, forward, ``loss``, backward and the optimiser step, ``after_step``;
    and ``finish`` once at the end. A checkpoint holds the optimiser and the Lookahead average."""

    optimizer: torch.optim.Optimizer
    schedule: Schedule = lr_at
    label_smoothing: float = 0.0
    lookahead: Lookahead | None = None

    def set_lr(self, step: int, total_steps: int) -> float:
        """Each group's learning rate for 0-based ``step`` (from its ``base_lr``); the first group's."""
        for group in self.optimizer.param_groups:
            group["lr"] = self.schedule(step, total_steps, group["base_lr"])
        return self.optimizer.param_groups[0]["lr"]

    def loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        """Cross-entropy in float32 (also under bf16 autocast), with the recipe's label smoothing."""
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def after_step(self, model: nn.Module, step: int, total_steps: int) -> None:
        """After optimiser step ``step`` (1-based): Lookahead's pull, when the recipe has it."""
        if self.lookahead is not None:
            self.lookahead.step(model, step, total_steps)

    def finish(self, model: nn.Module) -> None:
        """At the end of training: the final weights are Lookahead's average."""
        if self.lookahead is not None:
            self.lookahead.finish(model)


# --------------------------------------------------------------------------- one run
class Run(NamedTuple):
    """What ``fit`` trains: the model (on its device), the training batches and the plan."""

    model: nn.Module
    loader: BatchLoader
    plan: Plan


def build(
    p: TrainParams,
    images: Tensor,
    labels: Tensor,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int = 10,
    device: torch.device | None = None,
    ranks: Ranks | None = None,
) -> Run:
    """The run ``p`` describes, for any ``train.model``, on training ``images`` (uint8 N x 3 x H
    x W, anywhere: moved to the device once, batches are cut there) and ``labels``.

    Seeds torch's global RNG with ``p.seed`` first, so the initial weights are a function
    of the params (the loader draws from a stream of its own, seeded with ``p.seed`` too).
    ``ranks`` (several tasks): this rank's share of each global batch, and SyncBatchNorm
    on GPUs so N GPUs normalise over the global batch as one does (torch has none for
    CPUs: there each rank normalises its own share; see the README). ``device`` defaults
    to ``ranks.device``, else the CPU.
    """
    ranks = ranks or Ranks(device=device or torch.device("cpu"))
    device = ranks.device
    torch.manual_seed(p.seed)
    loader = BatchLoader(
        images.to(device),
        labels.to(device),
        # a tiny subset still makes one full batch (split evenly over the tasks)
        batch_size=min(p.batch_size, len(labels) // ranks.world_size * ranks.world_size),
        mean=mean, std=std, shuffle=True, augment=p.augment, drop_last=True, seed=p.seed,
        pad=p.translate, alternating_flip=p.alternating_flip, rank=ranks.rank, world_size=ranks.world_size,
    )  # fmt: skip
    model = build_model(p.model, num_classes=num_classes, width=p.width)
    if isinstance(model, FastNet):  # whitened on the CPU in float64: the same on any device
        whiten_init(model, normalize(images[:WHITEN_IMAGES].cpu(), mean, std))
    if ranks.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device, memory_format=memory_format(device))
    optimizer = make_optimizer(
        model, lr=p.lr, momentum=p.momentum, weight_decay=p.weight_decay, bias_lr_scale=p.bias_lr_scale
    )
    lookahead = Lookahead(model) if p.lookahead else None
    return Run(model, loader, Plan(optimizer, SCHEDULES[p.schedule], p.label_smoothing, lookahead))
