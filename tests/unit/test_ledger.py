"""The ledger's fingerprint changes exactly when a job's outcome could."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from hpcpipe.config import load_params
from hpcpipe.launch.ledger import Entry, Ledger, fingerprint
from hpcpipe.stages import STAGES

REPO = Path(__file__).resolve().parents[2]
PATHS = {
    "prepared": "data/prepared",
    "model": "models/model.pt",
    "metrics": "metrics/train.json",
    "history": "metrics/train_history.csv",
}


def make_inputs(root: Path) -> None:
    (root / "data" / "prepared").mkdir(parents=True)
    (root / "data" / "prepared" / "train.pt").write_bytes(b"tensors")


def test_same_stage_params_and_inputs_give_the_same_fingerprint(tmp_path):
    make_inputs(tmp_path)
    params = load_params(REPO / "params.yaml")
    spec = STAGES["train"]
    assert fingerprint(spec, params, PATHS, tmp_path) == fingerprint(spec, params, PATHS, tmp_path)


def test_fingerprint_follows_the_params_slice_only(tmp_path):
    make_inputs(tmp_path)
    params = load_params(REPO / "params.yaml")
    spec = STAGES["train"]
    base = fingerprint(spec, params, PATHS, tmp_path)
    other_lr = dataclasses.replace(params, train=dataclasses.replace(params.train, lr=params.train.lr / 2))
    assert fingerprint(spec, other_lr, PATHS, tmp_path) != base
    other_eval = dataclasses.replace(params, evaluate=dataclasses.replace(params.evaluate, batch_size=7))
    assert fingerprint(spec, other_eval, PATHS, tmp_path) == base  # train does not read evaluate.*


def test_fingerprint_follows_the_inputs(tmp_path):
    make_inputs(tmp_path)
    params = load_params(REPO / "params.yaml")
    spec = STAGES["train"]
    base = fingerprint(spec, params, PATHS, tmp_path)
    data = tmp_path / "data" / "prepared" / "train.pt"
    data.write_bytes(b"other tensors")
    os.utime(data, ns=(1, 1))
    assert fingerprint(spec, params, PATHS, tmp_path) != base


def test_entries_round_trip_and_replace(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    first = Entry("train", "11", "slurm", "abc", "/jobs/train", "/o", "/e", 100.0)
    ledger.put(first)
    ledger.put(dataclasses.replace(first, job_id="12"))
    assert ledger.get("train").job_id == "12"
    assert ledger.get("prepare") is None
    assert [e.stage for e in ledger.entries()] == ["train"]
    assert (tmp_path / "ledger").stat().st_mode & 0o777 == 0o700
