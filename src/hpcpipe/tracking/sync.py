"""``hpcpipe sync``: upload every finished offline run of the project, once.

Run on a machine that reaches the W&B server (a login node), after jobs finished or
with ``--watch`` beside them. For each run folder under ``wandb/`` (see ``run``):

- live (its ``live.json`` names a process or Slurm job still running): skipped, so
  a run is never uploaded while a job still writes it; the next pass takes it;
- already synced (``synced.json`` names its newest segment): nothing to do;
- otherwise its newest segment (which holds the whole history, replayed across
  requeues) goes through ``wandb sync DIR``; ``synced.json`` is written only after
  that exits 0, so a failed upload is retried next time and a good one never repeats.

Uploads run N at a time; one failing does not stop the others. The key comes from
the environment or ~/.netrc, as for any wandb command; nothing here reads or writes it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from hpcpipe.tracking.run import LIVE_MARKER, SYNCED_MARKER, segments

SYNC_COMMAND = ("wandb", "sync")
SYNC_TIMEOUT_S = 1800


@dataclass(frozen=True)
class RunFolder:
    folder: Path
    newest: Path  # the offline run folder to upload
    live: bool
    synced: bool

    @property
    def name(self) -> str:
        return self.folder.name


@dataclass
class Tally:
    synced: int = 0
    failed: int = 0
    skipped: int = 0

    def line(self) -> str:
        return f"synced {self.synced}, failed {self.failed}, skipped {self.skipped}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split()[2] == "Z")


def is_live(marker: Path) -> bool:
    """Whether the job that wrote ``marker`` may still be writing the run.

    Same host: its pid. Another host: its Slurm job's state. When neither can tell,
    assume live: a late upload is harmless, an upload of a half-written run is not.
    """
    try:
        info = json.loads(marker.read_text())
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return True
    if info.get("host") == socket.gethostname() and info.get("pid"):
        return _pid_alive(int(info["pid"]))
    if info.get("slurm_job_id"):
        from hpcpipe.launch import slurm_state

        state = slurm_state.query(str(info["slurm_job_id"]))
        return not state.final
    return True


def _synced_segment(folder: Path) -> str | None:
    try:
        return json.loads((folder / SYNCED_MARKER).read_text()).get("segment")
    except (OSError, ValueError):
        return None


def find_runs(roots: Sequence[Path]) -> list[RunFolder]:
    """Every run folder under ``roots`` (the project's ``wandb/``, and each sweep point's)
    with an offline segment."""
    found = []
    for folder in sorted(p for root in roots for p in root.glob("*") if p.is_dir()):
        offline = segments(folder)
        if not offline:
            continue
        newest = offline[-1]
        synced = _synced_segment(folder) == str(newest.relative_to(folder))
        found.append(RunFolder(folder, newest, live=is_live(folder / LIVE_MARKER), synced=synced))
    return found


def upload(run: RunFolder, command: Sequence[str] = SYNC_COMMAND) -> str | None:
    """``wandb sync`` the run's newest segment; None on success, else why it failed."""
    try:
        done = subprocess.run(
            [*command, str(run.newest)], capture_output=True, text=True, timeout=SYNC_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{type(err).__name__}: {err}"
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        return f"exit {done.returncode}: {lines[-1].strip() if lines else 'no output'}"
    marker = {"segment": str(run.newest.relative_to(run.folder)), "synced_at": time.time()}
    tmp = run.folder / f".{SYNCED_MARKER}.{os.getpid()}"
    tmp.write_text(json.dumps(marker))
    os.replace(tmp, run.folder / SYNCED_MARKER)
    return None


def sync_once(
    roots: Sequence[Path], *, jobs: int = 4, dry_run: bool = False, say: Callable[[str], None] = print
) -> Tally:
    """One pass over ``roots``: upload what is finished and not yet synced."""
    tally = Tally()
    todo = []
    for run in find_runs(roots):
        if run.synced:
            continue
        if run.live:
            say(f"skipped {run.name}: its job is still running")
            tally.skipped += 1
        else:
            todo.append(run)
    if dry_run:
        for run in todo:
            say(f"would sync {run.name}: {run.newest}")
        return tally
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for run, problem in zip(todo, pool.map(upload, todo), strict=True):
            if problem is None:
                say(f"synced {run.name}")
                tally.synced += 1
            else:
                say(f"failed {run.name}: {problem}")
                tally.failed += 1
    return tally


def sync(
    roots: Sequence[Path],
    *,
    jobs: int = 4,
    dry_run: bool = False,
    watch: bool = False,
    poll_s: float = 10.0,
    say: Callable[[str], None] = print,
) -> int:
    """``hpcpipe sync``: exit status 1 if an upload failed (in the last pass with --watch)."""
    if not watch:
        tally = sync_once(roots, jobs=jobs, dry_run=dry_run, say=say)
        say(tally.line())
        return 1 if tally.failed else 0
    failed = False
    try:
        while True:
            tally = sync_once(roots, jobs=jobs, dry_run=dry_run, say=say)
            if tally.synced or tally.failed:
                say(tally.line())
            failed = bool(tally.failed)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        say("stopped watching")
    return 1 if failed else 0
