"""params.yaml and cluster profiles: valid files load, bad ones fail with one precise line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hpcpipe.config import load_params, load_profile, resolve_profile_name
from hpcpipe.validation import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write_params(tmp_path: Path, **changes: dict) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in changes.items():
        if values is None:
            params.pop(section)
        else:
            params[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_the_projects_params_load_into_frozen_sections():
    params = load_params(REPO / "params.yaml")
    assert params.train.model in ("tutorial", "resnet18", "fast")
    assert isinstance(params.train.lr, float)
    with pytest.raises(AttributeError):
        params.train.lr = 1.0  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"train": {"lr": "fast"}}, "params.yaml: train.lr: expected a number > 0, got 'fast'"),
        ({"train": {"lr": -0.1}}, "params.yaml: train.lr: expected a number > 0, got -0.1"),
        ({"train": {"epochs": 2.5}}, "params.yaml: train.epochs: expected an integer > 0, got 2.5"),
        ({"train": {"epochs": True}}, "params.yaml: train.epochs: expected an integer > 0, got True"),
        ({"train": {"model": "vgg"}}, "params.yaml: train.model: expected one of 'tutorial', 'resnet18'"),
        (
            {"prepare": {"train_size": -1}},
            "params.yaml: prepare.train_size: expected an integer >= 0, got -1",
        ),
        ({"data": {"source": "s3"}}, "params.yaml: data.source: expected one of 'cifar10', 'imagefolder'"),
        ({"train": {"momentum": 1.0}}, "params.yaml: train.momentum: expected a number in [0, 1), got 1.0"),
        ({"train": {"lrr": 0.1}}, "params.yaml: train.lrr: unknown key; known keys are "),
        ({"train": None}, "params.yaml: train: missing"),
    ],
)
def test_a_bad_value_names_file_key_value_and_expectation(tmp_path, changes, message):
    path = write_params(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_an_int_is_accepted_where_a_float_is_expected(tmp_path):
    assert load_params(write_params(tmp_path, train={"lr": 1})).train.lr == 1.0


def test_broken_yaml_and_missing_file_are_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML \(line"):
        load_params(path)
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_profile_stage_entries_merge_over_defaults(tmp_path):
    (tmp_path / "configs" / "cluster").mkdir(parents=True)
    (tmp_path / "configs" / "cluster" / "site.yaml").write_text(
        yaml.safe_dump(
            {
                "executor": "slurm",
                "defaults": {"partition": "cpu", "time_min": 30, "account": "m1234"},
                "stages": {"train": {"partition": "gpu", "gpus": 4, "setup": "module load pytorch"}},
            }
        )
    )
    profile = load_profile("site", tmp_path)
    assert profile.name == "site"
    train = profile.resources("train")
    assert (train.partition, train.gpus, train.time_min, train.account) == ("gpu", 4, 30, "m1234")
    assert train.setup == ("module load pytorch",)
    assert profile.resources("prepare").partition == "cpu"


def test_profile_errors_name_the_file_and_key(tmp_path):
    folder = tmp_path / "configs" / "cluster"
    folder.mkdir(parents=True)
    (folder / "bad.yaml").write_text(yaml.safe_dump({"executor": "slurm", "stages": {"train": {"gpus": -1}}}))
    with pytest.raises(ConfigError, match=r"bad.yaml: stages.train.gpus: expected an integer >= 0, got -1"):
        load_profile("bad", tmp_path)
    with pytest.raises(ConfigError, match=r"cluster profile 'mars' not found .* known: bad"):
        load_profile("mars", tmp_path)


def test_every_shipped_profile_loads():
    names = [p.stem for p in (REPO / "configs" / "cluster").glob("*.yaml")]
    assert "local" in names
    for name in names:
        assert load_profile(name, REPO).name == name


@pytest.mark.parametrize(
    ("cli", "env", "expected"),
    [
        ("cori", {"HPCPIPE_CLUSTER": "perlmutter", "SLURM_JOB_ID": "1"}, "cori"),
        (None, {"HPCPIPE_CLUSTER": "perlmutter", "SLURM_JOB_ID": "1"}, "perlmutter"),
        (None, {"SLURM_JOB_ID": "1", "PATH": "/nonexistent"}, "inline"),
        (None, {"PATH": "/nonexistent"}, "local"),
    ],
)
def test_profile_choice_order(cli, env, expected):
    assert resolve_profile_name(cli, env) == expected


def test_auto_picks_slurm_where_sbatch_is_on_path_and_configured(tmp_path):
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    assert resolve_profile_name(None, {"PATH": str(tmp_path), "SLURM_CONF": "/x/slurm.conf"}) == "slurm"


def test_installed_slurm_clients_without_a_configuration_are_not_a_cluster(tmp_path, monkeypatch):
    sbatch = tmp_path / "sbatch"
    sbatch.write_text("#!/bin/sh\n")
    sbatch.chmod(0o755)
    monkeypatch.setattr("hpcpipe.config.SLURM_CONF_LOCATIONS", (str(tmp_path / "absent.conf"),))
    assert resolve_profile_name(None, {"PATH": str(tmp_path)}) == "local"
