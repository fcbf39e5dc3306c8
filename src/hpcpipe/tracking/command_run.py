"""W&B for a command stage: the environment that makes the user's own ``wandb.init()``
run offline into the project's ``wandb/`` folder, where ``hpcpipe sync`` finds it.

An arbitrary script cannot replay its history into a requeued attempt the way the
function stages do (see ``run``), and wandb cannot resume an offline run. So each
attempt of a requeued job is its own run, ``<run id>-a<N>`` for attempt N > 0, in one
group (the params file's ``wandb.group``, else ``<stage>-<fingerprint>``), and
``hpcpipe sync`` uploads each attempt's run once, after Slurm no longer has the job
(the live marker, kept through a requeue, and the job record: see ``sync.liveness``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from hpcpipe.tracking.context import RunContext, job_key, run_id
from hpcpipe.tracking.run import JOB_RECORD, LIVE_MARKER, mark_live, runs_root


def attempt_number(environ: Mapping[str, str]) -> int:
    """Slurm counts requeues of a job in SLURM_RESTART_COUNT (absent on the first attempt)."""
    value = environ.get("SLURM_RESTART_COUNT", "0")
    return int(value) if value.isdigit() else 0


def wandb_env(
    settings: Any, context: RunContext, segment: Path, rid: str, environ: Mapping[str, str]
) -> dict[str, str]:
    """WANDB_* variables for the command; ``settings`` is the params file's ``wandb:`` section or None."""
    env = {
        "WANDB_MODE": "online" if context.wandb_online else "offline",
        "WANDB_DIR": str(segment),
        "WANDB_RUN_ID": rid,
        "WANDB_JOB_TYPE": context.stage,
        "WANDB_RUN_GROUP": (getattr(settings, "group", None) or f"{context.stage}-{context.fingerprint}"),
    }
    attempt = attempt_number(environ)
    env["WANDB_NAME"] = f"{context.stage}-attempt{attempt}" if attempt else context.stage
    if settings is not None:
        env["WANDB_PROJECT"] = settings.project
        if settings.entity:
            env["WANDB_ENTITY"] = settings.entity
        if settings.tags:
            env["WANDB_TAGS"] = ",".join(settings.tags)
    return env


@contextlib.contextmanager
def command_run(settings: Any, context: RunContext, workdir: str | Path) -> Iterator[dict[str, str]]:
    """The environment for one attempt of a command stage, with its run folder marked live."""
    attempt = attempt_number(os.environ)
    rid = run_id(context, job_key()) + (f"-a{attempt}" if attempt else "")
    folder = runs_root(workdir) / rid
    segment = folder / "segment-000"
    segment.mkdir(parents=True, exist_ok=True)
    marker = mark_live(folder)
    try:
        yield wandb_env(settings, context, segment, rid, os.environ)
    except BaseException:
        # submitit's requeue exits the job from inside this block: the marker stays, and
        # `hpcpipe sync` asks Slurm (see sync.liveness) until the job is over
        _remove_if_unused(folder)
        raise
    marker.unlink(missing_ok=True)
    _remove_if_unused(folder)


def _remove_if_unused(folder: Path) -> None:
    """A command that never called wandb.init() leaves no run folder behind."""
    try:
        folder.joinpath("segment-000").rmdir()  # only when empty
    except OSError:
        return
    for name in (LIVE_MARKER, JOB_RECORD):
        folder.joinpath(name).unlink(missing_ok=True)
    for path in (folder, folder.parent):
        try:
            path.rmdir()
        except OSError:
            return
