"""Variables named like secrets never reach a job unless the profile lists them.

The end-to-end check (a real Slurm job, its stored environment, the job folders and
the offline W&B run) is tests/integration/test_job_secrets.py; here the rule itself,
the profile key, and that the one submit path applies it.
"""

from __future__ import annotations

import os

import pytest
import yaml

from hpcpipe.config import load_profile
from hpcpipe.launch.job_environment import looks_secret, withheld
from hpcpipe.launch.submission import prepared_executor
from hpcpipe.validation import ConfigError


@pytest.mark.parametrize(
    "name",
    ["WANDB_API_KEY", "OPENAI_API_KEY", "HF_TOKEN", "GITHUB_TOKEN", "AWS_SESSION_TOKEN", "DB_PASSWORD",
     "PGPASSWORD", "MYSQL_PASSWD", "AWS_SECRET_ACCESS_KEY", "client_secret", "wandb_api_key"],
)  # fmt: skip
def test_names_like_secrets_are_recognised(name):
    assert looks_secret(name)


@pytest.mark.parametrize(
    "name",
    ["PATH", "HOME", "WANDB_MODE", "WANDB_DIR", "SLURM_CONF", "TOKENIZERS_PARALLELISM", "SSH_AUTH_SOCK",
     "KEYTAB_DIR", "CUDA_VISIBLE_DEVICES", "PYTHONPATH"],
)  # fmt: skip
def test_ordinary_names_are_kept(name):
    assert not looks_secret(name)


def test_withheld_removes_secrets_but_those_allowed_and_names_no_value():
    env = {"PATH": "/bin", "WANDB_API_KEY": "k-123", "HF_TOKEN": "t-456", "DB_PASSWORD": "p-789"}
    names = withheld(env, allowed=("HF_TOKEN",))
    assert names == ["DB_PASSWORD", "WANDB_API_KEY"]
    assert env == {"PATH": "/bin", "HF_TOKEN": "t-456"}


def test_the_profile_lists_the_secrets_its_jobs_may_have(tmp_path):
    folder = tmp_path / "configs" / "cluster"
    folder.mkdir(parents=True)
    (folder / "online.yaml").write_text(
        yaml.safe_dump({"extends": "local", "export_secrets": ["WANDB_API_KEY"]})
    )
    assert load_profile("online", tmp_path).export_secrets == ("WANDB_API_KEY",)
    assert load_profile("local", tmp_path).export_secrets == ()
    (folder / "bad.yaml").write_text(
        yaml.safe_dump({"extends": "local", "export_secrets": ["WANDB API KEY"]})
    )
    with pytest.raises(ConfigError) as err:
        load_profile("bad", tmp_path)
    assert str(err.value) == (
        f"{folder / 'bad.yaml'}: export_secrets: expected a list of variable names, got ['WANDB API KEY']"
    )


def test_every_submission_withholds_secrets(tmp_path, monkeypatch):
    """``prepared_executor`` is the one submit path (stages, the --detach driver, sweeps):
    after it, the environment every executor hands its jobs has no secret left."""
    monkeypatch.setenv("WANDB_API_KEY", "k-123")
    monkeypatch.setenv("SITE_DB_PASSWORD", "p-789")
    monkeypatch.setenv("HF_TOKEN", "t-456")
    folder = tmp_path / "configs" / "cluster"
    folder.mkdir(parents=True)
    (folder / "keeps.yaml").write_text(yaml.safe_dump({"extends": "local", "export_secrets": ["HF_TOKEN"]}))
    prepared_executor(load_profile("keeps", tmp_path), "fake", tmp_path / "jobs")
    assert "WANDB_API_KEY" not in os.environ and "SITE_DB_PASSWORD" not in os.environ
    assert os.environ["HF_TOKEN"] == "t-456"
