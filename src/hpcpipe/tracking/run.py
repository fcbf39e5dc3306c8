"""One W&B run per stage execution, offline on compute nodes, requeue-safe.

``job.run_stage`` wraps the stage function in ``start_run(...)``; the stage logs through
``log_epoch`` / ``log_summary`` / ``log_confusion`` / ``log_samples``, which do nothing
when no run is active (W&B disabled, not installed, or broken). W&B never breaks a
stage: any failure prints ONE warning line on stderr and tracking stops for that stage.

Layout, one folder per run id under the project's ``wandb/``::

    wandb/<run_id>/live.json        written when an attempt starts; removed when it finished well
    wandb/<run_id>/job.json         the same, kept: which Slurm job writes the run
    wandb/<run_id>/history.jsonl    every scalar row logged, with its step, written at once
    wandb/<run_id>/synced.json      written by ``hpcpipe sync`` after success
    wandb/<run_id>/segment-000/wandb/offline-run-*-<run_id>/   first job attempt
    wandb/<run_id>/segment-001/wandb/offline-run-*-<run_id>/   the same job, requeued

Why segments that each hold the WHOLE history: wandb cannot resume an offline run
(wandb/wandb#2423, #4624); each attempt writes a new offline folder with the same id,
and syncing several folders of one id keeps only one of them: users lose segments
(#3841, #5865) or get duplicates when they sync the same folder twice (#2858). So a
requeued attempt first replays the earlier rows, then logs on. ``hpcpipe sync`` uploads
one segment, once, after Slurm no longer has the job (see ``sync``).

Why a history file of our own: the ``.wandb`` file of a killed attempt cannot be read
back. wandb's service buffers it, and a job killed by Slurm (``scontrol requeue``, a
preemption's KillWait, a node failure) leaves a file that holds the header only. The
rows are appended to ``history.jsonl`` as they are logged, so a requeued attempt
replays all of them, whatever wandb managed to write.

Steps: an epoch's row goes at step ``epoch - 1`` (epochs count from 1), so a stage that
resumes after epoch k logs epoch k+1 at step k. The earlier rows are replayed lazily, at
the first row this attempt logs, and only those at a lower step: a checkpoint older than
the history (the history runs ahead of it by at most one epoch) or a stage that starts
over never leaves a repeated or out-of-order step.

The run id is deterministic (see ``context.run_id``): stage + fingerprint + Slurm job
id, so a requeue (same Slurm job id) finds its run and a new submission starts a new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpipe.console import say
from hpcpipe.files import write_json_atomically
from hpcpipe.tracking.context import RunContext, job_id, job_key, node_name, run_id
from hpcpipe.tracking.slurm_queue import job_name

RUNS_DIR = "wandb"
LIVE_MARKER = "live.json"
JOB_RECORD = "job.json"
SYNCED_MARKER = "synced.json"
HISTORY_JOURNAL = "history.jsonl"
UNTRACKED_RESOURCES = ("setup",)  # never W&B config: see run_config
INIT_TIMEOUT_S = 60.0
FLUSH_TIMEOUT_S = 60.0
SAMPLE_COUNT = 32


@dataclass
class ActiveRun:
    """The open wandb run and where the next history row goes."""

    handle: Any
    folder: Path
    next_step: int
    segment: Path | None = None  # this attempt's offline folder; None when online
    replay: list[tuple[int, dict[str, Any]]] = dataclasses.field(default_factory=list)  # not yet logged


# The one piece of module state: the run open in this process, if any (no config here).
_active: ActiveRun | None = None


def runs_root(workdir: str | Path) -> Path:
    return Path(workdir) / RUNS_DIR


def segments(run_folder: Path) -> list[Path]:
    """The offline run folders of one run id, oldest attempt first."""
    found = []
    for segment in sorted(run_folder.glob("segment-*")):
        # a folder without its .wandb file is an attempt killed before it wrote anything
        found.extend(d for d in sorted((segment / "wandb").glob("offline-run-*")) if any(d.glob("*.wandb")))
    return found


def mark_live(folder: Path) -> Path:
    """Write the run folder's live marker and job record: who writes the run (see
    ``sync.liveness``). The job record stays when the marker goes, so ``hpcpipe sync``
    can still ask Slurm whether the job may run again."""
    live = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "user": os.environ.get("SLURM_JOB_USER") or os.environ.get("USER"),
        "slurm_job": job_name(os.environ),
        "started": time.time(),
    }
    for name in (JOB_RECORD, LIVE_MARKER):  # fsynced: a node that dies cannot lose who wrote the run
        write_json_atomically(folder / name, live)
    return folder / LIVE_MARKER


def read_journal(folder: Path) -> dict[int, dict[str, Any]]:
    """The rows logged so far, by step; a later row of one step wins (an attempt that
    started over). A torn last line (a killed job) is skipped."""
    rows: dict[int, dict[str, Any]] = {}
    try:
        lines = (folder / HISTORY_JOURNAL).read_text().splitlines()
    except FileNotFoundError:
        return rows
    for line in lines:
        try:
            entry = json.loads(line)
            rows[int(entry["step"])] = dict(entry["row"])
        except (ValueError, KeyError, TypeError):
            continue
    return rows


def _journal(folder: Path, step: int, row: Mapping[str, Any]) -> None:
    """Append one row, synced to disk: it must outlive a node that dies the next second."""
    with (folder / HISTORY_JOURNAL).open("a") as handle:
        handle.write(json.dumps({"step": step, "row": row}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def warn(message: str) -> None:
    say(f"W&B off for this stage: {message}")


def git_commit(workdir: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=workdir, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def run_config(params: Any, context: RunContext, sections: Sequence[str], workdir: Path) -> dict:
    """What the W&B run shows as config: the stage's params slice and where/how it ran.

    The profile's ``setup:`` lines are left out of the resources: they are shell lines
    (``module load``, ``export``...) that may carry a site's secrets, and the config is
    uploaded to the W&B server.
    """
    return {
        "stage": context.stage,
        "params": {s: _plain(getattr(params, s)) for s in sections},
        "resources": {k: v for k, v in context.resources.items() if k not in UNTRACKED_RESOURCES},
        "profile": context.profile,
        "fingerprint": context.fingerprint,
        "git_commit": git_commit(workdir),
        "job_id": job_id(),
        "node": node_name(),
    }


def _plain(value: Any) -> Any:
    """A params section as W&B config: a schema's dataclass as its dict, anything else as is."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _replayable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A history row's own scalars, as the journal keeps them. Media (tables, images) point
    into one segment's files and are left out; a requeued job logs its media again."""
    return {
        k: v
        for k, v in row.items()
        if not k.startswith("_") and "/" not in k and isinstance(v, (int, float, str))
    }


