"""Login-node side of a stage: submit, stream state and log, wait, check, cancel.

This is what ``hpcpipe run NAME ...`` (the ``cmd`` of each DVC stage) does with the
``Work`` that ``stage_work`` built: a command stage's ``CommandRunner`` or a function
stage's ``job.run_stage``, pickled by reference, so the login node never imports
what the job runs (torch, for the example). Every submission (a stage, the --detach
driver, a sweep's array) goes through ``submission.prepared_executor``.

Exit status: 0 when the job completed, returned a result and every DVC out of the
stage exists; a command stage's own exit status when its command failed, 1 when
the job failed otherwise (its last stderr lines are printed); 130/143 when the
launcher was interrupted (the job is cancelled first).
"""

from __future__ import annotations

import codecs
import contextlib
import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hpcpipe.claim import claimed
from hpcpipe.config import Profile
from hpcpipe.console import say
from hpcpipe.launch import completion, usage
from hpcpipe.launch.command_job import EXIT_MARK, exit_status_from
from hpcpipe.launch.executors import Backend, backend
from hpcpipe.launch.interrupts import Interrupted, SignalsAsExceptions, signals_noted
from hpcpipe.launch.ledger import Ledger
from hpcpipe.launch.profiles import resumable
from hpcpipe.launch.submission import (
    SubmitRefused,
    Unrecorded,
    cancel_problem,
    job_folder,
    ledger_entry,
    ledger_for,
    prepared_executor,
    record_or_cancel,
    refusal_in_one_line,
    refuse_open_project,
    resources_digest,
)
from hpcpipe.launch.watch import Outcome
from hpcpipe.tracking.context import RunContext

STDERR_TAIL_LINES = 20
RESULT_CHECK_S = 0.25  # how often the job's result file is looked at (a stat; Slurm: every poll_s)
SUBMITIT_INFO = "submitit INFO ("  # how submitit's logger starts its INFO lines in a job's log
# a claim is held for one sbatch (seconds); a minute of clock skew between login nodes is allowed for
CLAIM_STALE_S = 120.0
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
__all__ = ["Interrupted", "SignalsAsExceptions"]  # re-exported: the sweep runner uses them


@dataclass
class LogFollower:
    """Prints what a growing log file gained since the last call."""

    path: Path
    out: TextIO
    offset: int = 0
    quiet: bool = False  # leave out submitit's INFO lines (job environment, pickle paths, "completed")
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
            if not (self.quiet and line.startswith(SUBMITIT_INFO)):
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
    if entry.reported:  # its launcher saw it end (Slurm may still show it RUNNING for a moment)
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


def launch(work: Work, profile: Profile, root: Path, verbose: bool = False) -> int:
    """Run ``work`` under ``profile`` and return the launcher's exit status. The terminal
    gets the stage's own output and one line per state change; submitit's INFO lines only
    when ``verbose``.

    From the moment a job exists until its outcome is reported, every way out of here
    (a signal, an exception, a broken pipe) cancels it or reports it: none leaves a job
    that no launcher and no ledger entry knows about.
    """
    started = time.monotonic()
    ledger = ledger_for(root, profile)
    kind = backend(profile.executor)
    job: Any = None
    watcher: Any = None
    with SignalsAsExceptions():
        try:
            with claimed(
                ledger.claim_path(work.name), CLAIM_STALE_S, on_wait=lambda who: _say_waiting(work.name, who)
            ):
                if _adopt(ledger, work, profile, root):
                    return 0
                job = _reattach(ledger, work, profile)
                if job is None:
                    with kind.signals_while_submitting():
                        job = _submit_recorded(root, profile, work, kind)
                        watcher = kind.watch(job, profile.poll_s)
                    say(f"{work.name}: job {job.job_id} submitted ({profile.name}: {profile.executor})")
            watcher = watcher or kind.watch(job, profile.poll_s)
            _follow(job, watcher, profile.poll_s, started, work.name, verbose)
            status = _report(job, watcher.outcome(), work, root, time.monotonic() - started)
            for line in usage.summary_lines(str(job.job_id), profile, work.name):  # what the job used
                say(line)
        except Unrecorded as err:
            say(str(err))
            return EXIT_FAILED
        except Interrupted as stop:
            if job is None and kind.runs_in_this_process:
                say(
                    f"{work.name}: {stop} received; the stage, running in this process, stopped; "
                    "outputs left as they were"
                )
                return stop.exit_status
            return _stop(job, watcher or (kind.watch(job) if job is not None else None), work, stop)
        except Exception as err:
            if job is None:
                raise
            return _abandon(job, watcher or kind.watch(job), work, err)
    with contextlib.suppress(OSError):  # reported: a later launcher must not adopt it again
        ledger.mark_reported(work.name, str(job.job_id))
    return status


def _say_waiting(stage: str, holder: dict[str, Any]) -> None:
    who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    say(f"{stage}: another launcher of this stage ({who}) is submitting; waiting for its job")


