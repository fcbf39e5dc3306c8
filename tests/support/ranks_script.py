"""A user's own multi-task script, run once per task by a command stage (test_slurm_scale.py),
and two function stages that run on every task.

The script knows nothing of hpcpipe: it reads torchrun's variables (RANK, WORLD_SIZE, ...)
and HPCPIPE_CHECKPOINT_DIR, as any `torchrun`-style script does.

    python ranks_script.py allreduce OUT        # gloo all_reduce of rank + 1 over every task
    python ranks_script.py fail RANK CODE       # that rank exits CODE; the others wait (to be stopped)
    python ranks_script.py resume OUT PROGRESS  # saves, waits for a requeue, resumes from what it saved

The function stages (``hpcpipe run NAME --fn ranks_script:write_rank --source ... --result
... --report ...``) write which rank wrote their outputs; ``fail_on_rank_1`` raises there.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

from hpcpipe.config import TrainParams
from hpcpipe.stage_function import stage_function

TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def allreduce(out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")  # env://: MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE
    value = torch.tensor([dist.get_rank() + 1.0])
    dist.all_reduce(value)
    seen = [None] * dist.get_world_size()
    env = {name: os.environ[name] for name in TORCHRUN}
    dist.all_gather_object(seen, {"node": os.environ.get("SLURMD_NODENAME", socket.gethostname()), **env})
    if dist.get_rank() == 0:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps({"sum": value.item(), "ranks": seen}))
    dist.destroy_process_group()


def fail(rank: str, code: str) -> None:
    if os.environ["RANK"] == rank:
        print(f"rank {rank}: giving up", file=sys.stderr, flush=True)
        sys.exit(int(code))
    time.sleep(600)  # a peer blocked on the failed one: hpcpipe must stop it


def resume(out: str, progress: str) -> None:
    rank = os.environ["RANK"]
    saved = Path(os.environ["HPCPIPE_CHECKPOINT_DIR"]) / f"rank-{rank}.json"
    if not saved.exists():  # first attempt: save, say so, wait to be stopped and requeued
        saved.write_text(json.dumps({"rank": rank, "step": 1}))
        Path(progress).mkdir(parents=True, exist_ok=True)

        def stopped(signum: int, frame: object) -> None:  # SIGTERM: Slurm's, or hpcpipe's at the warning
            Path(progress, f"sigterm-{rank}").write_text("")
            sys.exit(0)

        signal.signal(signal.SIGTERM, stopped)
        Path(progress, f"saved-{rank}").write_text(os.environ.get("SLURM_JOB_ID", ""))
        time.sleep(600)
        sys.exit(1)
    state = json.loads(saved.read_text())
    resumed = Path(os.environ["HPCPIPE_CHECKPOINT_DIR"]) / f"resumed-{rank}"
    resumed.write_text(json.dumps({**state, "restart": os.environ.get("SLURM_RESTART_COUNT", "0")}))
    if rank == "0":  # rank 0 writes the output, once every rank resumed
        world = int(os.environ["WORLD_SIZE"])
        while len(list(resumed.parent.glob("resumed-*"))) < world:
            time.sleep(0.2)
        ends = [json.loads(p.read_text()) for p in sorted(resumed.parent.glob("resumed-*"))]
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(ends))


@stage_function(schema={"train": TrainParams})
def write_rank(params, *, source: Path, result: Path, report: Path) -> dict:
    """Every rank writes its outputs (to the paths it was given) and returns its rank."""
    rank = os.environ.get("RANK", "none")
    result.write_text(f"rank {rank} of {os.environ.get('WORLD_SIZE', 'none')}")
    report.mkdir()
    (report / "rank.json").write_text(json.dumps({"rank": rank, "source": source.read_text()}))
    return {"rank": int(rank) if rank.isdigit() else -1}


@stage_function(schema={"train": TrainParams})
def fail_on_rank_1(params, *, source: Path, result: Path, report: Path) -> dict:
    if os.environ.get("RANK") == "1":
        raise ValueError("rank 1 broke on purpose")
    return write_rank(params, source=source, result=result, report=report)


if __name__ == "__main__":
    {"allreduce": allreduce, "fail": fail, "resume": resume}[sys.argv[1]](*sys.argv[2:])
