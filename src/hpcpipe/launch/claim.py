"""One launcher at a time decides what to submit for a stage, on any shared filesystem.

Two launchers of one stage can start together: two terminals, two login nodes, a
``--detach`` driver beside a foreground ``dvc repro``. Each reads the ledger, finds no
live job, and submits: two jobs train the same model and race to publish. The launcher
therefore holds a claim on the stage from reading the ledger until its job is in the
ledger; the second one waits for the claim, then finds that job and waits on it.

``flock``/``fcntl`` locks are not used: on Lustre they depend on mount options
(``-o flock``, often ``localflock``, which does not lock across login nodes) and on NFS
on the lock daemon. Creating a file with ``O_CREAT | O_EXCL`` is atomic on both (NFSv3+
and Lustre's metadata server), so the claim is such a file, holding who made it (host,
pid, time) so that a claim left by a dead launcher can be taken over: on the same host
when its process is gone, on another host once it is older than ``STALE_S`` (a claim is
held for one sbatch, seconds; a clock skew of a minute between login nodes is allowed for).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

STALE_S = 120.0
POLL_S = 0.2


def _holder(path: Path) -> dict[str, object] | None:
    try:
        found = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written right now, or garbage: judge by its age
        return {}
    return found if isinstance(found, dict) else {}


def _process_gone(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # someone else's process: alive
        return False
    return False


def is_stale(path: Path, now: float | None = None) -> bool:
    """Whether the claim at ``path`` was left by a launcher that will never release it."""
    holder = _holder(path)
    if holder is None:
        return False  # released meanwhile
    try:
        age = (now or time.time()) - path.stat().st_mtime
    except FileNotFoundError:
        return False
    if holder.get("host") == socket.gethostname() and _process_gone(holder.get("pid")):
        return True
    return age > STALE_S


def _take_over(path: Path) -> None:
    """Remove the stale claim at ``path``, and only it: of two launchers taking over one
    stale claim, the slower one may find the faster one's fresh claim there by then, so the
    file is moved aside first and put back if it is not the stale one."""
    try:
        judged = path.read_bytes()
    except FileNotFoundError:
        return
    aside = path.with_name(f"{path.name}.stale-{socket.gethostname()}-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if aside.read_bytes() != judged:  # a fresh claim: give it back (link fails if one exists)
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    aside.unlink()


@contextlib.contextmanager
def claimed(path: Path, on_wait: Callable[[dict[str, object]], None] | None = None) -> Iterator[None]:
    """Hold the claim file ``path`` for the block; wait while another live launcher holds it.

    ``on_wait`` is called once with the holder's record when this launcher has to wait.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    record = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()})
    told = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            if is_stale(path):
                _take_over(path)
                continue
            if not told and on_wait is not None:
                on_wait(_holder(path) or {})
                told = True
            time.sleep(POLL_S)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(record)
        break
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
