"""Fixtures every test may use, each defined in tests/support (one home each).

- ``project``, ``project_sample``, ``committed_sample``, ``fake_stage_project``: the example
  project shrunk to seconds (tests/support/project.py);
- ``slurm_cluster``: the real one-node test cluster (tests/support/slurm.py), and
  ``slurm_project``: the fake-stage project on it (tests/support/launch_project.py);
- ``fake_wandb``: the stand-in `wandb` CLI (tests/support/fake_wandb.py);
- ``tutorial_project``, ``tutorial_template``, ``plain_results``: the second example, a plain DVC project
  (tests/support/tutorial_project.py).
"""

from tests.support.fake_wandb import fake_wandb  # noqa: F401  (a fixture)
from tests.support.launch_project import slurm_project  # noqa: F401  (a fixture)
from tests.support.project import (  # noqa: F401  (fixtures)
    committed_sample,
    fake_stage_project,
    project,
    project_sample,
)
from tests.support.slurm import slurm_cluster  # noqa: F401  (a fixture, shared by the Slurm tests)
from tests.support.tutorial_project import (  # noqa: F401  (the second example)
    plain_results,
    tutorial_project,
    tutorial_template,
)
