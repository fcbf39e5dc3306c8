"""The three stage functions end to end on real images: files, formats, determinism.

Output paths are given temporary-looking names on purpose: the job runner passes
names like ``models/.model.pt.tmp-1234`` and renames them afterwards, so a stage
must write exactly there and its bytes must not depend on the name.
"""

from __future__ import annotations

import csv
import hashlib
import inspect
import json
import re
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from hpcpipe.config import Params, TrainParams
from hpcpipe.ml.data import DataSourceError
from hpcpipe.stage_function import declaration, import_target, is_resumable, roles_of, stage_params
from hpcpipe.stages.evaluate import evaluate
from hpcpipe.stages.prepare import prepare
from hpcpipe.stages.train import train
from hpcpipe.validation import ConfigError
from tests.support import REPO

MakeParams = Callable[..., Params]


# --------------------------------------------------------------------------- declarations
PIPELINE = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def out_paths(stage: dict) -> set[str]:
    """Every path a dvc.yaml stage leaves behind: outs, metrics, plots (str or {path: opts})."""
    entries = [e for key in ("outs", "metrics", "plots") for e in stage.get(key, [])]
    return {e if isinstance(e, str) else next(iter(e)) for e in entries}


@pytest.mark.parametrize("name", sorted(PIPELINE))
def test_each_example_stage_command_passes_its_function_exactly_its_paths(name: str) -> None:
    """The example's dvc.yaml and its stage functions agree: the cmd names the function and
    gives it exactly its keyword roles; the function's schema covers exactly the params
    dvc.yaml lists (so DVC reruns it on exactly those); every path it writes is a DVC out
    (published atomically, checked after the job) and every other path a dep."""
    stage = PIPELINE[name]
    argv = shlex.split(stage["cmd"])
    assert argv[:4] == ["hpcpipe", "run", name, "--fn"]
    function = import_target(argv[4])
    flags, paths = argv[5::2], argv[6::2]
    assert all(flag.startswith("--") for flag in flags) and len(flags) == len(paths)
    roles = {flag[2:]: path for flag, path in zip(flags, paths, strict=True)}
    parameters = inspect.signature(function).parameters.values()
    keyword_only = [p.name for p in parameters if p.kind is p.KEYWORD_ONLY]
    expected = [*roles, "checkpoint"] if is_resumable(function) else list(roles)
    assert sorted(keyword_only) == sorted(expected)
    assert sorted(roles_of(function)) == sorted(roles)  # what `hpcpipe run` parses
    assert sorted(declaration(function).schema) == sorted(stage["params"])
    outs = out_paths(stage)
    assert outs <= set(roles.values())
    assert {path for path in roles.values() if path not in outs} <= set(stage["deps"])


def test_the_params_a_stage_gets_are_checked_by_its_schema_and_others_left_plain() -> None:
    section = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    decl = declaration(train)
    params = stage_params({"train": section, "extra": {"any": [1]}}, decl, "train", "p.yaml", {"wandb": None})
    assert params.train == TrainParams(**section)
    assert params.extra == {"any": [1]} and params.wandb is None
    with pytest.raises(ConfigError, match=r"^p\.yaml: train\.lr: expected a number > 0, got 'fast'$"):
        stage_params({"train": {**section, "lr": "fast"}}, decl, "train", "p.yaml")
    with pytest.raises(ConfigError, match=r"^stage train: its function reads params section\(s\) train, "):
        stage_params({"evaluate": {"batch_size": 10}}, decl, "train", "p.yaml")


# --------------------------------------------------------------------------- prepare
def test_prepare_writes_tensors_and_manifest(
    make_params: MakeParams, tmp_path: Path, capsys, cifar10_classes: tuple
) -> None:
    out = tmp_path / "data" / ".prepared.tmp-1"
    params = make_params(prepare={"train_size": 250, "test_size": 50})
    assert prepare(params, prepared=out) == {"train_images": 250, "test_images": 50}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "test.pt", "train.pt"]
    assert capsys.readouterr().out.splitlines() == [
        f"prepared 250 train + 50 test images, 10 classes, from imagefolder '{params.data.path}'"
    ]

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == "imagefolder"
    assert manifest["classes"] == list(cifar10_classes)
    assert manifest["train"] == {"count": 250, "per_class": dict.fromkeys(cifar10_classes, 25)}
    assert manifest["test"] == {"count": 50, "per_class": dict.fromkeys(cifar10_classes, 5)}
    assert len(manifest["mean"]) == len(manifest["std"]) == 3
    assert all(0.3 < m < 0.6 for m in manifest["mean"]) and all(0.15 < s < 0.35 for s in manifest["std"])

    train_blob = torch.load(out / "train.pt", weights_only=True)
    assert train_blob["images"].shape == (250, 3, 32, 32) and train_blob["images"].dtype == torch.uint8
    assert train_blob["labels"].dtype == torch.int64
    digest = hashlib.sha256()
    for split in ("train", "test"):
        blob = torch.load(out / f"{split}.pt", weights_only=True)
        digest.update(blob["images"].numpy().tobytes())
        digest.update(blob["labels"].numpy().tobytes())
    assert manifest["sha256"] == digest.hexdigest()


