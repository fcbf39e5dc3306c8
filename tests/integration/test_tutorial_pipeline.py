"""The tutorial project (tests/support/tutorial), from plain DVC to hpcpipe, with the real `dvc`.

Each pipeline test runs twice: `[plain]` is the project as its user has it, plain
DVC, the baseline of what runs and what it computes; `[hpcpipe]` is the same
project after `hpcpipe init`, each stage a job on submitit's local executor. The
two must agree: the same stages run (and none on a no-op repro), the results are
bitwise the same, and a failing script fails the repro with its exit code.

The train script's own behaviour (checkpoint resume, W&B) is checked first by
running it directly, as its user would before ever using hpcpipe.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from hpcpipe.sweep import record
from hpcpipe.tracking.records import read_run
from hpcpipe.tracking.run import SYNCED_MARKER
from tests.support.commands import commit_all, dvc, experiments, git, run_cli
from tests.support.fake_wandb import calls
from tests.support.tutorial_project import (
    RESULTS,
    STAGES,
    TUTORIAL,
    cmds,
    copy_tutorial_project,
    groups,
    hpcpipe_init,
    jobs,
    set_param,
    stages_run,
    work_in,
)

EVALUATE = ["evaluate@train", "evaluate@test"]
# one param at a time, in sequence: (file, key, new value, what dvc repro must rerun)
CHANGES = (
    ("params.yaml", "evaluate.threshold", 0.6, EVALUATE),
    ("params.yaml", "train.lr", 0.3, ["train", *EVALUATE]),
    ("features.yaml", "featurize.squares", False, ["featurize", "train", *EVALUATE]),
    ("params.yaml", "split.seed", 8, ["split", "featurize", "train", *EVALUATE]),
)
FAILING_SCRIPT = """\
import sys
for n in range(40):
    print(f"featurize: reading column {n}", file=sys.stderr)
print("featurize: column 41 is all NaN, giving up", file=sys.stderr)
sys.exit(3)
"""


@dataclass(frozen=True)
class Pipeline:
    root: Path
    hpcpipe: bool  # True: after `hpcpipe init`, each stage a job

    def repro(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return dvc(self.root, "repro", *args, check=check)

    def expect_jobs(self, stages: Iterable[str]) -> Counter:
        return groups(stages) if self.hpcpipe else Counter()


@pytest.fixture(params=["plain", "hpcpipe"])
def pipeline(request: pytest.FixtureRequest, tutorial_project: Path) -> Pipeline:
    if request.param == "hpcpipe":
        hpcpipe_init(tutorial_project)
    return Pipeline(tutorial_project, hpcpipe=request.param == "hpcpipe")


def clean_env() -> dict[str, str]:
    """This process's environment without hpcpipe's or W&B's variables."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("HPCPIPE_", "WANDB_"))}


