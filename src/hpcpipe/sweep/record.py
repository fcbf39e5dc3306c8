"""A sweep's record: ``.hpcpipe/sweeps/NAME/sweep.json``, what status and resume read back.

Written only by login-node commands (``hpcpipe sweep`` and its ``status``/``resume``),
each write whole and atomic (temp file + rename), so a Ctrl-C never leaves half a
record. Array tasks never write it: they only run their point.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcpipe.files import write_json_atomically
from hpcpipe.validation import ConfigError

SWEEPS_DIR = Path(".hpcpipe") / "sweeps"
RECORD_FILE = "sweep.json"
CLAIM_FILE = "claim.json"  # who is setting the sweep up; the folder itself is the claim
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")


@dataclass
class Attempt:
    """One submission of a point: a Slurm array task ("123_4") or a local job (its pid)."""

    job_id: str
    executor: str
    folder: str  # submitit's folder: logs and result pickles
    submitted_at: float


@dataclass
class Point:
    number: int  # 1-based, as ``validate_points`` numbers them in messages
    name: str  # hpcpipe.sweep.grid.point_name
    overrides: dict[str, Any]
    workspace: str  # relative to the project root
    attempts: list[Attempt] = field(default_factory=list)
    state: str = "NEW"  # the last state seen; final ones are not asked again
    detail: str = ""  # the last state line shown (state, reason, node), to print changes only
    experiment: str = ""  # the DVC experiment, once imported
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""  # why it failed or could not be imported, one line


@dataclass
class Sweep:
    name: str
    profile: str
    base_commit: str
    overrides: list[str]  # the -S strings, as typed
    affected: list[str]  # stages each point runs
    checkout: list[str]  # what each workspace links from the cache
    metrics: list[str]  # metrics files to show per point
    parallelism: int
    created_at: float = field(default_factory=time.time)
    points: list[Point] = field(default_factory=list)
    tree: str = ""  # the snapshot the points were made from (HEAD + uncommitted changes)
    cached_outs: list[str] = field(default_factory=list)  # affected stages' outs in DVC's cache

    def experiment_name(self, point: Point) -> str:
        return f"{self.name}-{point.name}"


def check_name(name: str) -> str:
    """A sweep name is a folder, a W&B group and the prefix of git refs: keep it plain."""
    if not _NAME.match(name) or ".." in name or name.endswith(".lock"):
        raise ConfigError(
            f"sweep name {name!r}: use up to 40 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def default_name(now: float | None = None) -> str:
    return time.strftime("sweep-%Y%m%d-%H%M%S", time.localtime(now))


def sweep_dir(root: Path, name: str) -> Path:
    return root / SWEEPS_DIR / name


def claim(root: Path, name: str) -> None:
    """Take the name: make the sweep's folder, which fails if another sweep has it.

    ``mkdir`` is atomic on every filesystem a login node shares (Lustre, NFS, GPFS),
    where ``flock`` may not be: of two ``hpcpipe sweep --name X`` at once, on one login
    node or two, exactly one goes on; the other stops before making anything.
    """
    folder = sweep_dir(root, name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir()
    except FileExistsError:
        if (folder / RECORD_FILE).exists():
            raise ConfigError(
                f"sweep {name!r} exists; pick another --name, or see: hpcpipe sweep status {name}"
            ) from None
        try:
            holder = json.loads((folder / CLAIM_FILE).read_text())
            who = f"pid {holder['pid']} on {holder['host']}, since {time.ctime(holder['time'])}"
        except (OSError, ValueError, KeyError, TypeError):
            who = "another hpcpipe sweep"
        raise ConfigError(
            f"sweep {name!r} is being set up by {who}; pick another --name "
            f"(if that process is gone, remove {folder} first)"
        ) from None
    write_json_atomically(
        folder / CLAIM_FILE, {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    )


def save(root: Path, sweep: Sweep) -> None:
    write_json_atomically(sweep_dir(root, sweep.name) / RECORD_FILE, dataclasses.asdict(sweep))


def load(root: Path, name: str) -> Sweep:
    path = sweep_dir(root, check_name(name)) / RECORD_FILE
    if not path.exists():
        known = sorted(p.parent.name for p in (root / SWEEPS_DIR).glob(f"*/{RECORD_FILE}"))
        raise ConfigError(
            f"no sweep named {name!r} in {root / SWEEPS_DIR}; known: {', '.join(known) or 'none'}"
        )
    raw = json.loads(path.read_text())
    points = [
        Point(**{**p, "attempts": [Attempt(**a) for a in p.get("attempts", [])]})
        for p in raw.pop("points", [])
    ]
    return Sweep(**raw, points=points)