def _open(params: Any, context: RunContext, sections: Sequence[str], workdir: Path) -> ActiveRun:
    import wandb  # here, in the job: the launcher never imports it

    key = job_key()
    rid = run_id(context, key)
    folder = runs_root(workdir) / rid
    folder.mkdir(parents=True, exist_ok=True)
    mark_live(folder)  # before anything else, so `hpcpipe sync` leaves this run alone from now on
    segment = folder / f"segment-{len(list(folder.glob('segment-*'))):03d}"
    segment.mkdir()
    offline = not context.wandb_online
    try:
        replay = sorted(read_journal(folder).items()) if offline else []
        cfg = params.wandb
        handle = wandb.init(
            mode="offline" if offline else "online",
            dir=segment,
            id=rid,
            resume="allow",
            project=cfg.project,
            entity=cfg.entity,
            group=cfg.group,
            tags=list(cfg.tags),
            job_type=context.stage,
            name=f"{context.stage} {key}",
            config=run_config(params, context, sections, workdir),
            settings=wandb.Settings(silent=True, console="off", save_code=False, init_timeout=INIT_TIMEOUT_S),
        )
    except BaseException:
        with contextlib.suppress(Exception):
            wandb.finish(exit_code=1)
        (folder / LIVE_MARKER).unlink(missing_ok=True)
        raise
    where = f"offline in {segment.relative_to(workdir)}; upload with: hpcpipe sync" if offline else "online"
    say(f"W&B run {rid} ({where})")
    return ActiveRun(
        handle=handle, folder=folder, next_step=0, segment=segment if offline else None, replay=replay
    )


def _replay(run: ActiveRun, below: int | None = None) -> None:
    """Log the earlier attempts' rows at their steps, those below ``below`` (all: None);
    the others are superseded by what this attempt logs."""
    rows, run.replay = run.replay, []
    for step, row in rows:
        if below is not None and step >= below:
            break
        run.handle.log(row, step=step)
        run.next_step = step + 1


def _close(run: ActiveRun, exit_code: int) -> None:
    """Finish the run. The live marker goes only when the stage finished well: after a
    failure or a requeue (submitit's handler exits the job) the job may run again, and
    ``hpcpipe sync`` must leave the run alone until Slurm no longer has it."""
    try:
        _replay(run)
        run.handle.finish(exit_code=exit_code)
        if run.segment is not None:
            _await_flush(run.segment)
    finally:
        if exit_code == 0:
            (run.folder / LIVE_MARKER).unlink(missing_ok=True)


