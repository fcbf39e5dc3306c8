"""What the launcher knows about a stage execution that the job needs for tracking.

Kept free of wandb and torch: the launcher (login node) builds a ``RunContext`` and
pickles it into the job next to the params.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class RunContext:
    """One stage execution as the launcher resolved it."""

    stage: str
    fingerprint: str
    profile: str
    resources: Mapping[str, Any] = field(default_factory=dict)
    wandb_online: bool = False


def job_key(environ: Mapping[str, str] | None = None) -> str:
    """The scheduler's name for this job, the same across requeues of it.

    Slurm keeps the job id when it requeues a job (time limit with --requeue,
    preemption), so a requeued job finds its run again. An array task is its own
    job. Without a scheduler id (a bare process) the key is unique per process, so
    two executions never share a run.
    """
    env = os.environ if environ is None else environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"slurm-{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    if env.get("SLURM_JOB_ID"):
        return f"slurm-{env['SLURM_JOB_ID']}"
    if env.get("SUBMITIT_LOCAL_JOB_ID"):
        return f"local-{env['SUBMITIT_LOCAL_JOB_ID']}"
    return f"pid-{os.getpid()}-{time.time_ns()}"


def job_id(environ: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if environ is None else environ
    return env.get("SLURM_JOB_ID") or env.get("SUBMITIT_LOCAL_JOB_ID")


def node_name(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get("SLURMD_NODENAME") or socket.gethostname()


def run_id(context: RunContext, key: str) -> str:
    """Deterministic W&B run id: stage + fingerprint + job key.

    Same job requeued -> same id (one run, resumed). New params/inputs/code or a new
    submission -> a new id (a new run). Readable prefix, W&B-safe characters only.
    """
    digest = hashlib.sha256(f"{context.stage}\0{context.fingerprint}\0{key}".encode()).hexdigest()
    return f"{context.stage}-{digest[:12]}"
