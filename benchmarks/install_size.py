"""What `pip install hpcpipe` costs, the toolkit alone against the CIFAR-10 example's extra.

    python benchmarks/install_size.py [--keep DIR]

Both variants in the same run, one after the other, each into a fresh venv without
system site packages (what a user whose pipeline needs no torch gets, and what the
example needs): ``pip install REPO`` and ``pip install 'REPO[cifar10]'``, from this
checkout, with pip's configured index (no cache of earlier runs: ``--no-cache-dir``).
Measured per variant: the wall time of that pip command, the venv's size on disk
after it minus the empty venv's, and the number of distributions installed. Prints
both, their ratio (toolkit / extra), and a Markdown block for benchmarks/RESULTS.md.
The extra's torch is whatever the index resolves to (on a cluster index: the CUDA
build and its nvidia-* libraries); on a cluster with ``module load pytorch``,
env/common.sh reuses the module's torch instead, so the toolkit's numbers are what
it adds there. Takes a few minutes and a few GB in a temp folder (--keep: here).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = (("toolkit", ""), ("cifar10 extra", "[cifar10]"))


@dataclass(frozen=True)
class Install:
    name: str
    seconds: float
    size_bytes: int
    distributions: int
    has_torch: bool


def tree_size(root: Path) -> int:
    """Bytes on disk of the files under root (links not followed, each inode counted once)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            stat = os.lstat(os.path.join(folder, name))
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_blocks * 512
    return total


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def install(name: str, extra: str, workdir: Path) -> Install:
    venv = workdir / name.replace(" ", "-")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    empty = tree_size(venv)
    started = time.perf_counter()
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-cache-dir",
         "--disable-pip-version-check", f"{REPO}{extra}"],
        capture_output=True, text=True,
    )  # fmt: skip
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"pip install {REPO}{extra} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    packages = site_packages(venv)
    dists = list(packages.glob("*.dist-info"))
    return Install(
        name,
        seconds,
        tree_size(venv) - empty,
        len(dists),
        any(d.name.lower().startswith("torch-") for d in dists),
    )


def table(results: list[Install]) -> str:
    toolkit, example = results
    rows = [
        "| variant | pip install (s) | size on disk (MB) | distributions | torch |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in results:
        rows.append(
            f"| `pip install hpcpipe{'' if r is toolkit else '[cifar10]'}` ({r.name}) | {r.seconds:.1f} "
            f"| {r.size_bytes / 1e6:,.0f} | {r.distributions} | {'yes' if r.has_torch else 'no'} |"
        )
    rows.append(
        f"| ratio toolkit / extra | {toolkit.seconds / example.seconds:.2f} "
        f"| {toolkit.size_bytes / example.size_bytes:.3f} "
        f"| {toolkit.distributions / example.distributions:.2f} | |"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--keep", type=Path, help="make the venvs here and leave them (default: a temp folder)"
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hpcpipe-install-") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        results = [install(name, extra, workdir) for name, extra in VARIANTS]
    for r in results:
        print(
            f"{r.name}: {r.seconds:.1f} s, {r.size_bytes / 1e6:,.0f} MB, {r.distributions} distributions, "
            f"torch {'installed' if r.has_torch else 'not installed'}"
        )
    toolkit, example = results
    print(
        f"ratio toolkit / extra: time {toolkit.seconds / example.seconds:.2f}, "
        f"size {toolkit.size_bytes / example.size_bytes:.3f}"
    )
    print()
    print(
        f"## install_size ({time.strftime('%Y-%m-%d')}, {platform.python_version()}, {os.cpu_count()} CPUs)"
    )
    print("command: python benchmarks/install_size.py")
    print()
    print(table(results))
    return 0 if not toolkit.has_torch and example.has_torch else 1


if __name__ == "__main__":
    sys.exit(main())
