"""``hpcpipe sync``: upload every finished offline run of the project, once.

Run on a machine that reaches the W&B server (a login node), after jobs finished or
with ``--watch`` beside them. For each run folder under ``wandb/`` (see ``run``):

- live (see ``liveness``): skipped, so a run is never uploaded while its job may
  still write it, now or after a requeue; the next pass takes it;
- already synced (``synced.json`` counts its segments): nothing to do;
- otherwise one segment, the one with the longest history (the newest of equals:
  each holds the whole history, replayed across requeues; a job killed hard may
  leave a newest one wandb never wrote out), goes through ``wandb sync DIR``;
  ``synced.json`` is written only after that exits 0, so a failed upload is retried
  next time and a good one never repeats.

Two syncs at once (two terminals, two login nodes): each run is claimed first with
an ``O_EXCL`` file (see ``claim``), and the one that does not get it skips the run.

Slurm is asked through the project's shared squeue answer (``hpcpipe.queue_cache``):
``--watch`` accepts one up to ``--poll`` seconds old (default 10), so a sync beside the
launchers and sweeps of the project adds no Slurm call of its own; a run is judged only
on an answer asked after its job started (an older one cannot know the job).

Uploads run N at a time; one failing does not stop the others. The key comes from
the environment or ~/.netrc, as for any wandb command; nothing here reads or writes it.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcpipe import claim
from hpcpipe.files import write_json_atomically
from hpcpipe.liveness import pid_alive
from hpcpipe.queue_cache import QueueCache
from hpcpipe.tracking.run import JOB_RECORD, LIVE_MARKER, SYNCED_MARKER, segments
from hpcpipe.tracking.slurm_queue import queued_jobs

SYNC_COMMAND = ("wandb", "sync")
SYNC_TIMEOUT_S = 1800
CLAIM_STALE_S = SYNC_TIMEOUT_S + 300  # an upload is killed before: its claim is abandoned
CLAIM_FILE = "sync.claim"  # in the run folder, while one sync uploads it


@dataclass(frozen=True)
class RunFolder:
    folder: Path
    newest: Path  # the offline run folder to upload
    live: bool
    synced: bool
    why_live: str = ""
    count: int = 0  # how many segments the run has

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


@dataclass
class SlurmQueue:
    """squeue asked once per pass (per user whose jobs wrote runs), not once per run:
    the project's shared answer (``project`` None: asked here), up to ``max_age_s`` old.
    ``asked`` holds each user's jobs that Slurm still has (None: squeue did not answer)."""

    asked: dict[str | None, frozenset[str] | None] = field(default_factory=dict)
    project: Path | None = None
    max_age_s: float = 0.0
    asked_at: dict[str | None, float] = field(default_factory=dict)  # absent: taken as new enough

    def jobs(self, user: str | None, newer_than: float = 0.0) -> frozenset[str] | None:
        if user in self.asked and self.asked_at.get(user, newer_than) >= newer_than:
            return self.asked[user]
        if user is None:  # a record that names no user (older hpcpipe): everyone's jobs
            self.asked[user], self.asked_at[user] = queued_jobs(None), time.time()
            return self.asked[user]
        answer = QueueCache(self.project, user).answer(self.max_age_s, newer_than)
        self.asked[user], self.asked_at[user] = answer.still_has(), answer.asked_at
        return self.asked[user]