def run_script(root: Path, stage: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """Start a stage's plain command from dvc.yaml directly (no DVC), with this Python."""
    argv = shlex.split(cmds(TUTORIAL / "dvc.yaml")[stage].replace("${train.epochs}", "8"))
    assert argv[0] == "python"
    return subprocess.Popen(
        [sys.executable, *argv[1:]], cwd=root, env=env, text=True, stdout=subprocess.PIPE, **popen
    )


def script(root: Path, stage: str, env: dict[str, str] | None = None) -> str:
    """Run a stage's plain command to the end; its stdout."""
    proc = run_script(root, stage, env)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    return out


@pytest.fixture
def featurized(tmp_path: Path) -> Path:
    """A bare copy of the tutorial with generate, split and featurize run by hand."""
    root = tmp_path / "tutorial"
    shutil.copytree(TUTORIAL, root)
    for stage in ("generate", "split", "featurize"):
        script(root, stage)
    return root


def test_train_resumes_from_its_checkpoint_to_the_same_bytes(featurized: Path, tmp_path: Path):
    script(featurized, "train")
    straight = (featurized / "models" / "model.json").read_bytes()
    (featurized / "models" / "model.json").unlink()

    # killed (as by a preemption) after a few epochs, then started again with the same folder
    set_param(featurized, "train.epoch_seconds", 0.2)
    folder = tmp_path / "checkpoint"
    env = {**clean_env(), "HPCPIPE_CHECKPOINT_DIR": str(folder)}
    first = run_script(featurized, "train", env, start_new_session=True)
    state = folder / "state.json"
    deadline = time.monotonic() + 60
    while not (state.exists() and json.loads(state.read_text())["epoch"] >= 2):
        assert first.poll() is None and time.monotonic() < deadline, "no checkpoint of epoch 2"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    done = json.loads(state.read_text())["epoch"]
    assert 2 <= done < 8 and not (featurized / "models" / "model.json").exists()

    again = script(featurized, "train", env)
    assert f"train: resuming after epoch {done}" in again
    assert "epoch 1/8" not in again and "epoch 8/8" in again
    assert (featurized / "models" / "model.json").read_bytes() == straight


def test_train_logs_each_epoch_to_wandb_only_when_enabled(featurized: Path, tmp_path: Path):
    wandb_dir = tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    env = {
        **clean_env(),
        "WANDB_MODE": "offline",
        "WANDB_DIR": str(wandb_dir),
        "WANDB_PROJECT": "tutorial-test",
        "WANDB_SILENT": "true",
    }
    script(featurized, "train", env)
    assert list(wandb_dir.iterdir()) == []

    set_param(featurized, "wandb.enabled", True)
    script(featurized, "train", env)
    (run_file,) = wandb_dir.rglob("run-*.wandb")
    run = read_run(run_file)
    assert run.project == "tutorial-test"
    assert run.config["lr"] == 0.5
    assert [row["epoch"] for row in run.history] == list(range(1, 9))


@pytest.mark.slow
def test_repro_runs_every_stage_once_then_nothing(pipeline: Pipeline, plain_results: dict[str, bytes]):
    first = pipeline.repro()
    assert stages_run(first.stdout) == list(STAGES)
    assert jobs(first.stderr, "submitted") == pipeline.expect_jobs(STAGES)
    assert jobs(first.stderr, "COMPLETED") == pipeline.expect_jobs(STAGES)
    assert {name: (pipeline.root / name).read_bytes() for name in RESULTS} == plain_results
    shown = json.loads(dvc(pipeline.root, "metrics", "show", "--json").stdout)[""]["data"]
    assert shown["eval/test/metrics.json"]["data"]["samples"] == 300
    assert shown["eval/test/metrics.json"]["data"]["accuracy"] > 0.9
    assert shown["eval/train/metrics.json"]["data"]["samples"] == 900

    again = pipeline.repro()
    assert stages_run(again.stdout) == []
    assert jobs(again.stderr, "submitted") == Counter()
    assert "Data and pipelines are up to date" in dvc(pipeline.root, "status").stdout


@pytest.mark.slow
def test_a_param_change_reruns_exactly_the_stages_that_read_it(pipeline: Pipeline):
    pipeline.repro()
    for file, key, value, expected in CHANGES:
        set_param(pipeline.root, key, value, file)
        changed = pipeline.repro()
        assert stages_run(changed.stdout) == expected, f"after {key} = {value} in {file}"
        assert jobs(changed.stderr, "submitted") == pipeline.expect_jobs(expected), key
    model = json.loads((pipeline.root / "models" / "model.json").read_text())
    assert len(model["weights"]) == 6  # featurize.squares is off now


@pytest.mark.slow
def test_a_script_that_exits_3_fails_its_stage_and_the_repro(pipeline: Pipeline):
    (pipeline.root / "src" / "featurize.py").write_text(FAILING_SCRIPT)
    repro = pipeline.repro(check=False)
    assert repro.returncode != 0
    assert stages_run(repro.stdout) == ["generate", "split", "featurize"]
    assert "exited with 3" in repro.stderr
    assert "column 41 is all NaN, giving up" in repro.stderr
    assert not (pipeline.root / "data" / "features").exists()

    # the stage's command by itself, as dvc runs it
    command = shlex.split(cmds(pipeline.root / "dvc.yaml")["featurize"])
    alone = subprocess.run(command, cwd=pipeline.root, capture_output=True, text=True, timeout=300)
    assert alone.returncode == 3
    assert "column 41 is all NaN, giving up" in alone.stderr
    assert jobs(alone.stderr, "COMPLETED") == Counter()


def test_init_undo_gives_back_the_original_dvc_yaml(tutorial_project: Path):
    original = (tutorial_project / "dvc.yaml").read_bytes()
    hpcpipe_init(tutorial_project)
    undo = run_cli("init", "--undo", cwd=tutorial_project, timeout=120)
    assert undo.returncode == 0, undo.stdout + undo.stderr
    assert (tutorial_project / "dvc.yaml").read_bytes() == original


@dataclass(frozen=True)
class WandbRepro:
    root: Path
    repro: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def wandb_repro(tutorial_template: Path, tmp_path_factory: pytest.TempPathFactory) -> WandbRepro:
    """`dvc repro train` after `hpcpipe init`, with wandb.enabled: true (train.py's plain
    wandb.init()), in a copy of the tutorial project; made once for the tests that read
    the run it wrote (each repro costs a job per stage)."""
    root = copy_tutorial_project(tutorial_template, tmp_path_factory.mktemp("wandb") / "tutorial")
    with pytest.MonkeyPatch.context() as monkeypatch:
        work_in(root, monkeypatch)
        set_param(root, "wandb.enabled", True)
        hpcpipe_init(root)
        return WandbRepro(root, dvc(root, "repro", "train"))


@pytest.mark.slow
def test_a_job_logs_to_wandb_offline_in_the_project(wandb_repro: WandbRepro):
    assert jobs(wandb_repro.repro.stderr, "COMPLETED") == Counter(["generate", "split", "featurize", "train"])
    (run_file,) = (wandb_repro.root / "wandb").rglob("run-*.wandb")
    run = read_run(run_file)
    assert run.project == "hpcpipe-tutorial"  # params.yaml's wandb.project: the script names none
    assert run.group
    assert [row["epoch"] for row in run.history] == list(range(1, 9))


@pytest.mark.slow
def test_sync_dry_run_lists_exactly_the_train_run_and_uploads_nothing(
    wandb_repro: WandbRepro, fake_wandb: Path, monkeypatch: pytest.MonkeyPatch
):
    """fake_wandb: a stand-in `wandb` CLI first on PATH records any upload (`wandb sync DIR`)."""
    root = wandb_repro.root
    work_in(root, monkeypatch)
    (run_file,) = (root / "wandb").rglob("run-*.wandb")
    run_id = read_run(run_file).run_id  # WANDB_RUN_ID, as the job gave it to train.py

    dry = run_cli("sync", "--dry-run", cwd=root, timeout=120)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert dry.stdout.splitlines() == [
        f"would sync {run_id}: {run_file.parent}",
        "synced 0, failed 0, skipped 0",
    ]
    assert calls(fake_wandb) == []  # nothing uploaded
    assert list((root / "wandb").rglob(SYNCED_MARKER)) == []

    # what it listed is what a real pass uploads, once
    real = run_cli("sync", cwd=root, timeout=120)
    assert real.returncode == 0, real.stdout + real.stderr
    assert real.stdout.splitlines() == [f"synced {run_id}", "synced 1, failed 0, skipped 0"]
    assert calls(fake_wandb) == [f"sync {run_file.parent}"]


# --------------------------------------------------------------------------- sweeps
@pytest.mark.slow
def test_a_sweep_comes_back_as_one_dvc_experiment_per_point(tutorial_project: Path):
    hpcpipe_init(tutorial_project)
    commit_all(tutorial_project)
    done = run_cli(
        "sweep", "-S", "train.lr=0.05,0.2", "--parallelism", "2", "--name", "lr", cwd=tutorial_project
    )
    assert done.returncode == 0, done.stderr
    assert "2 of 2 points saved as experiments" in done.stderr
    # the stages above train run once, in the project, for both points
    assert jobs(done.stderr, "submitted") == Counter(["generate", "split", "featurize"])

    found = {name: exp for name, exp in experiments(tutorial_project).items() if name.startswith("lr-")}
    assert {name: exp["params"]["train"]["lr"] for name, exp in found.items()} == {
        "lr-lr-0.05": 0.05,
        "lr-lr-0.2": 0.2,
    }
    slow, fast = (found[name]["metrics"] for name in ("lr-lr-0.05", "lr-lr-0.2"))
    for split, samples in (("train", 900), ("test", 300)):
        a, b = slow[f"eval/{split}/metrics.json"], fast[f"eval/{split}/metrics.json"]
        assert a["samples"] == b["samples"] == samples
        assert a["log_loss"] != b["log_loss"], split  # two learning rates, two models


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "train.lrr=1",
            "point 1 (train.lrr=1): -S train.lrr: unknown key 'lrr' in train; did you mean train.lr? known: ",
        ),
        (
            "train.epochs=1.5",
            "point 1 (train.epochs=1.5): params.yaml: train.epochs: "
            "expected an integer like its value 8, got 1.5",
        ),
    ],
    ids=["unknown-key", "int-to-float"],
)
def test_a_bad_sweep_of_the_schemaless_project_is_one_line_and_runs_nothing(
    tutorial_project: Path, override: str, message: str
):
    hpcpipe_init(tutorial_project)
    commit_all(tutorial_project)
    done = run_cli("sweep", "-S", override, cwd=tutorial_project, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr
    assert not (tutorial_project / record.SWEEPS_DIR).exists()
    assert len(git(tutorial_project, "worktree", "list").splitlines()) == 1
    assert not (tutorial_project / "data" / "raw.npy").exists()  # no stage ran