def _adopt(ledger: Ledger, work: Work, profile: Profile, root: Path) -> bool:
    """A job of this very stage that finished while no launcher watched (see ``completion``)."""
    entry = ledger.get(work.name)
    if entry is None or entry.executor != profile.executor:
        return False
    if not completion.adoptable(entry, work.fingerprint, root, work.outs):
        return False
    ledger.mark_reported(work.name, entry.job_id)
    say(
        f"{work.name}: job {entry.job_id} finished while no launcher was watching it, and its "
        "outputs are as it published them: adopted, nothing submitted"
    )
    return True


def _submit_recorded(root: Path, profile: Profile, work: Work, kind: Backend) -> Any:
    """Submit, and record the job in the ledger; a job that cannot be recorded is cancelled."""
    folder = job_folder(root, profile, work.name)
    executor = prepared_executor(profile, work.name, folder, requeue=resumable(work.function))
    try:
        # not quiet inline, where "submitting" runs the stage itself
        with refusal_in_one_line(quiet=not kind.runs_in_this_process):
            job = executor.submit(work.function, *work.args)
    except SubmitRefused as refused:
        why = f"{work.name}: the scheduler refused the job, nothing was queued: {refused}"
        raise SubmitRefused(why) from None
    entry = ledger_entry(work.name, job, profile, work.fingerprint, folder)
    record_or_cancel(root, profile, entry, lambda: _cancel(kind.watch(job)))
    return job


def _cancel(watcher: Any) -> str | None:
    """Cancel the watched job; None when done, else what went wrong, in words. A second
    Ctrl-C meanwhile is answered, not obeyed (see ``interrupts``)."""
    job_id = watcher.job.job_id
    with signals_noted(lambda _s: say(f"already cancelling job {job_id}; one moment")):
        return cancel_problem(job_id, watcher.cancel)


def _cant_cancel(work: Work, job: Any, problem: str) -> int:
    say(
        f"{work.name}: {problem}; it may still be running: check `squeue -j {job.job_id}` "
        f"and cancel it with `scancel {job.job_id}`"
    )
    return EXIT_FAILED


def _stop(job: Any, watcher: Any, work: Work, stop: Interrupted) -> int:
    if job is None:
        say(f"{work.name}: {stop} received before anything was submitted; nothing to cancel")
        return stop.exit_status
    problem = _cancel(watcher)
    if problem is not None:
        return _cant_cancel(work, job, problem)
    say(f"{work.name}: {stop} received; cancelled job {job.job_id}; outputs left as they were")
    return stop.exit_status


def _abandon(job: Any, watcher: Any, work: Work, err: Exception) -> int:
    """The launcher cannot go on watching (a broken pipe, a full disk): cancel, never orphan."""
    if isinstance(err, BrokenPipeError):  # nobody reads stdout any more: stop writing to it
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    problem = _cancel(watcher)
    if problem is not None:
        return _cant_cancel(work, job, problem)
    say(
        f"{work.name}: {type(err).__name__}: {err}; cancelled job {job.job_id} rather than leave it unwatched"
    )
    return EXIT_FAILED


def submit(root: Path, profile: Profile, name: str, function: Any, args: tuple[Any, ...], fp: str) -> Any:
    """The one submit path of a single job (a stage, the --detach driver)."""
    refuse_open_project(root, profile)
    return _submit_recorded(root, profile, Work(name, fp, function, args, ()), backend(profile.executor))


def run_context(name: str, profile: Profile, fp: str) -> RunContext:
    """What the job's W&B run records about where and how it ran (no secrets: no environment)."""
    return RunContext(
        stage=name,
        fingerprint=fp,
        profile=profile.name,
        resources=dataclasses.asdict(profile.resources(name)),
        wandb_online=profile.wandb_online,
    )


def _follow(job: Any, watcher: Any, poll_s: float, started: float, stage: str, verbose: bool = False) -> None:
    """Stream the job's logs and state changes until it is over; the final state is left
    to ``_report``, so the end of a job is one line."""
    followers = []
    if job.paths is not None:
        followers = [
            LogFollower(job.paths.stdout, sys.stdout, quiet=not verbose),
            LogFollower(job.paths.stderr, sys.stderr, quiet=not verbose),
        ]
    last_state = None
    while True:
        state, finished = watcher.poll()
        for line in watcher.news():
            say(f"{stage}: {line}")
        if state != last_state and not finished:
            say(f"{stage}: job {job.job_id} {state} ({time.monotonic() - started:.1f} s)")
            last_state = state
        for follower in followers:
            follower.pump(final=finished)
        if finished:
            return
        time.sleep(min(poll_s, RESULT_CHECK_S))


def _report(job: Any, outcome: Outcome, work: Work, root: Path, elapsed: float) -> int:
    if not outcome.ok:
        stderr_path = job.paths.stderr if job.paths is not None else None
        lines = tail(stderr_path)
        if lines:
            say(f"{work.name}: last {len(lines)} lines of {stderr_path}:")
            for line in lines:  # the job's own lines, quoted under that say: not hpcpipe's
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
