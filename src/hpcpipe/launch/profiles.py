"""Cluster profile + stage -> submitit parameters. Pure: no I/O, no subprocess.

Kept apart from the code that submits so the translation can be tested as data
(and, for Slurm, as the sbatch text it produces).
"""

from __future__ import annotations

from typing import Any

from hpcpipe.config import Profile


def executor_parameters(profile: Profile, stage: str) -> dict[str, Any]:
    """The ``AutoExecutor.update_parameters`` keywords for ``stage`` under ``profile``.

    Generic keys (timeout, CPUs, GPUs, memory) are understood by every submitit
    executor; ``slurm_*`` keys are ignored by the local one. Unset resources are
    left out so the site's defaults apply.
    """
    res = profile.resources(stage)
    params: dict[str, Any] = {
        "name": f"hpcpipe-{stage}",
        "timeout_min": res.time_min,
        "cpus_per_task": res.cpus,
        "gpus_per_node": res.gpus,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if res.mem_gb is not None:
        params["mem_gb"] = res.mem_gb
    slurm_keys = {
        "slurm_partition": res.partition,
        "slurm_constraint": res.constraint,
        "slurm_qos": res.qos,
        "slurm_account": res.account,
    }
    params.update({k: v for k, v in slurm_keys.items() if v})
    if res.setup:
        params[f"{profile.executor}_setup"] = list(res.setup)
    return params
