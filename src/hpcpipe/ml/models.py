"""The models ``train.model`` can name.

- ``tutorial``: the small CNN of PyTorch's "Training a classifier" tutorial
  (62k parameters). ~7,000 images/s on 2 CPU cores; with this repo's recipe it
  reaches ~64% test accuracy on the 10k-image sample in 40 epochs (~1 minute).
- ``resnet18``: torchvision's ResNet-18 (11M parameters) with the usual CIFAR
  stem: a 3x3 stride-1 first conv and no max-pool, because the ImageNet stem
  (7x7 stride 2 + pool) would shrink a 32x32 image to 8x8 before the first block.
  A GPU model: this shape is the one that reaches ~93-95% on full CIFAR-10 in
  published recipes (not measured in this repo yet).
- ``fast``: the CIFAR-10 speed-run network of ``hpcpipe.ml.recipe`` (airbench94's
  shape at ``width`` 1: 2M parameters), trained by the recipe described there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MODEL_NAMES = ("tutorial", "resnet18", "fast")


class TutorialNet(nn.Module):
    """conv(3,6,5) pool conv(6,16,5) pool fc 400-120-84-10, exactly as in the tutorial."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """torchvision's resnet18 with a 32x32-friendly stem (see the module docstring)."""
    from torchvision.models import resnet18

    model = resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def build_model(name: str, num_classes: int = 10, width: float = 1.0) -> nn.Module:
    """A freshly initialised model (on the CPU, from the global torch RNG).

    ``width`` scales the channels of ``fast`` (the others have one shape). ``fast``'s
    first layer still needs ``recipe.whiten_init`` with the training images (``recipe.build``
    does both).
    """
    if name == "fast":
        from hpcpipe.ml.recipe import WIDTHS, FastNet  # the recipe's own network, defined there

        widths = tuple(max(1, round(w * width)) for w in WIDTHS)
        return FastNet(num_classes, widths=widths)  # type: ignore[arg-type]
    if name == "tutorial":
        return TutorialNet(num_classes)
    if name == "resnet18":
        return resnet18_cifar(num_classes)
    raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")
