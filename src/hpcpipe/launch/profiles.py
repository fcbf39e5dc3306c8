"""Cluster profile + stage -> submitit executor parameters. Pure: no I/O, no subprocess.

Kept apart from the code that submits so the translation can be tested as data,
and, for Slurm, as the sbatch text it produces (``sbatch_text``), against golden
files. The parameters are submitit's own names for each executor (the keywords
of ``SlurmExecutor``/``LocalExecutor.update_parameters``), so what is tested is
exactly what is submitted.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcpipe.config import Profile, Resources


def job_name(stage: str) -> str:
    return f"hpcpipe-{stage}"


def signal_delay_s(time_min: int) -> int:
    """How long before the time limit Slurm warns the job (USR2), so it can checkpoint and requeue.

    submitit's default, 90 s, would warn a short job as soon as it starts; a tenth
    of the limit, between 10 and 90 s, leaves short jobs their time and long ones
    enough to write a checkpoint.
    """
    return max(10, min(90, time_min * 60 // 10))


def resumable(function: Any) -> bool:
    """Whether a submitted callable resumes after a requeue: checkpointable in submitit's own
    sense (a ``checkpoint`` method, which its warning-signal handler calls before requeueing).
    A command stage's runner and a function stage that takes a ``checkpoint`` are."""
    return callable(getattr(function, "checkpoint", None))


def slurm_parameters(res: Resources, stage: str, requeue: bool = False) -> dict[str, Any]:
    """``SlurmExecutor`` keywords. Unset site options are left out so the site's defaults apply.

    ``requeue``: ``#SBATCH --requeue`` for a resumable stage. Where the site sets
    ``JobRequeue=0`` a job is not requeueable unless it asks, so submitit's ``scontrol
    requeue`` at the time-limit warning would fail and the job would die at its limit.
    """
    params: dict[str, Any] = {
        "job_name": job_name(stage),
        "time": res.time_min,
        "nodes": res.nodes,
        "ntasks_per_node": res.tasks,
        "cpus_per_task": res.cpus,
        "signal_delay_s": signal_delay_s(res.time_min),
    }
    if res.gpus:
        params["gpus_per_node"] = res.gpus
    additional: dict[str, Any] = {}
    if res.world_size > 1:
        # A task that dies without a word (killed, out of memory) ends the step, instead of
        # leaving the others blocked in a collective until the time limit (see launch.ranks).
        params["srun_args"] = ["--kill-on-bad-exit=1"]
        if res.gpus and res.tasks > 1:
            # every task sees every GPU of its node and picks its own by LOCAL_RANK
            # (torch.cuda.set_device): a site's default binding of one GPU per task would
            # leave rank 1 with one visible device and "invalid device ordinal"
            additional["gpu-bind"] = "none"
    if res.mem_gb is not None:
        mem = res.mem_gb
        params["mem"] = f"{int(mem)}GB" if mem == int(mem) else f"{round(mem * 1024)}MB"
    for key in ("partition", "constraint", "qos", "account"):
        value = getattr(res, key)
        if value:
            params[key] = value
    if res.setup:
        params["setup"] = list(res.setup)
    if requeue:
        additional["requeue"] = True
    if additional:
        params["additional_parameters"] = additional
    return params


def local_parameters(res: Resources) -> dict[str, Any]:
    """``LocalExecutor`` keywords: a subprocess gets the time limit, GPU visibility and setup lines."""
    params: dict[str, Any] = {
        "timeout_min": res.time_min,
        "gpus_per_node": res.gpus,
        "tasks_per_node": res.tasks,
    }
    if res.setup:
        params["setup"] = list(res.setup)
    return params


def sweep_resources(profile: Profile, stages: Sequence[str]) -> Resources:
    """What one sweep task asks for: it runs ``stages`` one after the other, inline.

    A profile's own ``stages: sweep:`` entry wins. Otherwise the task takes the
    resources of its most demanding stage (most GPUs, then CPUs), the largest memory
    of any, and the sum of their time limits, since the stages run in sequence. The task
    runs its stages in its own process, so it is one task on one node, whatever a stage's
    entry asks (a sweep of multi-GPU trainings gives ``sweep:`` its own entry).
    """
    if "sweep" in profile.stages:
        return profile.stages["sweep"]
    each = [profile.resources(stage) for stage in stages] or [profile.defaults]
    largest = max(each, key=lambda r: (r.gpus, r.cpus))
    memory = [r.mem_gb for r in each if r.mem_gb is not None]
    return dataclasses.replace(
        largest,
        cpus=max(r.cpus for r in each),
        mem_gb=max(memory) if memory else None,
        time_min=sum(r.time_min for r in each),
        nodes=1,
        tasks_per_node=1,
    )


def executor_parameters(profile: Profile, stage: str, requeue: bool = False) -> dict[str, Any]:
    """The keywords for ``stage`` under ``profile``'s executor (empty for ``inline``).

    ``requeue``: the stage resumes after a requeue (see ``resumable``); only Slurm needs
    to be told (submitit's local executor requeues a checkpointable job by itself).
    """
    res = profile.resources(stage)
    if profile.executor == "slurm":
        return slurm_parameters(res, stage, requeue)
    if profile.executor == "local":
        return local_parameters(res)
    return {}


def sbatch_text(
    profile: Profile, stage: str, folder: Path, command: str = "COMMAND", requeue: bool = False
) -> str:
    """The sbatch script submitit would write for ``stage`` (for golden tests and ``hpcpipe cluster``).

    Uses submitit's own script builder, which needs no Slurm installed.
    """
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(
        command=command, folder=folder, **slurm_parameters(profile.resources(stage), stage, requeue)
    )