def _read_json(path: Path) -> dict[str, Any] | None:
    """The file's mapping; None when it does not exist; {} when it cannot be read."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def liveness(folder: Path, queue: SlurmQueue | None = None) -> str | None:
    """Why the run in ``folder`` may still be written (None: it is finished).

    A run of a Slurm job (its live marker, or the job record kept when the marker goes,
    names one) is live exactly while Slurm still has the job, queued again after a
    requeue included; an array task is looked up by its ``ARRAY_TASK`` name. Slurm is
    asked rather than the pid: the job's process is gone between two attempts, and its
    pid may since belong to another. When Slurm does not answer, a run whose marker is
    still there counts as live (a late upload is harmless, one of a run that grows again
    is not); one whose job removed its marker after finishing well does not. Outside
    Slurm: live while the marker's process runs, on this host; another host's, always.
    """
    queue = queue or SlurmQueue()
    live = _read_json(folder / LIVE_MARKER)
    job = live if live else _read_json(folder / JOB_RECORD) or {}
    slurm_job = job.get("slurm_job") or job.get("slurm_job_id")  # the latter: older markers
    if slurm_job:
        started = job.get("started")  # by the job, after its submission: squeue knew it then
        queued = queue.jobs(job.get("user") or None, started if isinstance(started, (int, float)) else 0.0)
        if queued is None:
            return "Slurm did not answer" if live is not None else None
        return f"Slurm still has job {slurm_job}" if str(slurm_job) in queued else None
    if live is None:
        return None
    if live.get("host") == socket.gethostname():
        pid = live.get("pid")
        return "its job is still running" if pid_alive(pid, live.get("started")) else None
    return f"its job may still be running on {live.get('host') or 'another host'}"


def _synced(folder: Path, offline: Sequence[Path]) -> bool:
    """Whether ``synced.json`` records an upload made when the run had these segments
    (a record without a count, from an older hpcpipe, names the newest segment)."""
    record = _read_json(folder / SYNCED_MARKER) or {}
    if "segments" in record:
        return record["segments"] == len(offline)
    return bool(offline) and record.get("segment") == str(offline[-1].relative_to(folder))


def _to_upload(offline: list[Path]) -> Path:
    """The segment with the longest history, the newest of equals (see the module docstring)."""
    from hpcpipe.tracking.records import read_run

    def rows(segment: Path) -> int:
        try:
            return len(read_run(segment).history)
        except (OSError, ValueError, StopIteration):
            return -1

    lengths = [rows(segment) for segment in offline]
    best = max(lengths)
    return offline[max(i for i, n in enumerate(lengths) if n == best)]


def find_runs(roots: Sequence[Path], queue: SlurmQueue | None = None) -> list[RunFolder]:
    """Every run folder under ``roots`` (the project's ``wandb/``, and each sweep point's)
    with an offline segment."""
    queue = queue or SlurmQueue()
    found = []
    for folder in sorted(p for root in roots for p in root.glob("*") if p.is_dir()):
        offline = segments(folder)
        if not offline:
            continue
        count = len(offline)
        if _synced(folder, offline):
            found.append(RunFolder(folder, offline[-1], live=False, synced=True, count=count))
            continue
        why = liveness(folder, queue)
        newest = offline[-1] if why else _to_upload(offline)
        found.append(
            RunFolder(folder, newest, live=why is not None, synced=False, why_live=why or "", count=count)
        )
    return found


def upload(run: RunFolder, command: Sequence[str] = SYNC_COMMAND) -> str | None:
    """``wandb sync`` the run's chosen segment; None on success, else why it failed."""
    try:
        done = subprocess.run(
            [*command, str(run.newest)], capture_output=True, text=True, timeout=SYNC_TIMEOUT_S
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{type(err).__name__}: {err}"
    if done.returncode != 0:
        lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
        return f"exit {done.returncode}: {lines[-1].strip() if lines else 'no output'}"
    marker = {
        "segment": str(run.newest.relative_to(run.folder)),
        "segments": run.count or len(segments(run.folder)),
        "synced_at": time.time(),
    }
    write_json_atomically(run.folder / SYNCED_MARKER, marker)  # on disk: a lost one uploads twice
    return None


def claimed_upload(run: RunFolder) -> tuple[str, str]:
    """Upload ``run`` under its claim: ("synced" | "failed" | "busy" | "done", detail)."""
    held = claim.take(run.folder / CLAIM_FILE, CLAIM_STALE_S)
    if held is None:
        return "busy", "another hpcpipe sync is uploading it"
    try:
        if _synced(run.folder, segments(run.folder)):
            return "done", "another hpcpipe sync uploaded it"
        problem = upload(run)
        return ("failed", problem) if problem else ("synced", "")
    finally:
        claim.release(held)


def sync_once(
    roots: Sequence[Path],
    *,
    jobs: int = 4,
    dry_run: bool = False,
    say: Callable[[str], None] = print,
    queue: SlurmQueue | None = None,
) -> Tally:
    """One pass over ``roots``: upload what is finished and not yet synced."""
    tally = Tally()
    todo = []
    for run in find_runs(roots, queue):
        if run.synced:
            continue
        if run.live:
            say(f"skipped {run.name}: {run.why_live}")
            tally.skipped += 1
        else:
            todo.append(run)
    if dry_run:
        for run in todo:
            say(f"would sync {run.name}: {run.newest}")
        return tally
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for run, (outcome, detail) in zip(todo, pool.map(claimed_upload, todo), strict=True):
            if outcome == "synced":
                say(f"synced {run.name}")
                tally.synced += 1
            elif outcome == "failed":
                say(f"failed {run.name}: {detail}")
                tally.failed += 1
            else:
                say(f"skipped {run.name}: {detail}")
                tally.skipped += 1
    return tally


def sync(
    roots: Sequence[Path],
    *,
    jobs: int = 4,
    dry_run: bool = False,
    watch: bool = False,
    poll_s: float = 10.0,
    say: Callable[[str], None] = print,
    project: Path | None = None,
) -> int:
    """``hpcpipe sync``: exit status 1 if an upload failed (in the last pass with --watch).
    ``project``: whose shared squeue answer to use (see the module docstring)."""
    if not watch:
        tally = sync_once(roots, jobs=jobs, dry_run=dry_run, say=say, queue=SlurmQueue(project=project))
        say(tally.line())
        return 1 if tally.failed else 0
    failed = False
    try:
        while True:
            queue = SlurmQueue(project=project, max_age_s=poll_s)
            tally = sync_once(roots, jobs=jobs, dry_run=dry_run, say=say, queue=queue)
            if tally.synced or tally.failed:
                say(tally.line())
            failed = bool(tally.failed)
            time.sleep(poll_s)
    except KeyboardInterrupt:
        say("stopped watching")
    return 1 if failed else 0
