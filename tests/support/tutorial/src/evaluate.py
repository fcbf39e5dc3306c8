"""Stage `evaluate` (one per split, a `foreach` in dvc.yaml): metrics and an ROC curve.

    python src/evaluate.py models/model.json data/features/test.npy eval/test

Writes metrics.json (accuracy at `evaluate.threshold`, log loss, ROC AUC) and
roc.csv (fpr, tpr per threshold) into the output folder; dvc.yaml declares them
as metrics and plots, kept in git rather than the DVC cache.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import yaml

ROC_THRESHOLDS = np.linspace(0.0, 1.0, 21)


def predict(model: dict, x: np.ndarray) -> np.ndarray:
    """P(label 1) per row: the same formula as train.py's."""
    z = (x * np.array(model["weights"])).sum(axis=1) + model["bias"]
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def roc_auc(p: np.ndarray, y: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counted half (Mann-Whitney U)."""
    pos, neg = p[y == 1], p[y == 0]
    if not len(pos) or not len(neg):
        return float("nan")
    above = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(above / (len(pos) * len(neg)))


def evaluate(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float | int]:
    clipped = np.clip(p, 1e-12, 1 - 1e-12)
    return {
        "samples": len(y),
        "accuracy": float(((p >= threshold) == (y == 1)).mean()),
        "log_loss": float(-(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)).mean()),
        "roc_auc": roc_auc(p, y),
    }


def roc_rows(p: np.ndarray, y: np.ndarray) -> list[tuple[float, float, float]]:
    """(threshold, fpr, tpr) at each of ROC_THRESHOLDS."""
    pos, neg = max((y == 1).sum(), 1), max((y == 0).sum(), 1)
    rows = []
    for t in ROC_THRESHOLDS:
        hit = p >= t
        rows.append((float(t), float((hit & (y == 0)).sum() / neg), float((hit & (y == 1)).sum() / pos)))
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="train's model.json")
    parser.add_argument("data", type=Path, help="one featurized split (.npy)")
    parser.add_argument("output", type=Path, help="folder for metrics.json and roc.csv")
    args = parser.parse_args(argv)
    params = yaml.safe_load(Path("params.yaml").read_text())["evaluate"]
    data = np.load(args.data)
    x, y = data[:, :-1], data[:, -1]
    p = predict(json.loads(args.model.read_text()), x)
    metrics = evaluate(p, y, params["threshold"])
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    lines = ["threshold,fpr,tpr"] + [f"{t:.2f},{fpr:.6f},{tpr:.6f}" for t, fpr, tpr in roc_rows(p, y)]
    (args.output / "roc.csv").write_text("\n".join(lines) + "\n")
    print(f"evaluate {args.data.stem}: accuracy {metrics['accuracy']:.3f}, ROC AUC {metrics['roc_auc']:.3f}")


if __name__ == "__main__":
    main()
