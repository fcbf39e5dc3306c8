"""Which jobs Slurm still has: the one question ``hpcpipe sync`` asks Slurm.

A run must not be uploaded while Slurm may still run its job again (a requeue
after a time limit, a preemption, a node failure, ``scontrol requeue``): the next
attempt writes a newer, longer segment of the same run. ``squeue`` without
``--states`` lists exactly the jobs Slurm still has (pending, requeued, held,
running, completing) and none that ended, so one call per sync pass answers for
every run.

Array tasks are named as squeue's ``%i`` names them, ``ARRAYID_TASK``: a task's
own ``SLURM_JOB_ID`` is another number (and the array's last task may run under
the array's id, which squeue also prints, as ``%A``, for every task still
pending), so only the ``%i`` name identifies a task. ``job_name`` gives a job's
name from its environment the same way.

``sync`` asks it through the project's shared answer (``hpcpipe.queue_cache``, one
user's jobs, ``-t all``: ``Answer.still_has`` leaves out the ended ones, as squeue
without ``--states`` does); ``queued_jobs`` asks squeue directly, for a run whose
record names no user (everyone's jobs).

Kept in ``tracking`` (not ``launch.slurm_state``) so that ``tracking`` never
imports ``launch``: ``launch`` imports ``tracking``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping

SQUEUE_TIMEOUT_S = 20


def job_name(environ: Mapping[str, str]) -> str | None:
    """This job's name in squeue's ``%i`` column: ``ID_TASK`` for an array task, else its id."""
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID") or None


def parse_queue(text: str) -> frozenset[str]:
    """``squeue -h -r -o %i`` lines -> the job names (``123``, ``456_7``) in the queue."""
    return frozenset(line.strip() for line in text.splitlines() if line.strip())


def queued_jobs(user: str | None) -> frozenset[str] | None:
    """Every job of ``user`` (everyone's: None) that Slurm still has, by name; None when
    squeue did not answer (no Slurm here, SLURM_CONF unset, slurmctld down)."""
    command = ["squeue", "-h", "-r", "-o", "%i", *(["-u", user] if user else [])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=SQUEUE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_queue(done.stdout) if done.returncode == 0 else None
