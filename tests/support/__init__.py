"""What the tests share, one home each: test modules import from here, never from each other.

- ``REPO``: the root of this checkout (its dvc.yaml, params.yaml, src/, tests/data).
- ``commands``: git, dvc and the `hpcpipe` command run as a user runs them; ``wait_for``.
- ``project``: the example project shrunk to seconds (the ``project`` fixture and its data).
- ``launch_project``: stages declared in a copy's dvc.yaml for launcher tests, and the
  `hpcpipe` command started for one (``start``).
- ``fake_stages``: those stages' functions and commands (copied into the project).
- ``slurm``: the real test cluster (``slurm_cluster``) and what sacct/squeue say of a job.
- ``tutorial_project``: the second example, a plain DVC project, and what its runs print.
- ``fake_wandb``: the stand-in `wandb` CLI for the one process no W&B server can answer.
- ``sample``: the committed CIFAR-10 sample, unpacked in part.
"""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
