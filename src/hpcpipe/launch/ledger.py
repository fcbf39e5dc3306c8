"""The last job of each stage, on disk, so a launcher that died can be replaced.

An SSH drop or a SIGKILL ends the launcher but not its Slurm job. The next
``dvc repro`` (or ``hpcpipe run STAGE``) reads the ledger: if the stage's last
job is still queued or running and was submitted for the same fingerprint
(stage, its params slice, its inputs and code), the launcher waits for that job
instead of submitting a second one; if the fingerprint changed, the stale job is
cancelled first. ``hpcpipe status``, ``logs`` and ``cancel`` read it too.

One small JSON file per stage under the job directory, replaced atomically.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcpipe.config import Params
from hpcpipe.stages import StageSpec


@dataclass(frozen=True)
class Entry:
    stage: str
    job_id: str
    executor: str  # slurm | local | inline
    fingerprint: str
    folder: str  # the submitit job folder (absolute)
    stdout: str
    stderr: str
    submitted_at: float

    @property
    def age_s(self) -> float:
        return time.time() - self.submitted_at


def _path_signature(path: Path) -> list[list[object]]:
    """Size and mtime of every file under ``path``: cheap, and changes whenever DVC rewrites it."""
    if path.is_file():
        stat = path.stat()
        return [[str(path), stat.st_size, stat.st_mtime_ns]]
    if not path.is_dir():
        return [[str(path), None, None]]
    rows: list[list[object]] = []
    for folder, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            file = Path(folder) / name
            stat = file.stat()
            rows.append([str(file), stat.st_size, stat.st_mtime_ns])
    return rows


def fingerprint(spec: StageSpec, params: Params, paths: Mapping[str, str], root: Path) -> str:
    """What a job's outcome depends on: the stage, its params slice, its inputs and its code."""
    module = spec.target.partition(":")[0]
    found = importlib.util.find_spec(module)  # locates the stage's source without importing it (no torch)
    code = [Path(found.origin)] if found and found.origin else []
    record = {
        "stage": spec.name,
        "target": spec.target,
        "params": {s: dataclasses.asdict(getattr(params, s)) for s in spec.sections},
        "paths": dict(sorted(paths.items())),
        "inputs": [_path_signature(root / paths[role]) for role in spec.inputs],
        "code": [_path_signature(p) for p in code],
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Ledger:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, stage: str) -> Path:
        return self.folder / f"{stage}.json"

    def get(self, stage: str) -> Entry | None:
        try:
            return Entry(**json.loads(self._file(stage).read_text()))
        except (FileNotFoundError, json.JSONDecodeError, TypeError):
            return None

    def put(self, entry: Entry) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        target = self._file(entry.stage)
        tmp = target.with_name(f".{target.name}.{os.getpid()}")
        tmp.write_text(json.dumps(dataclasses.asdict(entry), indent=1))
        os.replace(tmp, target)

    def entries(self) -> Iterator[Entry]:
        for file in sorted(self.folder.glob("*.json")):
            entry = self.get(file.stem)
            if entry is not None:
                yield entry
