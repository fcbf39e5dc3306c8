"""No secret leaves the login node: a real Slurm job with W&B on, searched for planted secrets.

The stage is a real job on the one-node test cluster (slurm/testcluster) with its W&B
run written offline by the real wandb library. Variables named like secrets are set
in the launcher's environment; afterwards these are searched for their values:

- the environment Slurm stored with the job, which is what the job got (slurmctld's
  ``environment`` file under StateSaveLocation; Slurm 22.05's sacct has no
  ``--env-vars``, and the test cluster stores no job_env in its database);
- everything under the project: job folders (sbatch script, pickles, logs), the
  offline run, the outputs.

One variable the profile lists under ``export_secrets`` must arrive, and the profile's
``setup:`` line must be in the job's script but not in the W&B run: so each search
can also find what it looks for.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from hpcpipe.cli import main
from hpcpipe.launch.ledger import Ledger
from hpcpipe.tracking.records import read_run
from hpcpipe.tracking.run import runs_root, segments
from tests.support.launch_project import add_fake_stage
from tests.support.project import update_params

pytestmark = [pytest.mark.slurm]

PLANTED = {
    "WANDB_API_KEY": "wandb-key-8c41e0d9a7",
    "HF_TOKEN": "hf-token-52b7f1c3e8",
    "SITE_DB_PASSWORD": "db-password-0a9e6d2b4f",
}
ALLOWED = ("HPCPIPE_TEST_API_KEY", "allowed-key-7d3c9b1a05")
SETUP_MARK = "setup-line-e5a1f7c093"


def stored_environment(job_id: str) -> bytes:
    """The environment slurmctld keeps with a job (until MinJobAge after it ended)."""
    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    state = Path(re.search(r"^StateSaveLocation\s*=\s*(\S+)", config, re.M).group(1))
    return (state / f"hash.{int(job_id) % 10}" / f"job.{job_id}" / "environment").read_bytes()


def files_containing(folder: Path, text: str) -> list[str]:
    return sorted(
        str(p.relative_to(folder))
        for p in folder.rglob("*")
        if p.is_file() and text.encode() in p.read_bytes()
    )


def test_no_secret_reaches_the_job_its_folders_or_its_wandb_run(
    fake_stage_project, slurm_cluster, monkeypatch
):
    root = fake_stage_project
    for name, value in (*PLANTED.items(), ALLOWED):
        monkeypatch.setenv(name, value)
    profile = {
        "extends": "testcluster",
        "export_secrets": [ALLOWED[0]],
        "defaults": {"setup": [f"export HPCPIPE_SETUP_MARK={SETUP_MARK}"]},
    }
    (root / "configs" / "cluster" / "testcluster-secrets.yaml").write_text(yaml.safe_dump(profile))
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster-secrets")
    update_params(root, wandb={"enabled": True, "project": "t"})
    assert main(add_fake_stage(root, "write_outputs")) == 0

    job_id = Ledger(root / ".hpcpipe" / "jobs" / "ledger").get("fake").job_id
    environment = stored_environment(job_id)
    assert [name for name, value in PLANTED.items() if value.encode() in environment] == []
    assert ALLOWED[1].encode() in environment  # what the profile lists does arrive

    for value in PLANTED.values():
        assert files_containing(root, value) == []
    (folder,) = list(runs_root(root).iterdir())
    run = read_run(segments(folder)[-1])
    assert run.config["resources"]["partition"] == "cpu" and "setup" not in run.config["resources"]
    assert files_containing(runs_root(root), SETUP_MARK) == []
    assert files_containing(root / ".hpcpipe" / "jobs", SETUP_MARK) != []  # the sbatch script has it
