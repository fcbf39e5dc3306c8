"""Hyperparameter sweeps: one Slurm job array whose points come back as DVC experiments.

- ``grid``: the ``-S`` grammar -> validated points (pure).
- ``pipeline``: which DVC stages a sweep's keys change, which it can reuse (pure plan
  over what DVC's own index says).
- ``freshness``: DVC's "the reused stages are up to date", remembered per state of their files.
- ``record``: the sweep's JSON record under ``.hpcpipe/sweeps/NAME/``.
- ``workspace``: one git worktree per point, sharing the project's DVC cache.
- ``task``: what runs in each array task (``dvc repro`` inline in its workspace).
- ``experiments``: finished points -> ``dvc exp save``, one at a time, on the login node.
- ``runner``: submit, watch, status, resume.
"""
