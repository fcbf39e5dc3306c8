"""benchmarks/train_speed.py's CPU path on the committed sample, shrunk to seconds.

What is checked is that each part runs ours and the baseline side by side and
prints a ratio, and that the GPU part says why it is skipped; no timing is asserted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.project import RawData

pytestmark = pytest.mark.slow

SCRIPT = REPO / "benchmarks" / "train_speed.py"


def bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_parts_a_and_b_print_ours_baseline_and_ratio(project_sample: RawData, tmp_path: Path):
    cache = tmp_path / "tensors.pt"
    run = bench(
        "a", "b", "--data", str(project_sample.folder), "--cache", str(cache),
        "--limit", "200", "--steps", "2", "--models", "tutorial",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = [line for line in run.stdout.splitlines() if line[:2] in ("a.", "b.")]
    assert len(lines) == 2, run.stdout
    for line in lines:
        ours, base, ratio = re.search(
            r"ours ([\d,.]+) .* baseline ([\d,.]+) .* ratio ([\d.]+)x", line
        ).groups()
        assert float(ours.replace(",", "")) > 0 and float(base.replace(",", "")) > 0 and float(ratio) > 0
    assert cache.exists()


def test_part_c_trains_both_sides_for_the_budget_and_reports_accuracy(
    project_sample: RawData, tmp_path: Path
):
    run = bench(
        "c", "--data", str(project_sample.folder), "--cache", str(tmp_path / "tensors.pt"),
        "--limit", "200", "--budget", "3",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    ours = re.search(r"c\. ours: .*, (\d+) epochs, (\d+) s, test accuracy ([\d.]+)", run.stdout)
    base = re.search(r"c\. baseline: .*, ([\d.]+) epochs, (\d+) s, test accuracy ([\d.]+)", run.stdout)
    assert ours and base, run.stdout
    assert int(ours[1]) >= 1 and float(base[1]) > 0  # both trained
    assert int(base[2]) >= int(ours[2]) >= 0  # the baseline gets at least the time ours took
    assert 0 <= float(ours[3]) <= 1 and 0 <= float(base[3]) <= 1
    assert "c. accuracy in the same budget: ours" in run.stdout


def test_part_d_without_a_gpu_says_so_and_exits_0():
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: part d would run for real")
    run = bench("d")
    assert run.returncode == 0, run.stderr
    assert "d. skipped: no CUDA GPU" in run.stdout
