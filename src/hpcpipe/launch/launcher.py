"""Login-node side of a stage: submit, stream state and log, wait, check, cancel.

This is what ``hpcpipe run NAME ...`` (the ``cmd`` of each DVC stage) does with the
``Work`` that ``stage_work`` built: a command stage's ``CommandRunner`` or a function
stage's ``job.run_stage``, pickled by reference, so the login node never imports
what the job runs (torch, for the example). Every submission (a stage, the --detach
driver, a sweep's array) goes through ``prepared_executor``.

Exit status: 0 when the job completed, returned a result and every DVC out of the
stage exists; a command stage's own exit status when its command failed, 1 when
the job failed otherwise (its last stderr lines are printed); 130/143 when the
launcher was interrupted (the job is cancelled first).
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hpcpipe.config import Profile
from hpcpipe.launch.checks import account_problem
from hpcpipe.launch.command_job import EXIT_MARK, exit_status_from
from hpcpipe.launch.executors import backend
from hpcpipe.launch.ledger import Entry, Ledger, file_safe
from hpcpipe.launch.profiles import resumable
from hpcpipe.launch.watch import Outcome
from hpcpipe.tracking.context import RunContext
from hpcpipe.validation import ConfigError

STDERR_TAIL_LINES = 20
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """SIGINT or SIGTERM reached the launcher."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class LogFollower:
    """Prints what a growing log file gained since the last call."""

    path: Path
    out: TextIO
    offset: int = 0
    _partial: str = field(default="", repr=False)
    # a read can end inside a multi-byte character: decode incrementally
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace"), repr=False
    )

    def pump(self, final: bool = False) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        text = self._partial + self._decoder.decode(chunk, final=final)
        lines = text.split("\n")
        self._partial = lines.pop()
        if final and self._partial:
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            self.out.write(line + "\n")
        self.out.flush()


def tail(path: Path | None, lines: int = STDERR_TAIL_LINES) -> list[str]:
    """The job's last stderr lines, up to submitit's own report of the failure: for a command
    stage the command's last words are what matters, not the wrapper's traceback."""
    if path is None or not path.exists():
        return []
    text = path.read_text(errors="replace").splitlines()
    wrapper = [i for i, line in enumerate(text) if line.startswith("submitit ERROR")]
    if wrapper and any(EXIT_MARK in line for line in text[wrapper[-1] :]):
        text = text[: wrapper[-1]]
    return text[-lines:]


def job_folder(root: Path, profile: Profile, stage: str) -> Path:
    return private_folder(root / profile.job_dir / file_safe(stage), root)


def private_folder(folder: Path, root: Path) -> Path:
    """Job folders hold pickles that run code when loaded: owner-only (0700), up to ``root``."""
    folder.mkdir(parents=True, exist_ok=True)
    for part in [folder, *folder.relative_to(root).parents]:
        path = root / part
        if path != root:
            path.chmod(0o700)
    return folder


class SignalsAsExceptions:
    """Turn SIGINT/SIGTERM into ``Interrupted`` for the duration of a wait, so a
    Ctrl-C or a killed ``dvc repro`` cancels the job instead of orphaning it."""

    def __enter__(self) -> None:
        def raise_interrupted(signum: int, _frame: Any) -> None:
            raise Interrupted(signum)

        self._old = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGINT, signal.SIGTERM)}

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)


def say(message: str) -> None:
    print(f"hpcpipe: {message}", file=sys.stderr, flush=True)


def ledger_for(root: Path, profile: Profile) -> Ledger:
    return Ledger(root / profile.job_dir / "ledger")


