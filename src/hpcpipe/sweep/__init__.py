"""Hyperparameter sweeps: one Slurm job array whose points come back as DVC experiments.

- ``grid``: the ``-S`` grammar -> validated points (pure).
- ``pipeline``: which DVC stages a sweep's keys change, which it can reuse (pure plan
  over what DVC's own index says).
- ``freshness``: DVC's "the reused stages are up to date", remembered per state of their files.
- ``record``: the sweep's JSON record under ``.hpcpipe/sweeps/NAME/``.
- ``workspace``: one git worktree per point, sharing the project's DVC cache.
- ``points``: the record's points and their worktrees, made a few at a time.
- ``start``: ``hpcpipe sweep`` (check, make the workspaces, submit once) and ``resume``.
- ``submit``: one array submission (Slurm), or ``local_pool`` pacing local subprocesses.
- ``drive``: a submitted sweep: wait, and on Ctrl-C ``cancel``.
- ``watch``: each point's state through the executor interface; finished ones imported.
- ``task``: what runs in each array task (``dvc repro`` inline in its workspace).
- ``experiments``: finished points -> ``dvc exp save``, one at a time, on the login node.
- ``report``: the points table, the summary, ``sweep status``.
"""
