"""Every submission's one path: the folders, the executor a profile prepares, the ledger record.

A stage (``launcher.launch``), the ``--detach`` driver and a sweep's job arrays all submit
through ``prepared_executor``: the site's account check, no secrets and no inherited
SLURM_* variables passed on, the profile's resources; and record what was queued in the
project's ledger (``ledger_entry``, with ``resources_digest``: what the scheduler was
asked for). Job folders hold pickles that run code when loaded, so they are owner-only
(``private_folder``). A scheduler's refusal is one line, its own reason
(``refusal_in_one_line``); a job that was queued but cannot be recorded is cancelled
(``record_or_cancel``), so nothing runs that no command of hpcpipe knows about.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpcpipe.config import Profile
from hpcpipe.launch.checks import account_problem, write_access_problem
from hpcpipe.launch.executors import backend
from hpcpipe.launch.job_environment import withhold_secrets
from hpcpipe.launch.ledger import Entry, Ledger, file_safe
from hpcpipe.launch.profiles import resumable
from hpcpipe.validation import ConfigError


def job_folder(root: Path, profile: Profile, stage: str) -> Path:
    return private_folder(root / profile.job_dir / file_safe(stage), root)


def private_folder(folder: Path, root: Path) -> Path:
    """Job folders hold pickles that run code when loaded: owner-only (0700), up to ``root``.

    Inside the project: ``folder`` and each folder between it and ``root``. Elsewhere (a
    ``job_dir`` on scratch, or ``../jobs``): ``folder`` and the folders this call created,
    never one that was there before (the project's parent, the user's scratch root).
    """
    existing = next(p for p in [folder, *folder.parents] if p.exists())
    folder.mkdir(parents=True, exist_ok=True)
    target, top = folder.resolve(), root.resolve()
    if top in target.parents:
        private = [target, *[p for p in target.parents if top in p.parents]]
    else:
        created = folder.relative_to(existing).parents if existing != folder else []
        private = [target, *[(existing / p).resolve() for p in created if p != Path(".")]]
    for path in private:
        path.chmod(0o700)
    return folder


def ledger_for(root: Path, profile: Profile) -> Ledger:
    return Ledger(root / profile.job_dir / "ledger")


def strip_inherited_slurm_env() -> None:
    """A submission from inside a job (the --detach driver) must not pass the driver's
    allocation (SLURM_MEM_PER_NODE, SLURM_CPUS_PER_TASK, ...) on to the new job."""
    for key in [k for k in os.environ if k.startswith("SLURM_") and k != "SLURM_CONF"]:
        del os.environ[key]


def resources_digest(profile: Profile, stage: str) -> str:
    """What the scheduler is asked for: not part of the fingerprint (results do not depend
    on it), but a job asked for with other resources is not the one wanted now."""
    record = {"executor": profile.executor, **dataclasses.asdict(profile.resources(stage))}
    # keys added after jobs were already recorded count only when set: an upgrade alone
    # must not make a running job stale (it would be cancelled and resubmitted)
    for key, default in (("nodes", 1), ("tasks_per_node", None)):
        if record.get(key) == default:
            record.pop(key, None)
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Unrecorded(ConfigError):
    """A job was queued but could not be put in the ledger; ``cancelled``: and it was
    cancelled (else the message says how to find and cancel it)."""

    def __init__(self, message: str, cancelled: bool = True) -> None:
        super().__init__(message)
        self.cancelled = cancelled


class SubmitRefused(Unrecorded):
    """The scheduler said no (slurmctld down, an account or a partition it refuses, a
    submit limit): nothing was queued. Its message is one line, the scheduler's reason."""


