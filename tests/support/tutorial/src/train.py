"""Stage `train`: logistic regression by mini-batch gradient descent, in numpy.

    python src/train.py data/features/train.npy models/model.json --epochs 8

Writes the model as JSON: weights, bias and the loss after each epoch. Params:
`train` in params.yaml; the number of epochs comes on the command line
(`--epochs ${train.epochs}` in dvc.yaml).

Checkpoints: when $HPCPIPE_CHECKPOINT_DIR is set (hpcpipe sets it to a folder that
survives a Slurm requeue of the job), the whole state is saved there as state.json
after every epoch, and a restarted run resumes after the last saved epoch. Without
the variable it trains from scratch. The model is bitwise the one of an
uninterrupted run: each epoch's shuffle comes from (seed, epoch) rather than from a
generator carried across epochs, the sums are numpy's own rather than BLAS's (whose
order may change with the thread count), and JSON keeps floats exactly.

W&B: with `wandb.enabled: true` in params.yaml each epoch's loss goes to a run
opened by a plain `wandb.init()`; project, mode and folder come from the
environment (hpcpipe sets them on the job).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

CHECKPOINT = "state.json"
CONFIG_KEYS = ("seed", "lr", "l2", "batch_size")  # what a checkpoint must match to be resumed


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warning for large |z|, unlike 1 / (1 + exp(-z))


def predict(x: np.ndarray, weights: np.ndarray, bias: float) -> np.ndarray:
    """P(label 1) per row."""
    return sigmoid((x * weights).sum(axis=1) + bias)


def log_loss(x: np.ndarray, y: np.ndarray, weights: np.ndarray, bias: float, l2: float) -> float:
    p = np.clip(predict(x, weights, bias), 1e-12, 1 - 1e-12)
    data_loss = -(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()
    return float(data_loss + 0.5 * l2 * (weights * weights).sum())


def train_epoch(
    x: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    bias: float,
    epoch: int,
    *,
    seed: int,
    lr: float,
    l2: float,
    batch_size: int,
) -> tuple[np.ndarray, float]:
    """One pass over the data in shuffled mini-batches; returns the new (weights, bias)."""
    order = np.random.default_rng([seed, epoch]).permutation(len(y))
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        residual = predict(x[rows], weights, bias) - y[rows]
        grad_w = (x[rows] * residual[:, None]).sum(axis=0) / len(rows) + l2 * weights
        weights = weights - lr * grad_w
        bias = float(bias - lr * residual.sum() / len(rows))
    return weights, bias


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Whole or not at all: a job killed mid-write leaves the previous file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(partial, path)


def resumable(path: Path | None, config: dict[str, Any], epochs: int) -> dict[str, Any] | None:
    """The checkpoint's state if it is one of this training (same config, not past `epochs`)."""
    if path is None or not path.exists():
        return None
    state = json.loads(path.read_text())
    if state["config"] != config or state["epoch"] > epochs:
        return None
    return state


def start_wandb(params: dict[str, Any]):
    import wandb  # only when enabled: the stage runs without wandb installed

    return wandb.init(config=params["train"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="featurize's train.npy")
    parser.add_argument("output", type=Path, help="model file (.json)")
    parser.add_argument("--epochs", type=int, required=True)
    args = parser.parse_args(argv)
    params = yaml.safe_load(Path("params.yaml").read_text())
    train = params["train"]
    data = np.load(args.input)
    x, y = data[:, :-1], data[:, -1]
    config = {key: train[key] for key in CONFIG_KEYS} | {"samples": len(y), "features": x.shape[1]}

    folder = os.environ.get("HPCPIPE_CHECKPOINT_DIR")
    checkpoint = Path(folder) / CHECKPOINT if folder else None
    state = resumable(checkpoint, config, args.epochs)
    if state:
        print(f"train: resuming after epoch {state['epoch']} from {checkpoint}", flush=True)
    else:
        state = {"config": config, "epoch": 0, "weights": [0.0] * x.shape[1], "bias": 0.0, "loss": []}
    run = start_wandb(params) if params.get("wandb", {}).get("enabled") else None

    weights, bias = np.array(state["weights"]), state["bias"]
    for epoch in range(state["epoch"] + 1, args.epochs + 1):
        time.sleep(train["epoch_seconds"])
        weights, bias = train_epoch(x, y, weights, bias, epoch, **{k: train[k] for k in CONFIG_KEYS})
        loss = log_loss(x, y, weights, bias, train["l2"])
        state = state | {"epoch": epoch, "weights": weights.tolist(), "bias": bias}
        state["loss"] = [*state["loss"], loss]
        if checkpoint:
            write_json(checkpoint, state)
        print(f"epoch {epoch}/{args.epochs}: loss {loss:.4f}", flush=True)
        if run:
            run.log({"epoch": epoch, "loss": loss})

    write_json(args.output, {"weights": state["weights"], "bias": state["bias"], "loss": state["loss"]})
    if run:
        run.finish()


if __name__ == "__main__":
    main()
