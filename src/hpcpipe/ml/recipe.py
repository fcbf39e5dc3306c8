"""``train.model: fast``: a CIFAR-10 speed-run network and the pieces of its recipe.

Built from the public write-ups of the CIFAR-10 speed-run line (David Page, "How
to train your ResNet", 2018; tysam-code's hlb-CIFAR10; Keller Jordan, "94% on
CIFAR-10 in 3.29 seconds on a single GPU", 2024, whose airbench94 recipe this
follows most closely). Written here from the descriptions, not from their code.

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
  hand. airbench94's recipe, which this follows, reaches 94% mean test accuracy in
  ~10 epochs, a few seconds on an A100; ``python benchmarks/train_speed.py d``
  measures ours against it on the same GPU.

The techniques, and why each is here:

- **Whitening first layer.** A frozen 2x2 conv whose 24 filters are the
  eigenvectors of the covariance of 2x2 patches of the training images, scaled by
  1/sqrt(eigenvalue), with their negatives (``whiten_init``). The first layer then
  starts out decorrelating pixels, which a randomly initialised one spends epochs
  learning to do.
- **Identity (Dirac) initialisation** of the first in-channels of each conv, so a
  freshly built deep net passes its input through and trains from the first step.
- **BatchNorm with frozen scale, fast-learning shift.** The BN weights stay 1
  (a following BN makes them redundant); the biases learn ``bias_lr_scale`` (64x)
  faster than the weights, because with BN the weights' effective step is set
  by their norm, while a bias's is not.
- **Label smoothing** (0.2): a cheap regulariser that keeps logits from growing to
  fit noisy labels.
- **Lookahead** (``training.Lookahead``): every 5 steps the weights are pulled to an
  exponential average of themselves, with a decay that rises to 0.95^5 as training
  ends; the final weights are the average. A free ensemble over the last epochs.
- **Alternating flips** (``loader.BatchLoader``): each image is flipped at random in
  the first epoch and then the opposite way each epoch after, so consecutive
  epochs see both views of every image instead of a coin-toss.
- **Translate by 2** (reflect padding) and a **triangular learning rate** (0.2x up to
  1x at 23% of the steps, then linearly to 0).
- **Test-time flip augmentation**: in eval mode the net averages its logits on the
  image and its mirror image, so ``evaluate`` gets it without knowing the model.
- Max-pool inside each block, global max-pool, logits scaled by 1/9, GELU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

WIDTHS = (64, 256, 256)
WHITEN_CHANNELS = 24  # 12 eigen-filters of 2x2x3 patches and their negatives
WHITEN_IMAGES = 5000  # enough for a stable 12x12 covariance, cheap on a CPU
WHITEN_EPS = 5e-4
WHITEN_CHUNK = 500  # images per step of the covariance sum
BN_MOMENTUM = 0.4  # PyTorch's convention: 0.4 of each new batch's statistics
LOGIT_SCALE = 1 / 9


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