def strip_inherited_slurm_env() -> None:
    """A submission from inside a job (the --detach driver) must not pass the driver's
    allocation (SLURM_MEM_PER_NODE, SLURM_CPUS_PER_TASK, ...) on to the new job."""
    for key in [k for k in os.environ if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        del os.environ[key]


def _reattach(ledger: Ledger, work: Work, profile: Profile) -> Any:
    """The stage's live job from an earlier launcher, if its backend can reattach to one
    (Slurm's outlive their launcher) and it is still worth waiting for.

    Same fingerprint and same resources: wait for it. Anything else (new content, or a
    profile that now asks for other resources) cancels it, so it is resubmitted; a
    checkpoint, keyed by the fingerprint alone, stays resumable across a resources change.
    """
    entry = ledger.get(work.name)
    if entry is None or entry.executor != profile.executor:
        return None
    live = backend(entry.executor).reattach(entry.job_id, Path(entry.folder))
    if live is None:
        return None
    job, state = live
    resources = resources_digest(profile, work.name)
    if entry.fingerprint == work.fingerprint and entry.resources == resources:
        say(
            f"{work.name}: reattached to job {entry.job_id} ({state.describe()}), "
            f"submitted {entry.age_s:.0f} s ago"
        )
        return job
    job.cancel(check=False)
    why = "its inputs, params or code" if entry.fingerprint != work.fingerprint else "its resources"
    say(f"{work.name}: cancelled job {entry.job_id}: {why} have changed since")
    return None


@dataclass(frozen=True)
class Work:
    """One stage execution, as the launcher submits it: a callable and its arguments.

    ``outs`` are the paths (relative to the project root) that must exist for success:
    the stage's DVC outs.
    """

    name: str
    fingerprint: str
    function: Any
    args: tuple[Any, ...]
    outs: tuple[str, ...]


def resources_digest(profile: Profile, stage: str) -> str:
    """What the scheduler is asked for: not part of the fingerprint (results do not depend
    on it), but a job asked for with other resources is not the one wanted now."""
    record = {"executor": profile.executor, **dataclasses.asdict(profile.resources(stage))}
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


def launch(work: Work, profile: Profile, root: Path) -> int:
    """Run ``work`` under ``profile`` and return the launcher's exit status."""
    started = time.monotonic()
    ledger = ledger_for(root, profile)
    with SignalsAsExceptions():
        watcher = None
        try:
            job = _reattach(ledger, work, profile)
            if job is None:
                job = submit(root, profile, work.name, work.function, work.args, work.fingerprint)
                say(f"{work.name}: job {job.job_id} submitted ({profile.name}: {profile.executor})")
            watcher = backend(profile.executor).watch(job)
            _follow(job, watcher, profile.poll_s, started, work.name)
        except Interrupted as stop:
            if watcher is not None:
                watcher.cancel()
                say(f"{work.name}: {stop} received; cancelled job {job.job_id}; outputs left as they were")
            return EXIT_INTERRUPTED if stop.signum == signal.SIGINT else 128 + stop.signum
    return _report(job, watcher.outcome(), work, root, time.monotonic() - started)


def submit(root: Path, profile: Profile, name: str, function: Any, args: tuple[Any, ...], fp: str) -> Any:
    """The one submit path of a single job (a stage, the --detach driver)."""
    folder = job_folder(root, profile, name)
    job = prepared_executor(profile, name, folder, requeue=resumable(function)).submit(function, *args)
    ledger_for(root, profile).put(ledger_entry(name, job, profile, fp, folder))
    return job


def submit_array(
    root: Path,
    profile: Profile,
    name: str,
    function: Any,
    arg_lists: list[list[Any]],
    folder: Path,
    at_once: int,
) -> list[Any]:
    """The same path for a job array (a sweep): ONE sbatch, at most ``at_once`` tasks running."""
    private_folder(folder, root)
    executor = prepared_executor(profile, name, folder, requeue=resumable(function))
    executor.update_parameters(array_parallelism=at_once)
    jobs = executor.map_array(function, *arg_lists)
    ledger_for(root, profile).put(ledger_entry(name, jobs[0], profile, "", folder))
    return jobs


def prepared_executor(profile: Profile, name: str, folder: Path, requeue: bool = False) -> Any:
    """What every submission goes through: the site's account check, the executor with the
    profile's resources for ``name`` (and ``--requeue`` for a resumable job), and no SLURM_*
    variables inherited from an allocation."""
    problem = account_problem(profile, os.environ)
    if problem:
        raise ConfigError(problem)
    kind = backend(profile.executor)
    if kind.strips_slurm_env:
        strip_inherited_slurm_env()
    return kind.executor(profile, name, folder, requeue)


def run_context(name: str, profile: Profile, fp: str) -> RunContext:
    """What the job's W&B run records about where and how it ran (no secrets: no environment)."""
    return RunContext(
        stage=name,
        fingerprint=fp,
        profile=profile.name,
        resources=dataclasses.asdict(profile.resources(name)),
        wandb_online=profile.wandb_online,
    )


def ledger_entry(stage: str, job: Any, profile: Profile, fp: str, folder: Path) -> Entry:
    """The ledger's record of a just-submitted job (a stage's, or the --detach driver's)."""
    paths = getattr(job, "paths", None)
    return Entry(
        stage=stage,
        job_id=str(job.job_id),
        executor=profile.executor,
        fingerprint=fp,
        folder=str(folder.resolve()),
        resources=resources_digest(profile, stage),
        stdout=str(paths.stdout) if paths else "",
        stderr=str(paths.stderr) if paths else "",
        submitted_at=time.time(),
    )


def _follow(job: Any, watcher: Any, poll_s: float, started: float, stage: str) -> None:
    """Stream the job's logs and state changes until it is over."""
    followers = []
    if job.paths is not None:
        followers = [LogFollower(job.paths.stdout, sys.stdout), LogFollower(job.paths.stderr, sys.stderr)]
    last_state = None
    while True:
        state, finished = watcher.poll()
        if state != last_state:
            say(f"{stage}: job {job.job_id} {state} ({time.monotonic() - started:.1f} s)")
            last_state = state
        for follower in followers:
            follower.pump(final=finished)
        if finished:
            return
        time.sleep(poll_s)


def _report(job: Any, outcome: Outcome, work: Work, root: Path, elapsed: float) -> int:
    if not outcome.ok:
        stderr_path = job.paths.stderr if job.paths is not None else None
        lines = tail(stderr_path)
        if lines:
            say(f"{work.name}: last {len(lines)} lines of {stderr_path}:")
            for line in lines:
                print(f"  | {line}", file=sys.stderr)
        # the job's own last words (the exception line of its traceback) beat submitit's wrapper text
        reason = outcome.reason or (lines[-1].strip() if lines else "no error output")
        status = exit_status_from(reason)
        if status is not None:
            reason = f"{EXIT_MARK} {status}"
        say(
            f"{work.name}: job {job.job_id} {outcome.state} after {elapsed:.1f} s: {reason}; "
            "outputs left as they were"
        )
        return status or EXIT_FAILED
    missing = [out for out in work.outs if not (root / out).exists()]
    if missing:
        say(f"{work.name}: job {job.job_id} finished but these outputs are missing: {', '.join(missing)}")
        return EXIT_FAILED
    say(f"{work.name}: job {job.job_id} COMPLETED in {elapsed:.1f} s")
    return 0