def test_prepare_twice_gives_byte_identical_files(make_params: MakeParams, tmp_path: Path) -> None:
    params = make_params(prepare={"train_size": 100, "test_size": 20, "seed": 3})
    first, second = tmp_path / "a" / ".prepared.tmp-11", tmp_path / "b" / "prepared"
    prepare(params, prepared=first)
    prepare(params, prepared=second)
    for name in ("train.pt", "test.pt", "manifest.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_prepare_with_a_bad_folder_raises_one_line(make_params: MakeParams, tmp_path: Path) -> None:
    params = make_params(data={"path": str(tmp_path / "empty")})
    with pytest.raises(DataSourceError) as err:
        prepare(params, prepared=tmp_path / "prepared")
    assert "\n" not in str(err.value) and "no train/ and test/ folders" in str(err.value)
    assert not (tmp_path / "prepared").exists()  # nothing half-written


def test_prepare_refuses_a_subset_larger_than_the_data(make_params: MakeParams, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"prepare\.train_size: 301 is more than the 300 train images"):
        prepare(make_params(prepare={"train_size": 301}), prepared=tmp_path / "prepared")


# --------------------------------------------------------------------------- train + evaluate
def _train(params, prepared: Path, out: Path) -> dict:
    return train(
        params,
        prepared=prepared,
        model=out / "models" / ".model.pt.tmp-7",
        metrics=out / "metrics" / ".train.json.tmp-7",
        history=out / "metrics" / ".history.csv.tmp-7",
    )


def test_train_then_evaluate_write_their_files(
    make_params: MakeParams, prepared_sample: Path, tmp_path: Path, capsys, cifar10_classes: tuple
) -> None:
    params = make_params(train={"epochs": 2, "batch_size": 32})
    metrics = _train(params, prepared_sample, tmp_path)

    assert set(metrics) == {"train_loss", "train_accuracy", "epochs", "images_per_s", "seconds"}
    assert metrics["epochs"] == 2 and 0 < metrics["train_accuracy"] <= 1 and metrics["images_per_s"] > 0
    assert json.loads((tmp_path / "metrics" / ".train.json.tmp-7").read_text()) == metrics
    lines = capsys.readouterr().out.splitlines()
    pattern = r"epoch [12]/2  loss \d+\.\d{4}  acc 0\.\d{4}  lr \d+\.\d{4}  \d+ img/s  \d+\.\d s"
    assert len(lines) == 2 and all(re.fullmatch(pattern, line) for line in lines), lines
    with (tmp_path / "metrics" / ".history.csv.tmp-7").open() as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "lr", "images_per_s"]
    assert [r["epoch"] for r in rows] == ["1", "2"] and float(rows[1]["loss"]) == pytest.approx(
        metrics["train_loss"], abs=1e-4
    )

    model_path = tmp_path / "models" / ".model.pt.tmp-7"
    checkpoint = torch.load(model_path, weights_only=True)
    assert checkpoint["model"] == "tutorial" and checkpoint["classes"] == list(cifar10_classes)
    assert len(checkpoint["mean"]) == len(checkpoint["std"]) == 3
    assert "fc3.weight" in checkpoint["state_dict"]

    confusion = tmp_path / "plots" / ".confusion.csv.tmp-7"
    result = evaluate(
        params,
        prepared=prepared_sample,
        model=model_path,
        metrics=tmp_path / "metrics" / ".evaluate.json.tmp-7",
        confusion=confusion,
    )
    assert set(result) == {"test_accuracy", "test_loss", "test_images", "per_class_accuracy"}
    assert result["test_images"] == 500 and list(result["per_class_accuracy"]) == list(cifar10_classes)
    assert result["test_accuracy"] > 0.15  # chance is 0.10
    assert json.loads((tmp_path / "metrics" / ".evaluate.json.tmp-7").read_text()) == result
    assert capsys.readouterr().out == f"test accuracy: {result['test_accuracy']:.4f} (500 images)\n"
    with confusion.open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["actual", "predicted"] and len(rows) == 501
    assert {r[0] for r in rows[1:]} == set(cifar10_classes)
    correct = sum(a == p for a, p in rows[1:])
    assert correct / 500 == pytest.approx(result["test_accuracy"], abs=1e-4)


def test_same_seed_gives_the_same_weights_on_cpu(make_params: MakeParams, tmp_path: Path) -> None:
    prepared = tmp_path / "prepared"
    prepare(make_params(prepare={"train_size": 200, "test_size": 20}), prepared=prepared)
    params = make_params(train={"epochs": 1, "batch_size": 32, "seed": 5})
    states = []
    for run in ("a", "b"):
        _train(params, prepared, tmp_path / run)
        states.append(
            torch.load(tmp_path / run / "models" / ".model.pt.tmp-7", weights_only=True)["state_dict"]
        )
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    other = make_params(train={"epochs": 1, "batch_size": 32, "seed": 6})
    _train(other, prepared, tmp_path / "c")
    state_c = torch.load(tmp_path / "c" / "models" / ".model.pt.tmp-7", weights_only=True)["state_dict"]
    assert not torch.equal(states[0]["fc3.weight"], state_c["fc3.weight"])
