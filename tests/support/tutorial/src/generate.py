"""Stage `generate`: a synthetic two-class data set from a seed, no download.

    python src/generate.py data/raw.npy

Each row holds `features` standard-normal inputs, then the label (0.0 or 1.0). The
label is whether a fixed score, a random linear part plus a ring in the first two
inputs, plus noise, is positive: a linear model needs the squared inputs that
`featurize` adds to find the ring. Params: `generate` in params.yaml.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import yaml


def generate(seed: int, samples: int, features: int, noise: float) -> np.ndarray:
    """`samples` rows of `features` inputs and a last column of labels."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((samples, features))
    direction = rng.standard_normal(features)
    ring = x[:, 0] ** 2 + x[:, 1] ** 2 - 1.4
    score = (x * direction).sum(axis=1) / np.sqrt(features) + ring
    label = (score + noise * rng.standard_normal(samples) > 0).astype(np.float64)
    return np.column_stack([x, label])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", type=Path, help=".npy file: one row per sample, the label last")
    args = parser.parse_args(argv)
    params = yaml.safe_load(Path("params.yaml").read_text())["generate"]
    data = generate(**params)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    np.save(args.output, data)
    print(f"generate: {len(data)} samples, {data.shape[1] - 1} features, {data[:, -1].mean():.0%} positive")


if __name__ == "__main__":
    main()
