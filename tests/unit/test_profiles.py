"""Profile + stage -> submitit parameters (pure), and the sbatch text they make, against golden files."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcpipe.config import Profile, Resources, known_profiles, load_profile
from hpcpipe.launch.profiles import executor_parameters, sbatch_text
from tests.support import REPO

GOLDEN = Path(__file__).parent / "golden"

SITE = Profile(
    name="site",
    executor="slurm",
    defaults=Resources(partition="cpu", time_min=30),
    stages={
        "train": Resources(
            partition="gpu",
            constraint="gpu",
            qos="regular",
            account="m1234",
            gpus=1,
            cpus=8,
            mem_gb=32,
            time_min=90,
            setup=("module load pytorch",),
        ),
    },
)


def test_slurm_keys_come_from_the_stage_resources():
    params = executor_parameters(SITE, "train")
    assert params == {
        "job_name": "hpcpipe-train",
        "time": 90,
        "nodes": 1,
        "ntasks_per_node": 1,
        "cpus_per_task": 8,
        "signal_delay_s": 90,
        "gpus_per_node": 1,
        "mem": "32GB",
        "partition": "gpu",
        "constraint": "gpu",
        "qos": "regular",
        "account": "m1234",
        "setup": ["module load pytorch"],
    }


def test_unset_site_options_are_left_to_the_site():
    params = executor_parameters(SITE, "prepare")
    assert params["partition"] == "cpu" and params["time"] == 30
    assert not {"gpus_per_node", "mem", "account", "qos", "constraint", "setup"} & set(params)


def test_the_time_limit_warning_leaves_short_jobs_their_time():
    from hpcpipe.launch.profiles import signal_delay_s

    assert [signal_delay_s(m) for m in (1, 5, 10, 30, 240)] == [10, 30, 60, 90, 90]


def test_fractional_memory_is_given_in_megabytes():
    profile = Profile(name="p", executor="slurm", defaults=Resources(mem_gb=1.5))
    assert executor_parameters(profile, "prepare")["mem"] == "1536MB"


def test_local_executor_gets_time_limit_and_gpu_visibility_only():
    profile = Profile(name="laptop", executor="local", defaults=Resources(cpus=2, time_min=10, gpus=1))
    assert executor_parameters(profile, "train") == {
        "timeout_min": 10,
        "gpus_per_node": 1,
        "tasks_per_node": 1,
    }


def test_foreach_members_take_their_own_entry_else_their_groups():
    """DVC names the members of a foreach/matrix stage ``name@key``."""
    group, big = Resources(gpus=1), Resources(gpus=4)
    profile = Profile(name="p", executor="slurm", stages={"train": group, "train@big": big})
    assert profile.resources("train@big") is big
    assert profile.resources("train@small") is group
    assert profile.resources("train") is group
    assert profile.resources("prepare@0") is profile.defaults
    assert executor_parameters(profile, "train@3")["gpus_per_node"] == 1


def test_foreach_members_resolve_in_a_loaded_profile(tmp_path):
    folder = tmp_path / "configs" / "cluster"
    folder.mkdir(parents=True)
    (folder / "mysite.yaml").write_text(
        "extends: slurm\nstages:\n  featurize:\n    cpus: 16\n  featurize@images:\n    gpus: 1\n"
    )
    profile = load_profile("mysite", tmp_path)
    assert profile.resources("featurize@text").cpus == 16
    images = profile.resources("featurize@images")
    assert (images.gpus, images.cpus, images.mem_gb) == (1, 2, 8)  # its own entry over the defaults


def test_resumable_stages_ask_slurm_for_requeue():
    """A command stage's runner and a resumable function stage are checkpointable in submitit's
    sense, so they are submitted with ``--requeue`` (a site with JobRequeue=0 would otherwise
    refuse submitit's ``scontrol requeue`` at the time-limit warning); other callables are not."""
    from hpcpipe.launch.command_job import CommandRunner
    from hpcpipe.launch.job import run_resumable_stage, run_stage
    from hpcpipe.launch.profiles import resumable

    assert resumable(CommandRunner()) and resumable(run_resumable_stage)
    assert not resumable(run_stage) and not resumable(print)
    assert executor_parameters(SITE, "train", requeue=True)["additional_parameters"] == {"requeue": True}
    assert "additional_parameters" not in executor_parameters(SITE, "train")
    assert "#SBATCH --requeue\n" in sbatch_text(SITE, "train", Path("/p"), requeue=True)
    assert "--requeue" not in sbatch_text(SITE, "train", Path("/p"))
    laptop = Profile(name="laptop", executor="local")  # submitit's local executor requeues by itself
    assert executor_parameters(laptop, "train", requeue=True) == executor_parameters(laptop, "train")


# The example's train takes a checkpoint (test_cli checks it is submitted as run_resumable_stage).
RESUMABLE = {"train"}


def golden_cases() -> list[tuple[str, str]]:
    slurm = [n for n in known_profiles(REPO) if load_profile(n, REPO).executor == "slurm"]
    return [(name, stage) for name in slurm for stage in ("prepare", "train", "evaluate")]


@pytest.mark.parametrize(("profile_name", "stage"), golden_cases())
def test_sbatch_text_matches_the_golden_file(profile_name, stage, request):
    """Set HPCPIPE_UPDATE_GOLDEN=1 to rewrite the files after an intended change (then review the diff)."""
    import os

    folder = Path("/project/.hpcpipe/jobs") / stage
    text = sbatch_text(load_profile(profile_name, REPO), stage, folder, requeue=stage in RESUMABLE)
    golden = GOLDEN / f"{profile_name}-{stage}.sbatch"
    if os.environ.get("HPCPIPE_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text()


def profile_error(root: Path, text: str) -> str:
    """The ConfigError that loading ``text`` as root's profile `mysite` must raise."""
    from hpcpipe.validation import ConfigError

    folder = root / "configs" / "cluster"
    folder.mkdir(parents=True)
    (folder / "mysite.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load_profile("mysite", root)
    return str(err.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'extends: slurm\ndefaults:\n  partition: "gpu\\n#SBATCH --uid=0"\n',
            r"mysite.yaml: defaults.partition: control character '\n' in 'gpu\n#SBATCH --uid=0'; ",
        ),
        (
            "extends: slurm\ndefaults:\n  setup: |\n    module load pytorch\n    conda activate x\n",
            r"mysite.yaml: defaults.setup: control character '\n' in 'module load pytorch\nconda ",
        ),
        (
            'extends: slurm\nstages:\n  train:\n    setup: ["module load a", "echo \\r"]\n',
            r"mysite.yaml: stages.train.setup[1]: control character '\r' in 'echo \r'",
        ),
        (
            'extends: slurm\ndescription: "\\e[2Jall fine"\n',
            r"mysite.yaml: description: control character '\x1b'",
        ),
        (
            'extends: slurm\nstages:\n  "tr\\tain":\n    gpus: 1\n',
            r"mysite.yaml: stages: control character '\t'",
        ),
    ],
)
def test_control_characters_in_a_profile_are_refused(tmp_path, text, message):
    """A newline in a value becomes a second #SBATCH directive or shell command in the job
    script; an escape sequence rewrites the user's terminal when the profile is printed."""
    error = profile_error(tmp_path, text)
    assert message in error
    assert error.endswith(
        "profile values are single lines of plain text (give setup: one list item per line)"
    )
    assert "\n" not in error


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "extends: slurm\npoll_s: .inf\n",
            "mysite.yaml: poll_s: inf is not a finite number; expected a number > 0",
        ),
        (
            "extends: slurm\ndefaults:\n  mem_gb: .nan\n",
            "mysite.yaml: defaults.mem_gb: nan is not a finite number;",
        ),
        (
            "extends: slurm\ndefaults:\n  cpu: 4\n",
            "mysite.yaml: defaults.cpu: unknown key; did you mean defaults.cpus? ",
        ),
        (
            "extends: slurm\npol_s: 2\n",
            "mysite.yaml: pol_s: unknown key; did you mean poll_s? known keys are ",
        ),
    ],
)
def test_profile_numbers_are_finite_and_misspelt_keys_get_the_close_one(tmp_path, text, message):
    assert message in profile_error(tmp_path, text)
