"""Login-node side of a stage: submit, stream state and log, wait, check, cancel.

This is what ``hpcpipe run STAGE`` (the ``cmd`` of each DVC stage) does. It never
imports torch: the job is submitted as a reference to ``job.run_stage`` (or
``job.run_resumable_stage``), which
imports the stage on the node.

Exit status: 0 when the job completed, returned a result and every declared
output exists; 1 when the job failed (its last stderr lines are printed);
130/143 when the launcher was interrupted (the job is cancelled first).
"""

from __future__ import annotations

import codecs
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hpcpipe.config import Params, Profile
from hpcpipe.launch import job as job_side
from hpcpipe.launch import slurm_state
from hpcpipe.launch.executors import make_executor
from hpcpipe.launch.ledger import Entry, Ledger, fingerprint
from hpcpipe.launch.watch import Outcome, watch_for
from hpcpipe.stages import StageSpec
from hpcpipe.tracking import RunContext

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
    if path is None or not path.exists():
        return []
    return path.read_text(errors="replace").splitlines()[-lines:]


def job_folder(root: Path, profile: Profile, stage: str) -> Path:
    """Job folders hold pickles that run code when loaded: owner-only (0700)."""
    folder = root / profile.job_dir / stage
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


def _reattach(ledger: Ledger, spec: StageSpec, fp: str, profile: Profile) -> Any:
    """The stage's live Slurm job from an earlier launcher, if it is still worth waiting for."""
    entry = ledger.get(spec.name)
    if entry is None or entry.executor != "slurm" or profile.executor != "slurm":
        return None
    state = slurm_state.query(entry.job_id)
    if state.final or state.state == "UNKNOWN":
        return None
    import submitit

    job = submitit.SlurmJob(folder=entry.folder, job_id=entry.job_id)
    if entry.fingerprint == fp:
        say(
            f"{spec.name}: reattached to job {entry.job_id} ({state.describe()}), "
            f"submitted {entry.age_s:.0f} s ago"
        )
        return job
    job.cancel(check=False)
    say(f"{spec.name}: cancelled job {entry.job_id}: its inputs, params or code have changed since")
    return None


def launch(
    spec: StageSpec,
    params: Params,
    paths: Mapping[str, str],
    profile: Profile,
    root: Path,
) -> int:
    """Run ``spec`` under ``profile`` and return the launcher's exit status."""
    started = time.monotonic()
    folder = job_folder(root, profile, spec.name)
    ledger = ledger_for(root, profile)
    fp = fingerprint(spec, params, paths, root)
    with SignalsAsExceptions():
        watcher = None
        try:
            job = _reattach(ledger, spec, fp, profile)
            if job is None:
                executor = make_executor(profile, spec.name, folder)
                if profile.executor == "slurm":
                    strip_inherited_slurm_env()
                context = run_context(spec, profile, fp)
                job = executor.submit(
                    job_side.stage_callable(spec), spec, params, dict(paths), str(root), context
                )
                say(f"{spec.name}: job {job.job_id} submitted ({profile.name}: {profile.executor})")
                ledger.put(ledger_entry(spec.name, job, profile, fp, folder))
            watcher = watch_for(profile.executor, job)
            _follow(job, watcher, profile.poll_s, started, spec.name)
        except Interrupted as stop:
            if watcher is not None:
                watcher.cancel()
                say(f"{spec.name}: {stop} received; cancelled job {job.job_id}; outputs left as they were")
            return EXIT_INTERRUPTED if stop.signum == signal.SIGINT else 128 + stop.signum
    return _report(job, watcher.outcome(), spec, paths, root, time.monotonic() - started)


def run_context(spec: StageSpec, profile: Profile, fp: str) -> RunContext:
    """What the job's W&B run records about where and how it ran (no secrets: no environment)."""
    return RunContext(
        stage=spec.name,
        fingerprint=fp,
        profile=profile.name,
        resources=dataclasses.asdict(profile.resources(spec.name)),
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


def _report(
    job: Any, outcome: Outcome, spec: StageSpec, paths: Mapping[str, str], root: Path, elapsed: float
) -> int:
    if not outcome.ok:
        stderr_path = job.paths.stderr if job.paths is not None else None
        lines = tail(stderr_path)
        if lines:
            say(f"{spec.name}: last {len(lines)} lines of {stderr_path}:")
            for line in lines:
                print(f"  | {line}", file=sys.stderr)
        # the job's own last words (the exception line of its traceback) beat submitit's wrapper text
        reason = outcome.reason or (lines[-1].strip() if lines else "no error output")
        say(
            f"{spec.name}: job {job.job_id} {outcome.state} after {elapsed:.1f} s: {reason}; "
            "outputs left as they were"
        )
        return EXIT_FAILED
    missing = [paths[role] for role in spec.outputs if not (root / paths[role]).exists()]
    if missing:
        say(f"{spec.name}: job {job.job_id} finished but these outputs are missing: {', '.join(missing)}")
        return EXIT_FAILED
    say(f"{spec.name}: job {job.job_id} COMPLETED in {elapsed:.1f} s")
    return 0


def relative_to_root(path: str, root: Path) -> str:
    """Paths are passed to the job relative to the project root (shared filesystem)."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(root.resolve()))
    except ValueError:
        return str(absolute)
