"""The last job of each stage, on disk, so a launcher that died can be replaced.

An SSH drop or a SIGKILL ends the launcher but not its Slurm job. The next
``dvc repro`` (or ``hpcpipe run STAGE``) reads the ledger: if the stage's last
job is still queued or running and was submitted for the same fingerprint
(the stage's content as DVC sees it: see ``dvc_stage``) and the same
resources, the launcher waits for that job
instead of submitting a second one; if the fingerprint changed, the stale job is
cancelled first; if it finished while no launcher watched, it is adopted (see
``completion``). ``hpcpipe status``, ``logs`` and ``cancel`` read it too.

One small JSON file per stage under the job directory, replaced atomically.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcpipe.files import write_json_atomically


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
    resources: str = ""  # digest of what the scheduler was asked for (see submission.resources_digest)
    reported: bool = False  # a launcher told DVC how it ended: never adopted again (see completion)

    @property
    def age_s(self) -> float:
        return time.time() - self.submitted_at


def file_safe(stage: str) -> str:
    """A stage address as one file name: ``sub/dvc.yaml:train`` -> ``sub_dvc.yaml_train``."""
    return stage.replace("/", "_").replace(":", "_")


class Ledger:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _file(self, stage: str) -> Path:
        return self.folder / f"{file_safe(stage)}.json"

    def get(self, stage: str) -> Entry | None:
        return self._read(self._file(stage))

    @staticmethod
    def _read(file: Path) -> Entry | None:
        try:
            return Entry(**json.loads(file.read_text()))
        except (OSError, ValueError, TypeError):  # missing, unreadable or torn: no entry
            return None

    def claim_path(self, stage: str) -> Path:
        """Held by the launcher deciding what to submit for ``stage`` (see ``claim``)."""
        return self.folder / f"{file_safe(stage)}.claim"

    def mark_reported(self, stage: str, job_id: str) -> None:
        """The launcher has told DVC how ``job_id`` ended (unless a newer job replaced it)."""
        entry = self.get(stage)
        if entry is not None and entry.job_id == job_id and not entry.reported:
            self.put(dataclasses.replace(entry, reported=True))

    def put(self, entry: Entry) -> None:
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_json_atomically(self._file(entry.stage), dataclasses.asdict(entry))

    def entries(self) -> Iterator[Entry]:
        for file in sorted(self.folder.glob("*.json")):
            entry = self._read(file)
            if entry is not None:
                yield entry
