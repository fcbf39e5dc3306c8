"""Profile + stage -> submitit parameters (pure)."""

from __future__ import annotations

from hpcpipe.config import Profile, Resources
from hpcpipe.launch.profiles import executor_parameters


def test_slurm_keys_come_from_the_stage_resources_and_unset_ones_are_left_out():
    profile = Profile(
        name="site",
        executor="slurm",
        stages={
            "train": Resources(
                partition="gpu",
                constraint="gpu",
                gpus=1,
                cpus=8,
                mem_gb=32,
                time_min=90,
                setup=("module load pytorch",),
            ),
        },
    )
    params = executor_parameters(profile, "train")
    assert params["slurm_partition"] == "gpu"
    assert params["slurm_constraint"] == "gpu"
    assert (params["gpus_per_node"], params["cpus_per_task"], params["mem_gb"]) == (1, 8, 32)
    assert params["timeout_min"] == 90
    assert params["slurm_setup"] == ["module load pytorch"]
    assert "slurm_account" not in params and "slurm_qos" not in params


def test_a_stage_without_entry_gets_the_defaults():
    profile = Profile(name="laptop", executor="local", defaults=Resources(cpus=2, time_min=10))
    params = executor_parameters(profile, "prepare")
    assert (params["cpus_per_task"], params["timeout_min"], params["gpus_per_node"]) == (2, 10, 0)
    assert "mem_gb" not in params
    assert not any(key.startswith("slurm_") for key in params)
