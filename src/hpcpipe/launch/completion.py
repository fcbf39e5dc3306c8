"""What a finished job leaves behind so that a later launcher can adopt it.

An SSH drop kills ``dvc repro`` and its launcher, not the Slurm job: the job runs on,
completes and publishes. The next ``dvc repro`` runs the stage again (dvc.lock was never
written), and without this it would submit the whole training again. Instead, the job
side stamps its job folder once its outputs are in place (``stamp``): the fingerprint it
ran for and the signature (inode, mtime, size of every file) of the outputs as it left
them. The launcher adopts the job (``adoptable``) only when its ledger entry was never
reported to DVC, the stamp's fingerprint is the stage's now, and the outputs are still
exactly as the job left them. Anything else (the user touched an output, another run
replaced it, the stage changed) submits as usual.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcpipe.files import signature, write_json_atomically
from hpcpipe.launch.ledger import Entry
from hpcpipe.launch.publish import Publisher


def stamp_path(folder: Path, job_id: str) -> Path:
    return folder / f"{job_id}_published.json"


def outputs_signature(root: Path, outs: Sequence[str]) -> str:
    return signature(root, outs)


def stamp(workdir: str | Path, outs: Sequence[str], fingerprint: str) -> None:
    """Called by the job side after its outputs are in place (not in an inline run, which has
    no job folder: the launcher that ran it is the one reporting it)."""
    try:
        import submitit

        env = submitit.JobEnvironment()
        folder, job_id = Path(env.paths.folder), str(env.job_id)
    except Exception:  # not inside a submitit job
        return
    record = {"fingerprint": fingerprint, "outputs": outputs_signature(Path(workdir), outs)}
    write_json_atomically(stamp_path(folder, job_id), record)


def adoptable(entry: Entry, fingerprint: str, root: Path, outs: Sequence[str]) -> bool:
    """Whether ``entry``'s job finished this very stage and nobody has touched its outputs."""
    if entry.reported or entry.fingerprint != fingerprint:
        return False
    if Publisher(root, entry.stage).journal.exists():  # a publication cut short: not its outputs
        return False
    try:
        record: Any = json.loads(stamp_path(Path(entry.folder), entry.job_id).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(record, dict) or record.get("fingerprint") != fingerprint:
        return False
    return all(os.path.exists(root / out) for out in outs) and record.get("outputs") == outputs_signature(
        root, outs
    )
