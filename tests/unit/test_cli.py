"""`hpcpipe` input errors: one line, exit 2, nothing submitted, nothing changed."""

from __future__ import annotations

import pytest

from hpcpipe.cli import main, parse_stage_paths
from hpcpipe.stages import STAGES
from tests.conftest import update_params

TRAIN_ARGS = [
    "--prepared", "data/prepared", "--model", "models/model.pt",
    "--metrics", "metrics/train.json", "--history", "metrics/train_history.csv",
]  # fmt: skip


def test_stage_paths_are_parsed_by_role():
    paths = parse_stage_paths(STAGES["train"], TRAIN_ARGS)
    assert paths == {
        "prepared": "data/prepared",
        "model": "models/model.pt",
        "metrics": "metrics/train.json",
        "history": "metrics/train_history.csv",
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (TRAIN_ARGS[:-2], "hpcpipe run train: missing --history; expected --prepared PATH"),
        ([*TRAIN_ARGS, "--colour", "red"], "hpcpipe run train: unexpected --colour red"),
    ],
)
def test_a_wrong_stage_command_line_is_one_line_and_exit_2(project, capsys, args, message):
    assert main(["run", "train", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"hpcpipe: {message}")
    assert err.count("\n") == 1
    assert not (project / ".hpcpipe").exists()


def test_bad_params_submit_nothing_and_change_nothing(project, capsys):
    (project / "models").mkdir()
    (project / "models" / "model.pt").write_bytes(b"the previous model")
    update_params(project, train={"lr": "fast"})
    assert main(["run", "train", *TRAIN_ARGS]) == 2
    assert capsys.readouterr().err == "hpcpipe: params.yaml: train.lr: expected a number > 0, got 'fast'\n"
    assert not (project / ".hpcpipe").exists()
    assert (project / "models" / "model.pt").read_bytes() == b"the previous model"


def test_an_unknown_cluster_profile_is_one_line(project, capsys):
    assert main(["run", "train", "--cluster", "mars", *TRAIN_ARGS]) == 2
    assert "cluster profile 'mars' not found" in capsys.readouterr().err
    assert not (project / ".hpcpipe").exists()


def test_cluster_prints_the_resolved_profile(project, capsys):
    assert main(["cluster"]) == 0  # HPCPIPE_CLUSTER=local, set by the fixture
    out = capsys.readouterr().out
    assert "name: local" in out and "executor: local" in out


def test_fetch_reports_a_missing_data_folder_in_one_line(project, capsys):
    update_params(project, data={"path": "data/nowhere"})
    assert main(["fetch"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("hpcpipe: data.path 'data/nowhere': no train/ and test/ folders")
    assert err.count("\n") == 1


def test_fetch_counts_an_imagefolder(project, capsys):
    assert main(["fetch"]) == 0
    assert "10000 train and 2000 test images, 10 classes" in capsys.readouterr().out
