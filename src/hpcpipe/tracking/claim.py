"""A claim on one run folder, so that two ``hpcpipe sync`` at once never upload one run twice.

Two syncs (two terminals, two login nodes, a ``--watch`` beside a plain one) see the
same unsynced run; only the one that creates the claim file uploads it. ``flock`` is
not used: on Lustre and NFS it is often off, local to one client, or silently a no-op.
Creating a file with ``O_CREAT | O_EXCL`` is atomic on both (NFSv3 and later).

The claim holds its owner's host, pid and start time. A claim is stale, and taken
over, when its owner is a process of this host that no longer runs, or when it is
older than ``stale_after_s`` (an upload is killed long before: ``SYNC_TIMEOUT_S``),
or when it cannot be read (a sync killed while writing it). Taking over renames the
stale file aside first: of two syncs taking over at once only one rename succeeds,
and one that finds a fresh claim where it expected the stale one puts it back.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

CLAIM_FILE = "sync.claim"


@dataclass(frozen=True)
class Claim:
    path: Path
    token: str


def _owner_gone(info: dict, stale_after_s: float, now: float) -> bool:
    if now - float(info.get("time", 0)) > stale_after_s:
        return True
    if info.get("host") != socket.gethostname():
        return False  # another host's process: only its age tells
    try:
        os.kill(int(info["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError):
        return False
    return False


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _create(path: Path, token: str) -> bool:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "token": token}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(record))
    return True


def _is_stale(text: bytes, stale_after_s: float) -> bool:
    try:
        info = json.loads(text)
    except ValueError:  # torn: its writer died between create and write
        return True
    return not isinstance(info, dict) or _owner_gone(info, stale_after_s, time.time())


def take(folder: Path, stale_after_s: float, name: str = CLAIM_FILE) -> Claim | None:
    """Claim ``folder`` for this process; None while another live owner holds it. ``name``:
    the claim file's (another use of the same claim, as ``queue_cache``'s refresher)."""
    path = folder / name
    token = uuid.uuid4().hex
    if _create(path, token):
        return Claim(path, token)
    seen = _read(path)
    if seen is None:  # released in between: one more try
        return Claim(path, token) if _create(path, token) else None
    if not _is_stale(seen, stale_after_s):
        return None
    aside = folder / f".{name}.stale-{token}"
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another sync took it over first
        return None
    if _read(aside) != seen:  # a fresh claim replaced the stale one meanwhile: give it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink(missing_ok=True)
        return None
    aside.unlink(missing_ok=True)
    return Claim(path, token) if _create(path, token) else None


def release(claim: Claim) -> None:
    """Remove the claim if it is still this one (it may have been taken over as stale)."""
    try:
        info = json.loads(claim.path.read_bytes())
    except (OSError, ValueError):
        return
    if isinstance(info, dict) and info.get("token") == claim.token:
        claim.path.unlink(missing_ok=True)
