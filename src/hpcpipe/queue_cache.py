"""One ``squeue`` answers every watcher of a project: Slurm asked on a budget.

Each launcher (``launch.watch``), sweep watcher (``sweep.watch``) and ``hpcpipe sync
--watch`` used to ask Slurm about its own jobs every poll: a 10-hour training was
~18,000 calls from one user, and site staff count tight polling loops as load on
slurmctld (users hit per-user RPC limits). Now one call per project and poll,

    squeue -h -r -t all -u USER -O JobArrayID,UserName,State,Reason,NodeList,TimeUsed,RestartCnt

lists every job of the user (queued, running, and, for MinJobAge after their end, ended;
array tasks one per line, named ``ARRAY_TASK`` as ``%i`` names them), and the answer is
kept, with the time it was asked, in ``.dvc/tmp/hpcpipe/squeue-USER.json`` of the
project (written whole, ``files.write_json_atomically``; ``.dvc/tmp`` is DVC's own
git-ignored scratch folder). A caller asks for an answer no older than it needs
(``QueueCache.answer(max_age_s)``: a watcher's profile ``poll_s``, 12 s on the site
profiles), and asked after a moment it names (``newer_than``: a job submitted later
cannot be in an older answer). The cached answer is used while it fits; else one
process refreshes it while the others wait for its answer: the refresher holds an
``O_EXCL`` claim beside the file (``hpcpipe.claim``: taken over when its owner died, or
after ``CLAIM_STALE_S``). So a project costs one squeue per ``poll_s`` however many
launchers, sweeps and syncs watch it, plus one when a job is submitted; the user's
other projects and machines each have their own.

A failed squeue is cached too (``jobs`` None): while slurmctld is down the project asks
it once per poll, not once per watcher. Readers trust nothing: a file that cannot be
read or parsed, names another user, or was asked in the future (a clock set back) is
no answer, and is replaced. Where no DVC project holds the job folder, or its
``.dvc/tmp`` cannot be written, a caller asks squeue itself (one call for all its jobs).

Kept outside ``launch`` because ``tracking`` (sync) uses it too, and ``tracking`` never
imports ``launch``. What a state means to the launcher is ``launch.slurm_state``'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pwd
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpipe import claim
from hpcpipe.files import write_json_atomically

REFRESH_S = 12.0  # the budget: under one squeue per 10 s per project (the site profiles' poll_s)
CACHE_DIR = Path(".dvc") / "tmp" / "hpcpipe"
FIELDS = ("JobArrayID", "UserName", "State", "Reason", "NodeList", "TimeUsed", "RestartCnt")
SQUEUE_TIMEOUT_S = 20
CLAIM_STALE_S = 2 * SQUEUE_TIMEOUT_S + 10  # a refresher is killed long before: its claim is abandoned
WAIT_S = 0.05  # how often a waiting caller looks for the refresher's answer
FUTURE_SLACK_S = 2.0  # login nodes' clocks differ a little; more than this: a clock was set back
# Slurm's own ended states: squeue without --states leaves these out (a job in any other
# state may still run, or run again after a requeue).
ENDED = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
    }
)


@dataclass(frozen=True)
class Queued:
    """One job as squeue shows it."""

    state: str
    reason: str = ""
    node: str = ""
    elapsed: str = ""
    restarts: int = 0  # RestartCnt: times Slurm requeued it

    def line(self) -> str:
        return f"{self.state}|{self.reason}|{self.node}|{self.elapsed}|{self.restarts}"

    @classmethod
    def from_line(cls, line: str) -> Queued:
        state, reason, node, elapsed, restarts = line.split("|")
        return cls(state, reason, node, elapsed, int(restarts))


@dataclass(frozen=True)
class Answer:
    asked_at: float  # time.time() when squeue was started: the answer is at least this new
    jobs: Mapping[str, Queued] | None  # by %i name; None when squeue did not answer
    error: str = ""  # squeue's complaint, when it did not answer

    def fits(self, max_age_s: float, newer_than: float = 0.0, now: float | None = None) -> bool:
        age = (time.time() if now is None else now) - self.asked_at
        return self.asked_at >= newer_than and -FUTURE_SLACK_S <= age <= max_age_s

    def still_has(self) -> frozenset[str] | None:
        """The jobs Slurm still has (may run, or run again); None when squeue did not answer."""
        if self.jobs is None:
            return None
        return frozenset(name for name, job in self.jobs.items() if job.state not in ENDED)


def current_user() -> str:
    """The user squeue's ``--me`` means: this process's uid, whatever $USER says ($USER
    only where the uid has no name, as in some containers)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return os.environ.get("USER") or str(os.getuid())


