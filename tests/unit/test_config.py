"""params.yaml and cluster profiles: valid files load, bad ones fail with one precise line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from hpcpipe.config import (
    RESERVED_STAGES,
    SHIPPED_DIR,
    known_profiles,
    load_params,
    load_profile,
    resolve_profile_name,
)
from hpcpipe.validation import ConfigError
from tests.support import REPO
from tests.support.project import write_params


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
        (
            {"train": {"lrr": 0.1}},
            "params.yaml: train.lrr: unknown key; did you mean train.lr? known keys are ",
        ),
        (
            {"train": {"xyzzy": 0.1}},
            "params.yaml: train.xyzzy: unknown key; known keys are alternating_flip, ",
        ),
        ({"train": None}, "params.yaml: train: missing"),
    ],
)
def test_a_bad_value_names_file_key_value_and_expectation(tmp_path, changes, message):
    path = write_params(tmp_path, **changes)
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_a_misspelt_section_is_named_as_written_with_the_close_one(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((REPO / "params.yaml").read_text().replace("\ntrain:", "\ntarin:"))
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value) == (
        "params.yaml: tarin: unknown key; did you mean train? "
        "known keys are data, evaluate, prepare, train, wandb"
    )


@pytest.mark.parametrize("written", [".inf", "-.inf", ".nan", ".NaN"])
def test_non_finite_numbers_are_refused(tmp_path, written):
    """YAML reads `.inf` and `.nan` as floats: `.inf` passes `lr > 0`, `.nan` fails every
    comparison, so each needs saying in its own words."""
    path = write_params(tmp_path, train={"weight_decay": "SENTINEL"})
    path.write_text(path.read_text().replace("SENTINEL", written))  # YAML's own spelling, unquoted
    with pytest.raises(ConfigError) as err:
        load_params(path)
    assert str(err.value).startswith("params.yaml: train.weight_decay: ")
    assert str(err.value).endswith(" is not a finite number; expected a number >= 0")


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


SHIPPED = ["cori", "inline", "local", "perlmutter", "slurm", "testcluster"]


def write_profile(root: Path, name: str, content: dict) -> Path:
    path = root / "configs" / "cluster" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(content))
    return path


def test_profile_errors_name_the_file_and_key(tmp_path):
    write_profile(tmp_path, "bad", {"executor": "slurm", "stages": {"train": {"gpus": -1}}})
    with pytest.raises(ConfigError, match=r"bad.yaml: stages.train.gpus: expected an integer >= 0, got -1"):
        load_profile("bad", tmp_path)


def test_an_unknown_profile_lists_the_shipped_names_and_the_projects(tmp_path):
    write_profile(tmp_path, "mysite", {"executor": "slurm"})
    known = ", ".join(sorted([*SHIPPED, "mysite"]))
    with pytest.raises(ConfigError, match=rf"cluster profile 'mars' not found .*; known: {known}$"):
        load_profile("mars", tmp_path)
    assert known_profiles(tmp_path) == sorted([*SHIPPED, "mysite"])


def test_shipped_profiles_load_from_a_directory_without_configs(tmp_path):
    """Any DVC project gets them, whatever it has (here: nothing at all)."""
    assert known_profiles(tmp_path) == SHIPPED
    for name in SHIPPED:
        profile = load_profile(name, tmp_path)
        assert profile.name == name
        assert profile.sources == (str(SHIPPED_DIR / f"{name}.yaml"),)
    assert load_profile("perlmutter", tmp_path).defaults.setup[0] == "module load pytorch"


def test_shipped_profiles_name_no_project_stage():
    for name in SHIPPED:
        raw = yaml.safe_load((SHIPPED_DIR / f"{name}.yaml").read_text())
        assert set(raw.get("stages") or {}) <= set(RESERVED_STAGES), name


def test_every_profile_of_the_example_loads():
    names = known_profiles(REPO)
    assert set(SHIPPED) <= set(names)
    for name in names:
        assert load_profile(name, REPO).name == name


def test_a_project_file_merges_over_the_shipped_one(tmp_path):
    project = write_profile(
        tmp_path,
        "slurm",
        {
            "poll_s": 9,
            "defaults": {"account": "m1", "mem_gb": 4},
            "stages": {"train": {"gpus": 2}, "repro": {"time_min": 60}},
        },
    )
    profile = load_profile("slurm", tmp_path)
    assert (profile.executor, profile.poll_s) == ("slurm", 9)  # the shipped key, the project's key
    assert (profile.defaults.account, profile.defaults.mem_gb, profile.defaults.cpus) == ("m1", 4, 2)
    train = profile.resources("train")
    assert (train.gpus, train.account, train.mem_gb, train.time_min) == (2, "m1", 4, 60)
    repro = profile.resources("repro")  # the shipped entry, key by key under the project's
    assert (repro.time_min, repro.cpus, repro.mem_gb, repro.account) == (60, 1, 2, "m1")
    assert profile.sources == (str(SHIPPED_DIR / "slurm.yaml"), str(project))
    assert profile.stage_sources == {"repro": str(project), "train": str(project)}


def test_the_example_adds_only_its_stages_to_the_shipped_profiles(tmp_path):
    for name in ("local", "slurm", "perlmutter", "cori", "testcluster"):
        shipped, example = load_profile(name, tmp_path), load_profile(name, REPO)
        assert shipped.resources("train").gpus == 0 and example.resources("train").gpus == 1, name
        assert example.resources("prepare") == shipped.resources("prepare") == shipped.defaults, name
        assert dataclasses.replace(example, stages={}, sources=(), stage_sources={}) == dataclasses.replace(
            shipped, stages={}, sources=(), stage_sources={}
        ), name


def test_extends_builds_on_another_profile_with_the_projects_own_entries(tmp_path):
    write_profile(tmp_path, "slurm", {"stages": {"train": {"gpus": 4}}})
    write_profile(tmp_path, "mysite", {"extends": "slurm", "defaults": {"partition": "main"}})
    profile = load_profile("mysite", tmp_path)
    assert (profile.name, profile.executor, profile.poll_s) == ("mysite", "slurm", 12.0)
    assert profile.resources("train").gpus == 4
    assert profile.resources("train").partition == "main"
    assert profile.resources("repro").time_min == 720  # from the shipped slurm.yaml
    assert len(profile.sources) == 3


def test_a_profile_takes_its_own_name_not_its_bases(tmp_path):
    write_profile(tmp_path, "base", {"name": "Base site", "executor": "local"})
    write_profile(tmp_path, "mysite", {"extends": "base"})
    assert load_profile("mysite", tmp_path).name == "mysite"
    assert load_profile("base", tmp_path).name == "Base site"


def test_extends_replaces_the_shipped_profile_of_the_same_name(tmp_path):
    write_profile(tmp_path, "perlmutter", {"extends": "local"})
    profile = load_profile("perlmutter", tmp_path)
    assert profile.executor == "local" and not profile.require_account


def test_an_explicit_path_is_read_as_is_and_honours_extends(tmp_path):
    alone = tmp_path / "elsewhere" / "slurm.yaml"
    alone.parent.mkdir()
    alone.write_text(yaml.safe_dump({"stages": {"train": {"gpus": 1}}}))
    with pytest.raises(ConfigError, match=r"elsewhere/slurm.yaml: executor: missing"):
        load_profile(str(alone), tmp_path)  # not merged over the shipped slurm.yaml
    alone.write_text(yaml.safe_dump({"extends": "perlmutter", "defaults": {"account": "m9"}}))
    profile = load_profile(str(alone), tmp_path)
    assert (profile.name, profile.executor, profile.require_account) == ("slurm", "slurm", True)
    assert profile.defaults.account == "m9" and profile.defaults.constraint == "cpu"


def test_extends_errors_name_the_file(tmp_path):
    typo = write_profile(tmp_path, "mysite", {"extends": "slrum"})
    with pytest.raises(ConfigError, match=rf"^{typo}: extends: cluster profile 'slrum' not found"):
        load_profile("mysite", tmp_path)
    write_profile(tmp_path, "a", {"extends": "b"})
    write_profile(tmp_path, "b", {"extends": "a"})
    with pytest.raises(ConfigError, match=r"b.yaml: extends: 'a' goes round in a loop"):
        load_profile("a", tmp_path)
    write_profile(tmp_path, "mine", {"extends": "mine", "executor": "local"})
    with pytest.raises(ConfigError, match=r"mine.yaml: extends: no shipped cluster profile 'mine'"):
        load_profile("mine", tmp_path)


def test_a_bad_value_names_the_file_that_holds_it(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "site.yaml").write_text(yaml.safe_dump({"executor": "slurm", "defaults": {"cpus": 0}}))
    monkeypatch.setattr("hpcpipe.cluster_profiles.SHIPPED_DIR", shipped)
    write_profile(tmp_path, "site", {"stages": {"train": {"gpus": 1}}})
    with pytest.raises(ConfigError, match=r"shipped/site.yaml: defaults.cpus: expected an integer > 0"):
        load_profile("site", tmp_path)
    write_profile(tmp_path, "new", {"stages": {"train": {"gpus": 1}}})
    with pytest.raises(ConfigError, match=r"cluster/new.yaml: executor: missing"):
        load_profile("new", tmp_path)
    write_profile(tmp_path, "new", {"executor": "local", "sources": ["x"]})
    with pytest.raises(ConfigError, match=r"new.yaml: sources: unknown key"):
        load_profile("new", tmp_path)


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
