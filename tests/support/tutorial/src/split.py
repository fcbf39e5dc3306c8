"""Stage `split`: shuffle the samples and split them into train and test.

    python src/split.py data/raw.npy data/split

Writes train.npy and test.npy into the output folder. Params: `split` in params.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml


def split(data: np.ndarray, seed: int, test_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) rows; the first `test_ratio` of a seeded shuffle is the test split."""
    if not 0.0 < test_ratio < 1.0:
        raise ValueError(f"split.test_ratio must be between 0 and 1, not {test_ratio}")
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = round(len(data) * test_ratio)
    return data[order[n_test:]], data[order[:n_test]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="generate's .npy file")
    parser.add_argument("output", type=Path, help="folder for train.npy and test.npy")
    args = parser.parse_args(argv)
    params = yaml.safe_load(Path("params.yaml").read_text())["split"]
    train, test = split(np.load(args.input), **params)
    args.output.mkdir(parents=True, exist_ok=True)
    np.save(args.output / "train.npy", train)
    np.save(args.output / "test.npy", test)
    print(f"split: {len(train)} train, {len(test)} test")


if __name__ == "__main__":
    main()
