"""`hpcpipe` input errors: one line, exit 2, nothing submitted, nothing changed."""

from __future__ import annotations

import pytest

from hpcpipe.cli import main
from hpcpipe.config import TrainParams, load_profile
from tests.support.project import CLASSES, PER_CLASS, update_params

TARGET = "hpcpipe.stages.train:train"
TRAIN_ARGS = [
    "--prepared", "data/prepared", "--model", "models/model.pt",
    "--metrics", "metrics/train.json", "--history", "metrics/train_history.csv",
]  # fmt: skip
EXPECTED = "expected --prepared PATH --model PATH --metrics PATH --history PATH"


@pytest.fixture
def example(project):
    """The example project with train's input in place (DVC hashes a stage's deps first)."""
    (project / "data" / "prepared").mkdir()
    return project


def test_stage_paths_are_parsed_by_role_and_outputs_come_from_dvc(example):
    """`--ROLE PATH` per keyword of the function; the roles whose path is one of the
    stage's DVC outs (outs, metrics, plots) are its outputs, the others its inputs."""
    from hpcpipe.launch.dvc_stage import load_stage
    from hpcpipe.launch.job import run_resumable_stage
    from hpcpipe.launch.stage_work import function_work

    stage = load_stage(example, "train")
    work = function_work(stage, TARGET, TRAIN_ARGS, load_profile("local", example), example, "params.yaml")
    spec, params, paths, workdir, context = work.args
    assert paths == {
        "prepared": "data/prepared",
        "model": "models/model.pt",
        "metrics": "metrics/train.json",
        "history": "metrics/train_history.csv",
    }
    assert (spec.inputs, spec.outputs) == (("prepared",), ("model", "metrics", "history"))
    assert sorted(work.outs) == sorted(["models/model.pt", "metrics/train.json", "metrics/train_history.csv"])
    assert (spec.target, spec.sections, spec.resumable, spec.tracked) == (TARGET, ("train",), True, True)
    assert work.function is run_resumable_stage
    assert isinstance(params.train, TrainParams) and params.wandb.enabled is False
    assert workdir == str(example)
    assert context.fingerprint == work.fingerprint == stage.fingerprint


NO_SUCH = "hpcpipe.stages.train:no_such_function"


@pytest.mark.parametrize(
    ("fn", "args", "message"),
    [
        (TARGET, TRAIN_ARGS[:-2], f"--fn {TARGET}: missing --history; {EXPECTED}"),
        (TARGET, [*TRAIN_ARGS, "--colour", "red"], f"--fn {TARGET}: unexpected --colour red; {EXPECTED}"),
        (NO_SUCH, TRAIN_ARGS, f"--fn {NO_SUCH}: hpcpipe.stages.train has no 'no_such_function'"),
    ],
)
def test_a_wrong_stage_command_line_is_one_line_and_exit_2(example, capsys, fn, args, message):
    assert main(["run", "train", "--fn", fn, *args]) == 2
    assert capsys.readouterr().err == f"hpcpipe: {message}\n"
    assert not (example / ".hpcpipe").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "train"], "hpcpipe run train: give the stage's command after -- "),
        (
            ["run", "train", "--fn", TARGET, "--", "python", "x.py"],
            "give --fn MOD:FUNC or a command after --",
        ),
        (["run", "train", "--"], "hpcpipe run train: nothing after --; give the command to run"),
        (
            ["run", "train", "--prepared", "p", "--", "true"],
            "hpcpipe run train: unexpected --prepared p before --",
        ),
        (["run", "train", "--fn", "nomodule"], "--fn 'nomodule': expected package.module:function"),
    ],
)
def test_a_run_without_one_command_or_function_is_one_line_and_exit_2(example, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpcpipe: ") and message in err and err.count("\n") == 1
    assert not (example / ".hpcpipe").exists()


def test_an_unknown_stage_names_the_known_ones(example, capsys):
    assert main(["run", "trian", "--", "python", "train.py"]) == 2
    err = capsys.readouterr().err
    assert err == "hpcpipe: dvc.yaml has no stage 'trian'; its stages are: evaluate, prepare, train\n"
    assert not (example / ".hpcpipe").exists()


def test_a_stage_whose_input_is_missing_submits_nothing(project, capsys):
    assert main(["run", "train", "--fn", TARGET, *TRAIN_ARGS]) == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("hpcpipe: stage train: missing dependencies data/prepared;") and err.count("\n") == 1
    )
    assert not (project / ".hpcpipe").exists()


