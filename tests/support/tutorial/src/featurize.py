"""Stage `featurize`: squared inputs and standard scaling, fitted on the train split.

    python src/featurize.py data/split data/features

Reads its params from its own file, features.yaml (section `featurize`), as a
stage may in DVC. Writes train.npy and test.npy, the label still last.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml


def featurize(
    train: np.ndarray, test: np.ndarray, squares: bool, standardize: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Both splits as features + label; scaling statistics come from train only."""

    def expand(rows: np.ndarray) -> np.ndarray:
        x = rows[:, :-1]
        return np.column_stack([x, x**2]) if squares else x

    x_train, x_test = expand(train), expand(test)
    if standardize:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    return np.column_stack([x_train, train[:, -1]]), np.column_stack([x_test, test[:, -1]])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="split's folder (train.npy, test.npy)")
    parser.add_argument("output", type=Path, help="folder for the featurized train.npy and test.npy")
    args = parser.parse_args(argv)
    params = yaml.safe_load(Path("features.yaml").read_text())["featurize"]
    train, test = featurize(np.load(args.input / "train.npy"), np.load(args.input / "test.npy"), **params)
    args.output.mkdir(parents=True, exist_ok=True)
    np.save(args.output / "train.npy", train)
    np.save(args.output / "test.npy", test)
    print(f"featurize: {train.shape[1] - 1} features")


if __name__ == "__main__":
    main()