def last_line(text: str) -> str:
    """The last non-empty line of a tool's complaint: sbatch's reason comes last."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def submit_array(
    root: Path,
    profile: Profile,
    name: str,
    function: Any,
    arg_lists: list[list[Any]],
    folder: Path,
    at_once: int,
    after: str | None = None,
) -> list[Any]:
    """The same path for a job array (a sweep): ONE sbatch, at most ``at_once`` tasks running;
    ``after``: a job (array) id whose end, whatever its outcome, this array waits for.
    Raises ``SubmitRefused`` (nothing queued) or ``Unrecorded`` (queued, then cancelled)."""
    refuse_open_project(root, profile)
    private_folder(folder, root)
    executor = prepared_executor(profile, name, folder, requeue=resumable(function))
    executor.update_parameters(
        array_parallelism=at_once, **({"dependency": f"afterany:{after}"} if after else {})
    )
    with refusal_in_one_line():
        jobs = executor.map_array(function, *arg_lists)
    array_id = str(jobs[0].job_id).split("_")[0]
    entry = ledger_entry(name, jobs[0], profile, "", folder)
    record_or_cancel(root, profile, entry, lambda: _cancel_by_id(profile, array_id))
    return jobs


def _cancel_by_id(profile: Profile, job_id: str) -> str | None:
    """Cancel a job the caller holds no watcher for; None when done, else what went wrong."""
    return cancel_problem(job_id, lambda: backend(profile.executor).cancel([job_id]))


def cancel_problem(job_id: str, cancel: Callable[[], None]) -> str | None:
    """Run ``cancel`` (scancel, or a local job's kill); None when it worked, else what went
    wrong, in words: Slurm's own reason where it refused."""
    try:
        cancel()
    except subprocess.CalledProcessError as err:
        said = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        why = said.strip().splitlines()
        return f"Slurm refused to cancel job {job_id}: {why[-1] if why else f'exit {err.returncode}'}"
    except subprocess.TimeoutExpired:
        return f"cancelling job {job_id} timed out (Slurm not answering)"
    except OSError as err:
        return f"cannot cancel job {job_id}: {err}"
    return None


@contextlib.contextmanager
def refusal_in_one_line(quiet: bool = True) -> Iterator[None]:
    """Around the one call that runs sbatch: a refusal raises ``SubmitRefused`` whose message
    is the scheduler's reason, one line. submitit prints sbatch's complaint on stderr before
    it raises: kept here, not said twice; what sbatch prints when it accepts (its warnings)
    goes on to stderr. ``quiet=False`` where submitting runs the stage itself (the inline
    executor), whose stderr is the user's to see as it comes."""
    from submitit.core.utils import FailedJobError

    chatter = io.StringIO()
    try:
        with contextlib.redirect_stderr(chatter) if quiet else contextlib.nullcontext():
            yield
    except (FailedJobError, subprocess.SubprocessError, OSError) as err:
        # OSError: no sbatch here, or the job folder's pickles could not be written
        raise SubmitRefused(last_line(str(err))) from None
    sys.stderr.write(chatter.getvalue())


def record_or_cancel(root: Path, profile: Profile, entry: Entry, cancel: Callable[[], str | None]) -> None:
    """Put a just-queued job in the ledger; where that fails (a full disk, a quota, a broken
    folder), ``cancel`` it (None: cancelled; else what went wrong, in words) and raise
    ``Unrecorded``, rather than leave a job running that nothing tracks."""
    ledger = ledger_for(root, profile)
    try:
        ledger.put(entry)
    except OSError as err:
        problem = cancel()
        job = entry.job_id.split("_")[0]  # a job array: all of it
        unrecorded = f"{entry.stage}: cannot record job {job} in {ledger.folder} ({err})"
        if problem is None:
            fate = f"cancelled job {job} rather than leave it running untracked"
            raise Unrecorded(f"{unrecorded}; {fate}") from None
        raise Unrecorded(
            f"{unrecorded}, and {problem}: it may still run; check `squeue -j {job}` and `scancel {job}`",
            cancelled=False,
        ) from None


def refuse_open_project(root: Path, profile: Profile) -> None:
    """Code another user can write would run as you on the nodes (``hpcpipe run`` checks
    this itself, before it resolves the stage)."""
    problem = write_access_problem(root, profile)
    if problem:
        raise ConfigError(problem)


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
    withhold_secrets(profile.export_secrets)  # no API key or password leaves the login node
    return kind.executor(profile, name, folder, requeue)


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
