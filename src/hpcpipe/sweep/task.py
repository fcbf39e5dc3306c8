"""Job side of a sweep: what one array task (or one local subprocess) runs for its point.

The point's stages run inline in this task (``HPCPIPE_CLUSTER=inline``): the task
already holds the node the profile asked for, and a job submitted from a job
would queue behind itself. Only the affected stages are reproduced, in pipeline
order, with ``dvc repro --single-item``: the upstream ones were brought up to
date once in the project before submission and their outputs are linked from the
shared cache, so DVC never looks at (or reruns) them here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcpipe.launch.cpu_threads import size_math_threads


def task_env(workspace: Path, environ: dict[str, str]) -> dict[str, str]:
    """The environment for ``dvc repro`` in the point's workspace.

    The workspace's own ``src`` comes first on PYTHONPATH, so the stage code DVC
    hashes as a dependency is the code that runs. Math libraries get the task's
    CPU count (a Slurm task's allocation; else what the sweep gave each local point).
    """
    # The stages run as plain subprocesses of this task, not as submitit jobs: without
    # submitit's variables they keep their checkpoints in their own workspace (see
    # hpcpipe.launch.job.checkpoint_folder), not in the job folder every point shares.
    env = {k: v for k, v in environ.items() if not k.startswith("SUBMITIT_")}
    env["HPCPIPE_CLUSTER"] = "inline"
    src = workspace / "src"
    if src.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), environ.get("PYTHONPATH", "")) if p)
    size_math_threads(env, fallback=environ.get("HPCPIPE_POINT_THREADS"))
    return env


class PointRunner:
    """What each array task runs; checkpointable in submitit's sense.

    At the time-limit or preemption signal submitit asks ``checkpoint`` and requeues
    the task instead of failing it; the next attempt runs the same ``dvc repro`` in the
    same workspace, where ``train`` resumes from its last per-epoch checkpoint.
    """

    def __call__(self, workspace: str, checkout: Sequence[str], stages: Sequence[str]) -> str:
        """Link reused outputs, reproduce the point's stages; raise on failure so the task FAILS."""
        where = Path(workspace)
        env = task_env(where, dict(os.environ))
        print(f"hpcpipe sweep: point workspace {where} on {os.uname().nodename}", flush=True)
        if checkout:
            # --allow-missing: outputs of affected stages are only in the cache when a
            # point equals what the project last ran; then DVC skips that stage.
            subprocess.run(["dvc", "checkout", "--allow-missing", *checkout], cwd=where, env=env, check=False)
        code = subprocess.run(["dvc", "repro", "--single-item", *stages], cwd=where, env=env).returncode
        sys.stdout.flush()
        if code != 0:
            raise RuntimeError(f"dvc repro exited with status {code} in {where}")
        return str(where)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


run_point = PointRunner()
