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


MULTI_GPU = {
    # one whole node: 4 A100, one task each (the regular QoS: a whole node is not shared)
    "perlmutter-train-1node-4gpu": (
        "  train: {constraint: gpu, qos: regular, gpus: 4, cpus: 32, mem_gb: null}\n"
    ),
    # two whole nodes, 8 GPUs, 8 tasks; Slurm's own spelling of the keys
    "perlmutter-train-2node-8gpu": (
        "  train: {constraint: gpu, qos: regular, nodes: 2, gpus_per_node: 4, cpus_per_task: 32,"
        " mem_gb: null, time_min: 240}\n"
    ),
}


@pytest.mark.parametrize("case", sorted(MULTI_GPU))
def test_multi_gpu_sbatch_text_matches_the_golden_file(tmp_path, case):
    """NERSC's multi-GPU job scripts (docs.nersc.gov/jobs, machinelearning/launchers): ``-C gpu``,
    ``--nodes``, ``--ntasks-per-node=4``, ``--gpus-per-node=4``, ``--cpus-per-task=32``,
    ``SLURM_CPU_BIND=cores``, every GPU visible to every task; submitit's srun starts the tasks.
    Set HPCPIPE_UPDATE_GOLDEN=1 to rewrite the files after an intended change."""
    import os

    folder = tmp_path / "configs" / "cluster"
    folder.mkdir(parents=True)
    (folder / "perlmutter.yaml").write_text("defaults:\n  account: m1234\nstages:\n" + MULTI_GPU[case])
    text = sbatch_text(
        load_profile("perlmutter", tmp_path), "train", Path("/project/.hpcpipe/jobs/train"), requeue=True
    )
    golden = GOLDEN / f"{case}.sbatch"
    if os.environ.get("HPCPIPE_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert text == golden.read_text()
    nodes, gpus = (2, 4) if "2node" in case else (1, 4)
    for line in (
        f"--nodes={nodes}",
        f"--ntasks-per-node={gpus}",
        f"--gpus-per-node={gpus}",
        "--gpu-bind=none",
    ):
        assert f"#SBATCH {line}\n" in text
    assert "#SBATCH --mem" not in text and "--kill-on-bad-exit=1" in text


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "{gpus: 4, tasks_per_node: 2}",
            "stages.train.tasks_per_node: 2 tasks with 4 GPUs per node; a GPU stage",
        ),
        (
            "{gpus: 4, gpus_per_node: 4}",
            "stages.train.gpus_per_node: the same key as stages.train.gpus; give one",
        ),
        ("{nodes: 0}", "stages.train.nodes: expected an integer > 0, got 0"),
        ("{tasks_per_node: -2}", "stages.train.tasks_per_node: expected a number > 0, got -2"),
    ],
)
def test_bad_task_layouts_are_refused_naming_the_key(tmp_path, entry, message):
    from hpcpipe.validation import ConfigError

    folder = tmp_path / "configs" / "cluster"
    folder.mkdir(parents=True)
    (folder / "mysite.yaml").write_text(f"extends: slurm\nstages:\n  train: {entry}\n")
    with pytest.raises(ConfigError) as err:
        load_profile("mysite", tmp_path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_several_nodes_need_slurm_and_local_tasks_are_subprocesses(tmp_path):
    from hpcpipe.validation import ConfigError

    folder = tmp_path / "configs" / "cluster"
    folder.mkdir(parents=True)
    (folder / "local.yaml").write_text("stages:\n  train: {nodes: 2}\n")
    with pytest.raises(ConfigError, match=r"local.yaml: stages.train.nodes: 2 nodes on the local executor"):
        load_profile("local", tmp_path)
    (folder / "local.yaml").write_text("stages:\n  train: {tasks_per_node: 2}\n")
    assert executor_parameters(load_profile("local", tmp_path), "train")["tasks_per_node"] == 2


def test_tasks_follow_gpus_and_cpu_stages_ask_for_tasks():
    gpu = Profile(name="p", executor="slurm", stages={"train": Resources(gpus=2, nodes=2)})
    params = executor_parameters(gpu, "train")
    assert (params["nodes"], params["ntasks_per_node"], params["gpus_per_node"]) == (2, 2, 2)
    cpu = Profile(name="p", executor="slurm", stages={"train": Resources(tasks_per_node=2)})
    params = executor_parameters(cpu, "train")
    assert (params["nodes"], params["ntasks_per_node"]) == (1, 2) and "gpus_per_node" not in params
    one = Profile(name="p", executor="slurm", stages={"train": Resources(gpus=4, tasks_per_node=1)})
    assert executor_parameters(one, "train")["ntasks_per_node"] == 1  # one process drives all four
    assert "srun_args" not in executor_parameters(one, "train")


def test_a_sweep_task_is_one_task_on_one_node_whatever_its_stages_ask():
    """A sweep's array task runs its points' stages in its own process (inline)."""
    from hpcpipe.launch.profiles import sweep_resources

    profile = Profile(name="p", executor="slurm", stages={"train": Resources(gpus=4, nodes=2, cpus=32)})
    res = sweep_resources(profile, ["train"])
    assert (res.nodes, res.tasks, res.gpus, res.cpus) == (1, 1, 4, 32)
    assert "srun_args" not in executor_parameters(
        Profile(name="p", executor="slurm", stages={"sweep": res}), "sweep"
    )