def test_bad_params_submit_nothing_and_change_nothing(example, capsys):
    (example / "models").mkdir()
    (example / "models" / "model.pt").write_bytes(b"the previous model")
    update_params(example, train={"lr": "fast"})
    assert main(["run", "train", "--fn", TARGET, *TRAIN_ARGS]) == 2
    assert capsys.readouterr().err == "hpcpipe: params.yaml: train.lr: expected a number > 0, got 'fast'\n"
    assert not (example / ".hpcpipe").exists()
    assert (example / "models" / "model.pt").read_bytes() == b"the previous model"


def test_a_section_the_function_reads_but_dvc_yaml_does_not_list_is_refused(example, capsys):
    """A schema section missing from the stage's `params:` would go unseen by DVC: a
    change to it would not rerun the stage. So the launcher refuses it."""
    path = example / "dvc.yaml"
    path.write_text(
        path.read_text().replace("    params:\n      - train\n", "    params:\n      - evaluate\n")
    )
    assert main(["run", "train", "--fn", TARGET, *TRAIN_ARGS]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hpcpipe: stage train: its function reads params section(s) train, which")
    assert not (example / ".hpcpipe").exists()


def test_an_unknown_cluster_profile_is_one_line(example, capsys):
    assert main(["run", "train", "--cluster", "mars", "--fn", TARGET, *TRAIN_ARGS]) == 2
    assert "cluster profile 'mars' not found" in capsys.readouterr().err
    assert not (example / ".hpcpipe").exists()


def test_cluster_prints_the_resolved_profile(project, capsys):
    assert main(["cluster"]) == 0  # HPCPIPE_CLUSTER=local, set by the fixture
    out = capsys.readouterr().out
    assert "name: local" in out and "executor: local" in out
    # each stage of this project with what it would get: the example's own addition
    assert "  train: gpus=1 cpus=2 time_min=120" in out and "  prepare: gpus=0 cpus=2 time_min=120" in out


def test_a_profile_stage_that_dvc_yaml_does_not_define_is_refused_by_name(example, capsys):
    """A typo under stages: must not silently run train without its GPU."""
    (example / "configs" / "cluster" / "local.yaml").write_text("stages:\n  trian:\n    gpus: 1\n")
    assert main(["run", "train", "--fn", TARGET, *TRAIN_ARGS]) == 2
    err = capsys.readouterr().err
    assert "stages.trian: no stage 'trian' in dvc.yaml; its stages are: evaluate, prepare, train" in err
    assert len(err.strip().splitlines()) == 1
    assert not (example / ".hpcpipe" / "jobs").exists()
    assert main(["cluster"]) == 1  # and `hpcpipe cluster` says it as a failed check
    assert "FAIL  stage names: " in capsys.readouterr().out


def test_fetch_reports_a_missing_data_folder_in_one_line(project, capsys):
    update_params(project, data={"path": "data/nowhere"})
    assert main(["fetch"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hpcpipe: data.path 'data/nowhere': no train/ and test/ folders")
    assert err.count("\n") == 1


def test_fetch_counts_an_imagefolder(project, capsys):
    assert main(["fetch"]) == 0
    train, test = (PER_CLASS[split] * CLASSES for split in ("train", "test"))  # the project's raw folder
    assert f"{train} train and {test} test images, 10 classes" in capsys.readouterr().out
