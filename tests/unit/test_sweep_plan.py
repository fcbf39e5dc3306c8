"""Sweep planning and bookkeeping, as data: which stages run per point, array states,
task resources, records, point params files. No Slurm, no DVC repo, no jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcpipe.config import Profile, Resources
from hpcpipe.launch.profiles import sweep_resources
from hpcpipe.launch.slurm_state import parse_array
from hpcpipe.sweep import record
from hpcpipe.sweep.params_text import PointParams, full_text
from hpcpipe.sweep.pipeline import StageNode, plan
from hpcpipe.sweep.task import run_point, task_env
from hpcpipe.sweep.workspace import load_round_trip
from hpcpipe.validation import ConfigError

# The example project's pipeline as DVC's index gives it (see DvcProject.nodes).
RAW = StageNode("data/raw.dvc", deps=(), outs=("data/raw",), source=True)
PREPARE = StageNode(
    "prepare", deps=("data/raw", "src/prepare.py"), outs=("data/prepared",), params=("data", "prepare")
)
TRAIN = StageNode(
    "train",
    deps=("data/prepared", "src/train.py"),
    outs=("models/model.pt", "metrics/train.json"),
    params=("train",),
    metrics=("metrics/train.json",),
)
EVALUATE = StageNode(
    "evaluate",
    deps=("data/prepared", "models/model.pt"),
    outs=("metrics/evaluate.json",),
    params=("evaluate",),
    metrics=("metrics/evaluate.json",),
)
PIPELINE = [PREPARE, TRAIN, EVALUATE, RAW]


def test_a_train_grid_reuses_prepare_and_runs_train_then_evaluate():
    got = plan(PIPELINE, ["train.lr", "train.epochs"])
    assert got.affected == ("train", "evaluate")
    assert got.upstream == ("prepare",)  # reproduced once in the project, not per point
    assert got.checkout == ("prepare", "train", "evaluate")  # raw data is never linked
    assert got.metrics == ("metrics/train.json", "metrics/evaluate.json")


def test_a_prepare_grid_runs_everything_per_point_and_links_the_raw_data():
    got = plan(PIPELINE, ["prepare.train_size"])
    assert got.affected == ("prepare", "train", "evaluate")
    assert got.upstream == ()  # a .dvc file is data, not a stage to reproduce
    assert got.checkout[0] == "data/raw.dvc"


def test_an_evaluate_grid_leaves_train_upstream():
    got = plan(PIPELINE, ["evaluate.batch_size"])
    assert got.affected == ("evaluate",)
    assert got.upstream == ("prepare", "train")
    assert got.reused == ("prepare", "train")


def test_every_stage_above_the_affected_ones_is_checked_not_only_the_nearest():
    first = StageNode("first", deps=(), outs=("a",))
    second = StageNode("second", deps=("a",), outs=("b",))
    swept = StageNode("swept", deps=("b",), outs=("c",), params=("train",))
    got = plan([first, second, swept], ["train.lr"])
    assert got.upstream == ("second",)  # `dvc repro second` runs first too, if needed
    assert got.reused == ("first", "second")


def test_keys_match_sections_and_subkeys_both_ways():
    nested = StageNode("s", deps=(), outs=("o",), params=("train.optimizer",))
    assert plan([nested], ["train.optimizer.lr"]).affected == ("s",)
    assert plan([nested], ["train"]).affected == ("s",)
    assert plan([nested], ["train.lr"]).affected == ()
    whole_file = StageNode("w", deps=(), outs=("x",), params=None)
    assert plan([whole_file], ["anything.at_all"]).affected == ("w",)


def test_affected_stages_come_in_pipeline_order_whatever_dvc_lists_first():
    got = plan([EVALUATE, TRAIN, RAW, PREPARE], ["train.lr"])
    assert got.affected == ("train", "evaluate")


def test_a_stage_reading_a_file_inside_an_affected_output_folder_is_affected():
    producer = StageNode("make", deps=(), outs=("out",), params=("a",))
    reader = StageNode("read", deps=("out/part.bin",), outs=("r",))
    assert plan([producer, reader], ["a.x"]).affected == ("make", "read")


def test_a_key_no_stage_reads_affects_nothing():
    assert plan(PIPELINE, ["wandb.project"]).affected == ()


# --------------------------------------------------------------------------- array states
SQUEUE_R = """\
4101_0|RUNNING|None|node1|0:12
4101_1|RUNNING|None|node1|0:12
4101_2|PENDING|JobArrayTaskLimit||0:00
4101_3|PENDING|JobArrayTaskLimit||0:00
4102_0|RUNNING|None|node1|0:01
"""
SACCT_ARRAY = """\
4101_0|COMPLETED|0:0|node1|00:00:20
4101_1|FAILED|1:0|node1|00:00:03
4101_[2-3%2]|PENDING|0:0|None assigned|00:00:00
"""


def test_squeue_tasks_of_one_array():
    states = parse_array(SQUEUE_R, "4101", sacct=False).tasks
    assert sorted(states) == ["4101_0", "4101_1", "4101_2", "4101_3"]  # not 4102's task
    assert states["4101_2"].state == "PENDING" and states["4101_2"].reason == "JobArrayTaskLimit"
    assert states["4101_0"].node == "node1"


def test_sacct_unfolds_pending_tasks_and_keeps_exit_codes():
    states = parse_array(SACCT_ARRAY, "4101", sacct=True).tasks
    assert states["4101_1"].state == "FAILED" and states["4101_1"].exit_code == "1:0"
    assert states["4101_2"].state == states["4101_3"].state == "PENDING"
    assert states["4101_0"].final and not states["4101_3"].final


def test_a_requeued_tasks_latest_sacct_line_wins():
    text = "7_0|NODE_FAIL|0:0|n1|00:01:00\n7_0|RUNNING|0:0|n1|00:00:05\n"
    assert parse_array(text, "7", sacct=True).get("7_0").state == "RUNNING"


def test_tasks_cancelled_before_they_started_share_the_arrays_bare_record():
    """Seen on Slurm 22.05: after scancel, sacct shows the never-started tasks as `248|CANCELLED by 0`."""
    text = "248_0|CANCELLED by 0|0:15|vm|00:00:09\n248|CANCELLED by 0|0:0|None assigned|00:00:00\n"
    states = parse_array(text, "248", sacct=True)
    assert states.get("248_0").exit_code == "0:15"
    assert states.get("248_7").state == "CANCELLED" and states.get("248_7").final


# --------------------------------------------------------------------------- task resources
def test_a_sweep_task_gets_its_largest_stage_and_the_sum_of_their_times():
    gpu = Resources(partition="gpu", gpus=1, cpus=4, mem_gb=8, time_min=30)
    cpu = Resources(partition="cpu", cpus=8, mem_gb=16, time_min=10)
    profile = Profile(name="site", executor="slurm", stages={"train": gpu, "evaluate": cpu})
    got = sweep_resources(profile, ["train", "evaluate"])
    assert (got.partition, got.gpus, got.cpus, got.mem_gb, got.time_min) == ("gpu", 1, 8, 16, 40)


def test_a_profiles_own_sweep_entry_wins():
    own = Resources(partition="shared", time_min=5)
    profile = Profile(name="site", executor="slurm", stages={"sweep": own, "train": Resources(gpus=4)})
    assert sweep_resources(profile, ["train"]) == own


# --------------------------------------------------------------------------- records and params
@pytest.mark.parametrize("bad", ["", "-x", "a b", "a/b", "x..y", "name.lock", "n" * 41, "é"])
def test_unsafe_sweep_names_are_refused(bad):
    with pytest.raises(ConfigError, match="sweep name"):
        record.check_name(bad)


def test_a_record_round_trips(tmp_path: Path):
    sweep = record.Sweep(
        name="lr",
        profile="local",
        base_commit="abc",
        overrides=["train.lr=0.1,0.2"],
        affected=["train"],
        checkout=["prepare"],
        metrics=["m.json"],
        parallelism=2,
        points=[
            record.Point(
                1, "lr-0.1", {"train.lr": 0.1}, "ws/1", [record.Attempt("5_0", "slurm", "/f", 1.0)], "FAILED"
            )
        ],
    )
    record.save(tmp_path, sweep)
    assert record.load(tmp_path, "lr") == sweep
    with pytest.raises(ConfigError, match=r"no sweep named 'other'.*known: lr"):
        record.load(tmp_path, "other")


def test_point_params_keep_comments_and_set_the_wandb_group(tmp_path: Path):
    source = tmp_path / "params.yaml"
    source.write_text(
        "# top comment\ntrain:\n  lr: 0.05  # peak\n  epochs: 40\nwandb:\n  enabled: false\n  group: null\n"
    )
    base = load_round_trip(source)
    text = PointParams(base, ["train.lr", "train.epochs"], "mysweep").text(
        {"train.lr": 0.1, "train.epochs": 10}
    )
    assert "# top comment" in text and "# peak" in text
    assert "lr: 0.1" in text and "epochs: 10" in text and "group: mysweep" in text
    assert "lr: 0.05" in source.read_text()  # the project's file is untouched
    assert base["train"]["lr"] == 0.05  # and so is the document every point starts from


@pytest.mark.parametrize(
    "values",
    [
        {"train.lr": 1e-05, "train.name": "a b", "train.flag": True},
        {"train.lr": 0.1, "train.name": "yes", "train.flag": False},  # a string YAML would read as a bool
        {"train.lr": 3, "train.name": "x: y", "train.flag": None},
        {"train.lr": 0.5, "train.name": "line\nbreak", "train.flag": True},  # two lines: a full dump
    ],
)
def test_point_params_from_the_template_are_ruamels_own_dump(tmp_path: Path, values):
    """The fast path (one dump, values put in as text) gives byte for byte what a full
    ruamel dump of each point gives, comments and odd values included."""
    source = tmp_path / "params.yaml"
    source.write_text(
        "# top\ntrain:\n  lr: 0.05    # peak, aligned\n  name: plain\n  flag: false\n"
        "  list: [1, 2]\nwandb:\n  group: null  # set by sweeps\n"
    )
    base = load_round_trip(source)
    template = PointParams(base, list(values), "g")
    assert template.usable
    assert template.text(values) == full_text(base, values, "g")


def test_the_task_runs_stages_inline_with_the_workspaces_code(tmp_path: Path):
    (tmp_path / "src").mkdir()
    outer = {"PYTHONPATH": "/elsewhere", "SLURM_CPUS_PER_TASK": "4", "HPCPIPE_CLUSTER": "x"}
    env = task_env(tmp_path, {**outer, "SUBMITIT_EXECUTOR": "slurm", "SUBMITIT_FOLDER": "/shared/jobs"})
    assert env["HPCPIPE_CLUSTER"] == "inline"
    # not a submitit job itself: checkpoints go to the point's own workspace
    assert not any(key.startswith("SUBMITIT_") for key in env)
    assert env["PYTHONPATH"].split(":") == [str(tmp_path / "src"), "/elsewhere"]
    assert env["OMP_NUM_THREADS"] == "4"


def test_a_sweep_task_is_requeued_at_the_time_limit_not_failed():
    """submitit requeues a task whose callable has ``checkpoint`` (it returns the same call)."""
    from submitit.helpers import DelayedSubmission

    again = run_point.checkpoint("/ws/001-a", ["prepare"], ["train", "evaluate"])
    assert isinstance(again, DelayedSubmission)
    assert again.function is run_point and again.args == ("/ws/001-a", ["prepare"], ["train", "evaluate"])


def test_point_params_of_the_example_project_are_ruamels_own_dump():
    """The example's params.yaml (aligned comments after the swept values) over a grid."""
    base = load_round_trip(Path(__file__).resolve().parents[2] / "params.yaml")
    template = PointParams(base, ["train.lr", "train.model", "train.augment"], "lr-study")
    assert template.usable
    for point in (
        {"train.lr": 0.0001, "train.model": "resnet18", "train.augment": False},
        {"train.lr": 12.5, "train.model": "a much longer model name than the column", "train.augment": True},
    ):
        assert template.text(point) == full_text(base, point, "lr-study")