def _await_flush(segment: Path, timeout_s: float = FLUSH_TIMEOUT_S) -> None:
    """Wait until the offline run's ``.wandb`` file ends with its exit record.

    ``finish()`` can return before wandb's service process has written the log out
    (seen on a loaded 2-core machine: a file with its header only). The live marker
    goes only after this, so ``hpcpipe sync`` never uploads half a run.
    """
    from hpcpipe.tracking.records import has_exit_record

    deadline = time.monotonic() + timeout_s
    while not any(has_exit_record(p) for p in segment.glob("wandb/offline-run-*/*.wandb")):
        if time.monotonic() > deadline:
            warn(f"the offline run in {segment} was not fully written after {timeout_s:.0f} s")
            return
        time.sleep(0.1)


@contextlib.contextmanager
def start_run(
    params: Any, context: RunContext | None, sections: Sequence[str], workdir: str | Path
) -> Iterator[None]:
    """Open the stage's W&B run for the ``with`` block when ``params.wandb.enabled``."""
    global _active
    settings = getattr(params, "wandb", None)
    # a stage on several tasks has one run, rank 0's (torchrun's RANK: see hpcpipe.ml.distributed)
    if context is None or settings is None or not settings.enabled or os.environ.get("RANK", "0") != "0":
        yield
        return
    try:
        _active = _open(params, context, sections, Path(workdir).resolve())
    except ImportError as err:
        warn(f"wandb is not installed here ({err}); pip install wandb")
        _active = None
    except Exception as err:  # ImportError, bad settings, unwritable dir: the stage goes on
        warn(f"{type(err).__name__}: {err}")
        _active = None
    exit_code = 1
    try:
        yield
        exit_code = 0
    finally:
        run, _active = _active, None
        if run is not None:
            try:
                _close(run, exit_code)
            except Exception as err:
                warn(f"finishing the run failed: {type(err).__name__}: {err}")


def _guarded(what: str, action: Any) -> None:
    """Run ``action(run)`` on the active run; on failure warn once and stop tracking."""
    global _active
    run = _active
    if run is None:
        return
    try:
        action(run)
    except Exception as err:
        _active = None
        warn(f"{what} failed: {type(err).__name__}: {err}")
        with contextlib.suppress(Exception):
            _close(run, 1)


def _log(run: ActiveRun, values: Mapping[str, Any], step: int | None = None) -> None:
    """Log ``values`` at ``step`` (None: the next one); the earlier attempts' rows first."""
    if run.replay:
        _replay(run, below=step)  # a row without a step of its own comes after all of them
    step = run.next_step if step is None else step
    row = dict(values)
    scalars = _replayable(row)
    if scalars:
        _journal(run.folder, step, scalars)
    run.handle.log(row, step=step)
    run.next_step = max(run.next_step, step + 1)


def log_epoch(**values: float) -> None:
    """One history row (epoch, loss, accuracy, lr, images/s...): at step ``epoch - 1``
    when ``epoch`` is given (counted from 1), else at the next step."""
    epoch = values.get("epoch")
    step = int(epoch) - 1 if isinstance(epoch, int) and epoch >= 1 else None
    _guarded("logging history", lambda run: _log(run, values, step))


def log_summary(metrics: Mapping[str, Any]) -> None:
    """Final metrics, shown in the runs table."""

    def action(run: ActiveRun) -> None:
        _replay(run)  # the history first: wandb's summary follows the last history row
        run.handle.summary.update(dict(metrics))

    _guarded("writing the summary", action)


def log_confusion(actual: Sequence[int], predicted: Sequence[int], classes: Sequence[str]) -> None:
    """The confusion matrix as W&B's interactive chart."""

    def action(run: ActiveRun) -> None:
        import wandb

        chart = wandb.plot.confusion_matrix(
            y_true=list(actual), preds=list(predicted), class_names=list(classes), title="confusion matrix"
        )
        _log(run, {"confusion_matrix": chart})

    _guarded("logging the confusion matrix", action)


def log_samples(images: Any, actual: Sequence[int], predicted: Sequence[int], classes: Sequence[str]) -> None:
    """A grid of sample predictions: ``images`` is uint8 N x C x H x W (tensor or array)."""

    def action(run: ActiveRun) -> None:
        import numpy as np
        import wandb

        pictures = np.asarray(images[:SAMPLE_COUNT]).transpose(0, 2, 3, 1)
        table = wandb.Table(columns=["image", "actual", "predicted", "correct"])
        for picture, a, p in zip(pictures, actual, predicted, strict=False):
            table.add_data(wandb.Image(picture), classes[a], classes[p], a == p)
        _log(run, {"sample_predictions": table})

    _guarded("logging sample predictions", action)