def squeue_command(user: str) -> list[str]:
    return ["squeue", "-h", "-r", "-t", "all", "-u", user, "-O", ",".join(f"{f}:|" for f in FIELDS)]


def parse(text: str, user: str) -> dict[str, Queued]:
    """``squeue_command`` output -> ``user``'s jobs by name. Lines of other users (a site
    wrapper that ignores ``-u``) and lines of another shape are left out."""
    jobs = {}
    for line in text.splitlines():
        fields = [f.strip() for f in line.strip().rstrip("|").split("|")]
        if len(fields) != len(FIELDS) or fields[1] != user or not fields[0]:
            continue
        name, _, state, reason, node, elapsed, restarts = fields
        jobs[name] = Queued(state, reason, node, elapsed, int(restarts) if restarts.isdigit() else 0)
    return jobs


def ask(user: str) -> Answer:
    """squeue, now: every job of ``user``."""
    asked_at = time.time()
    try:
        done = subprocess.run(squeue_command(user), capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as err:
        return Answer(asked_at, None, f"{type(err).__name__}: {err}")
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines()
        return Answer(asked_at, None, lines[-1] if lines else f"exit {done.returncode}")
    return Answer(asked_at, parse(done.stdout, user))


def project_of(folder: Path) -> Path | None:
    """The DVC project holding ``folder`` (the nearest folder above with ``.dvc/``, as DVC
    finds its root), or None."""
    folder = folder.absolute()
    for candidate in (folder, *folder.parents):
        if (candidate / ".dvc").is_dir():
            return candidate
    return None


class QueueCache:
    """The project's shared squeue answer for one user (see the module docstring);
    ``project`` None: no sharing, every ``answer`` asks."""

    def __init__(self, project: Path | None, user: str | None = None) -> None:
        self.user = user or current_user()
        self.path = project / CACHE_DIR / f"squeue-{self.user}.json" if project is not None else None

    @classmethod
    def for_folder(cls, folder: Path, user: str | None = None) -> QueueCache:
        """The cache of the project that holds a job's ``folder``."""
        return cls(project_of(folder), user)

    def read(self) -> Answer | None:
        """The cached answer; None when there is none this user can trust."""
        if self.path is None:
            return None
        try:
            data = json.loads(self.path.read_text())
            if data["user"] != self.user:
                return None
            asked_at = float(data["asked_at"])
            jobs = data["jobs"]
            if jobs is None:
                return Answer(asked_at, None, str(data.get("error", "")))
            return Answer(asked_at, {str(k): Queued.from_line(v) for k, v in jobs.items()})
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def answer(self, max_age_s: float = REFRESH_S, newer_than: float = 0.0) -> Answer:
        """An answer at most ``max_age_s`` old (0: asked after this call began) and asked
        at or after ``newer_than``: the cached one, the one another process is asking for
        now, or one asked here."""
        if max_age_s <= 0:
            max_age_s, newer_than = math.inf, max(newer_than, time.time())
        if self.path is None:
            return ask(self.user)
        while True:
            cached = self.read()
            if cached is not None and cached.fits(max_age_s, newer_than):
                return cached
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                held = claim.take(self.path.parent / f"{self.path.stem}.claim", CLAIM_STALE_S)
            except OSError:  # the project cannot be written here: ask alone
                return ask(self.user)
            if held is None:  # another process is asking: wait for its answer
                time.sleep(WAIT_S)
                continue
            try:
                cached = self.read()  # the refresher we waited for may have just finished
                if cached is not None and cached.fits(max_age_s, newer_than):
                    return cached
                fresh = ask(self.user)
                with contextlib.suppress(OSError):  # unwritable: the answer still serves this caller
                    write_json_atomically(self.path, _as_json(fresh, self.user))
                return fresh
            finally:
                claim.release(held)


def _as_json(answer: Answer, user: str) -> dict[str, Any]:
    jobs = None if answer.jobs is None else {name: job.line() for name, job in answer.jobs.items()}
    return {
        "user": user,
        "asked_at": answer.asked_at,
        "fields": "State|Reason|NodeList|TimeUsed|RestartCnt",
        "jobs": jobs,
        "error": answer.error,
    }
