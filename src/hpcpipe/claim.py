"""A claim file: one process at a time does a thing, on any shared filesystem.

Two launchers of one stage can start together (two terminals, two login nodes, a
``--detach`` driver beside a foreground ``dvc repro``), and so can two ``hpcpipe sync``
that see the same unsynced run. Each would submit the job, or upload the run, twice.
So the launcher holds a claim on the stage from reading the ledger until its job is in
the ledger, and a sync holds one on a run folder while it uploads it.

``flock``/``fcntl`` locks are not used: on Lustre they depend on mount options (``-o
flock``, often ``localflock``, which does not lock across login nodes), on NFS on the
lock daemon. Creating a file with ``O_CREAT | O_EXCL`` is atomic on both (NFSv3 and
later, and Lustre's metadata server), so the claim is such a file. It holds who made it
(host, pid, time, and a token of its own), so that one left behind can be taken over:

- on this host, when its process is gone (see ``liveness``; a pid reused since does not
  count as the owner);
- on any host, once its record is older than the caller's ``stale_after_s`` (longer than
  the claimed work may take, plus the clock skew allowed between login nodes);
- when it cannot be read once its file is ``TORN_S`` old: its writer died between
  creating it and writing it (a younger one may be being written right now).

Taking over renames the stale file aside first: of two processes taking one over, only
one rename succeeds, and one that finds a fresh claim where it judged the stale one puts
it back. Releasing removes the claim only while it is still this one.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hpcpipe.liveness import pid_alive

TORN_S = 10.0  # a claim is written right after it is created: unreadable this long, its writer died
POLL_S = 0.2  # how often a waiting ``claimed`` tries again


@dataclass(frozen=True)
class Claim:
    path: Path
    token: str


def _parse(text: bytes) -> dict[str, object]:
    try:
        found = json.loads(text)
    except ValueError:  # being written right now, or torn
        return {}
    return found if isinstance(found, dict) else {}


def holder(path: Path) -> dict[str, object] | None:
    """The record of the claim at ``path``: None when there is none, {} when it cannot be read."""
    try:
        return _parse(path.read_bytes())
    except FileNotFoundError:
        return None
    except OSError:
        return {}


def _judge(record: dict[str, object], mtime: float, stale_after_s: float, now: float) -> bool:
    if not record:  # unreadable: judged by its file's age alone
        return now - mtime > TORN_S
    written = record.get("time")
    written = float(written) if isinstance(written, (int, float)) else mtime
    if now - written > stale_after_s:
        return True
    return record.get("host") == socket.gethostname() and not pid_alive(record.get("pid"), written)


def is_stale(path: Path, stale_after_s: float, now: float | None = None) -> bool:
    """Whether the claim at ``path`` was left by a process that will never release it."""
    try:
        judged, mtime = path.read_bytes(), path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile
    return _judge(_parse(judged), mtime, stale_after_s, now or time.time())


def _create(path: Path, token: str) -> bool:
    record = {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time(), "token": token}
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(record))
    return True


def _take_over(path: Path, judged: bytes, token: str) -> None:
    """Remove the stale claim at ``path``, and only it (whose bytes were ``judged``)."""
    aside = path.with_name(f".{path.name}.stale-{token}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:  # another process took it over first
        return
    try:
        if aside.read_bytes() != judged:  # a fresh claim replaced the stale one: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
    finally:
        aside.unlink(missing_ok=True)


def take(path: Path, stale_after_s: float) -> Claim | None:
    """Claim ``path`` for this process; None while another live process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    token = uuid.uuid4().hex
    if _create(path, token):
        return Claim(path, token)
    try:
        judged, mtime = path.read_bytes(), path.stat().st_mtime
    except FileNotFoundError:  # released in between: one more try
        return Claim(path, token) if _create(path, token) else None
    if not _judge(_parse(judged), mtime, stale_after_s, time.time()):
        return None
    _take_over(path, judged, token)
    return Claim(path, token) if _create(path, token) else None


def release(claim: Claim) -> None:
    """Remove the claim if it is still this one (it may have been taken over as stale)."""
    if (holder(claim.path) or {}).get("token") == claim.token:
        claim.path.unlink(missing_ok=True)


@contextlib.contextmanager
def claimed(
    path: Path, stale_after_s: float, on_wait: Callable[[dict[str, object]], None] | None = None
) -> Iterator[Claim]:
    """Hold the claim ``path`` for the block; wait while another live process holds it.

    ``on_wait`` is called once, with the holder's record, when this process has to wait.
    """
    told = False
    while (held := take(path, stale_after_s)) is None:
        if not told and on_wait is not None:
            on_wait(holder(path) or {})
            told = True
        time.sleep(POLL_S)
    try:
        yield held
    finally:
        release(held)
