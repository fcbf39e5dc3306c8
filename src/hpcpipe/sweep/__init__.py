"""Hyperparameter sweeps: one Slurm job array whose points come back as DVC experiments.

- ``grid``: the ``-S`` grammar -> validated points (pure).
- ``pipeline``: which DVC stages a sweep's keys change, which it can reuse (pure plan
  over what DVC's own index says).
- ``freshness``: DVC's "the reused stages are up to date", remembered per state of their files.
- ``record``: the sweep's JSON record under ``.hpcpipe/sweeps/NAME/``.
- ``snapshot``: HEAD + uncommitted changes as a git tree; which of its files a point needs.
- ``workspace``: one folder per point, those files linked, sharing the project's DVC cache.
- ``params_text``: each point's params.yaml from one ruamel dump.
- ``points``: the record's points and their workspaces.
- ``start``: ``hpcpipe sweep`` (check, make the workspaces, submit once) and ``resume``.
- ``submit``: one array submission (Slurm; several, one after another, over MaxArraySize),
  or ``local_pool`` pacing local subprocesses.
- ``drive``: a submitted sweep: wait, and on Ctrl-C ``cancel``.
- ``watch``: each point's state through the executor interface; finished ones imported.
- ``task``: what runs in each array task (``dvc repro`` inline in its workspace).
- ``experiments``: finished points -> DVC experiments (git plumbing), on the login node.
- ``clean``: ``hpcpipe sweep clean``: a finished sweep's folders go, its experiments stay.
- ``report``: the points table, the summary, ``sweep status``.
"""
