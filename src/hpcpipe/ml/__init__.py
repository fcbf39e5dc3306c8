"""The machine-learning half of the example pipeline, kept apart from the launch machinery.

- ``data``: raw sources (an image folder, or torchvision's CIFAR-10 download), the
  stratified seeded subset, and the prepared tensors that ``prepare`` writes.
- ``loader``: a batch loader that keeps the whole data set as one tensor on the
  device and augments on the device (no PIL, no worker processes).
- ``models``: the PyTorch tutorial CNN and a CIFAR-sized ResNet-18.
- ``recipe``: the training recipe top to bottom (the ``fast`` network, optimiser groups,
  schedules, Lookahead, the loop's recipe steps) and ``build``, which makes a run of the params.
- ``training``: the loop, generic over recipes (devices, several tasks, resume), and ``predict``.
- ``checkpoint``: the training state on disk (saved whole, resumed, or set aside).
- ``distributed``: one stage on several tasks (torchrun's environment, DDP's collectives).
- ``stopping``: Slurm's warning signal as a flag the training loop reads.

These modules import torch at the top; they are imported only inside a job.
"""
