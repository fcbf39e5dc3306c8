"""A batch loader over tensors that already live on the training device.

CIFAR-10 is 150 MB as uint8, so the whole training set sits on the GPU (or in
RAM) and a batch is one index operation: no DataLoader, no worker processes, no
PIL. Augmentation is the classic CIFAR pair, done on the whole batch with tensor
ops: a random 32x32 crop of the image padded by ``pad`` (4 by default; reflect
padding, as airbench does: it avoids the black borders zero padding paints) and a
horizontal flip.

Flips are either a coin toss per image and epoch, or *alternating* (the speed-run
trick): a coin toss per image in epoch 0, then the opposite of the previous epoch,
so every two consecutive epochs show each image both ways.

All randomness (shuffle order, crop offsets, flips) comes from one CPU
``torch.Generator`` seeded with (seed, epoch), so an epoch is reproducible on any
device and independent of the global RNG that initialises the model; a resumed
run needs nothing but the epoch number (and, stopped mid-epoch, the batch) to continue.

Several tasks (``rank``, ``world_size``): ``batch_size`` is the global batch. Every
rank draws the same epoch (order, crops, flips) from the same stream and takes its
own contiguous slice of each global batch, so the union of the ranks' step k is the
one-task run's batch k, and a step's gradient, averaged over the ranks, is the
one-task gradient (up to the order of the sums).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

PAD = 4


def normalize(images: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """uint8 N x 3 x H x W -> float32, per channel (x/255 - mean) / std."""
    scale = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    shift = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - shift) / scale


def random_crop(images: Tensor, shifts: Tensor, pad: int = PAD) -> Tensor:
    """Crop each image of the ``pad``-padded batch at its own offset.

    ``shifts`` is B x 2 integers in [0, 2 * pad] (row, column offset into the padded
    image). One gather for the whole batch instead of a Python loop per image.
    """
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect").permute(0, 2, 3, 1)  # B x H' x W' x C
    rows = shifts[:, 0, None] + torch.arange(h, device=images.device)  # B x H
    cols = shifts[:, 1, None] + torch.arange(w, device=images.device)  # B x W
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # back to B x C x H x W


def random_flip(images: Tensor, flip: Tensor) -> Tensor:
    """Mirror left-right the images where the boolean ``flip`` (B) is set."""
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class BatchLoader:
    """Normalised (and optionally augmented) batches from device-resident tensors.

    ``images`` uint8 N x 3 x H x W and ``labels`` int64 N stay where they are; each
    batch is indexed, converted to float and normalised on their device.
    ``drop_last`` drops a final partial batch (training: equal-sized steps, and no
    batch of one that BatchNorm cannot normalise).
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        shuffle: bool = False,
        augment: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        pad: int = PAD,
        alternating_flip: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(f"batch_size {batch_size} cannot be split evenly over {world_size} tasks")
        if not 0 <= pad < min(images.shape[-2:], default=1):
            raise ValueError(f"pad must be in [0, image size), got {pad}")  # reflect padding needs it
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.mean, self.std = list(mean), list(std)
        self.shuffle, self.augment, self.drop_last = shuffle, augment, drop_last
        self.seed = seed
        self.pad, self.alternating_flip = pad, alternating_flip
        self.rank, self.world_size = rank, world_size
        # normalize() as a multiply-add with constants made once, on the data's device.
        self._shift = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1) * 255
        self._scale = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1) * 255

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def num_images(self) -> int:
        """Images seen per epoch by all ranks (fewer than the data set when ``drop_last`` drops some)."""
        return min(len(self) * self.batch_size, len(self.labels))

    def epoch(self, epoch: int = 0, start: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield (float images, labels) for one pass from batch ``start`` on (this rank's share
        of each); the same ``epoch`` gives the same batches."""
        device = self.images.device
        n = len(self.labels)
        # One stream per (seed, epoch): an epoch can be replayed on its own (e.g. after a requeue).
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        # The epoch's order, crop offsets and flips are drawn at once on the CPU and moved to
        # the device once, rather than as three small host-to-device copies per batch.
        order = torch.randperm(n, generator=generator) if self.shuffle else torch.arange(n)
        order = order.to(device)
        if self.augment:
            shifts = torch.randint(0, 2 * self.pad + 1, (n, 2), generator=generator).to(device)
            flips = self._flips(epoch, generator).to(device)[order]  # per image -> per batch position
        share = self.batch_size // self.world_size
        for first in range(start * self.batch_size, len(self) * self.batch_size, self.batch_size):
            batch = slice(first, first + self.batch_size)
            if self.world_size > 1:
                begin = first + self.rank * share
                batch = slice(begin, min(begin + share, n))  # the last batch of an epoch may be short
            index = order[batch]
            x = (self.images[index].float() - self._shift) / self._scale
            if self.augment:
                if self.pad:
                    x = random_crop(x, shifts[batch], self.pad)
                x = random_flip(x, flips[batch])
            yield x, self.labels[index]

    def _flips(self, epoch: int, generator: torch.Generator) -> Tensor:
        """Which images (by index) are mirrored in ``epoch``."""
        n = len(self.labels)
        if not self.alternating_flip:
            return torch.rand(n, generator=generator) < 0.5
        # epoch 0's coin tosses come from a stream of their own, so any epoch can be rebuilt alone
        first = torch.rand(n, generator=torch.Generator().manual_seed(self.seed % 2**63)) < 0.5
        return first ^ bool(epoch % 2)
