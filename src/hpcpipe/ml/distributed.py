"""One stage on several tasks: the torch.distributed plumbing, read from the torchrun environment.

The job side starts the same stage function once per Slurm task, with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` set as torchrun sets them (a user's ``torchrun`` gives the same).
``session()`` reads them, picks the task's device and, with more than one task,
joins the process group: NCCL on GPUs, gloo on CPUs. With ``WORLD_SIZE`` unset or
1 it is a no-op: one process, ``pick_device()``'s device, no collective anywhere,
so a one-task run is exactly what it was before multi-task stages existed.

Which GPU: Slurm may bind one GPU per task (``--gpus-per-task``, ``--gpu-bind``),
and then ``CUDA_VISIBLE_DEVICES`` holds one device and the task's GPU is index 0
whatever its ``LOCAL_RANK``; or every task sees all the node's GPUs and takes
``LOCAL_RANK``'s. ``device_for`` handles both, and says in one line when neither
fits instead of CUDA's "invalid device ordinal".

The helpers below (``agree``, ``sum_across``, ``gather_rows``, ``barrier``) are the
only collectives the recipe uses; each is the identity for one task.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among the tasks of one stage."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def primary(self) -> bool:
        """Rank 0: the one task that writes outputs, checkpoints, metrics and the W&B run."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def read_env(environ: Mapping[str, str] | None = None) -> Ranks:
    """The torchrun variables as ``Ranks`` (device not chosen yet); one task when ``WORLD_SIZE`` is unset.

    A missing or inconsistent variable is a one-line ``ValueError`` naming it: a task
    that guessed its rank would deadlock the others or write over rank 0's outputs.
    """
    env = os.environ if environ is None else environ
    if env.get("WORLD_SIZE", "1") in ("", "1"):
        return Ranks()
    values: dict[str, int] = {}
    for name in ENV:
        raw = env.get(name)
        try:
            values[name] = int(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}={raw!r}: a stage with WORLD_SIZE={env['WORLD_SIZE']} needs {', '.join(ENV)}, "
                "MASTER_ADDR and MASTER_PORT set as torchrun sets them"
            ) from None
    rank, world, local, local_world = (values[name] for name in ENV)
    if not (0 <= rank < world and 0 <= local < local_world <= world):
        raise ValueError(
            f"RANK={rank} WORLD_SIZE={world} LOCAL_RANK={local} LOCAL_WORLD_SIZE={local_world}: "
            "inconsistent (need 0 <= RANK < WORLD_SIZE, 0 <= LOCAL_RANK < LOCAL_WORLD_SIZE <= WORLD_SIZE)"
        )
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not env.get(name):
            raise ValueError(f"{name} is not set: a stage with WORLD_SIZE={world} needs it to find rank 0")
    return Ranks(rank, world, local, local_world)


def pick_device() -> torch.device:
    """One task: the GPU if there is one, else the CPU (what the recipe always did)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_for(ranks: Ranks) -> torch.device:
    """This task's device: see the module docstring for the two ways Slurm shows GPUs."""
    if not ranks.distributed or not torch.cuda.is_available():
        return pick_device()
    visible = torch.cuda.device_count()
    if visible == 1:
        return torch.device("cuda", 0)  # bound to its own GPU: index 0 whatever LOCAL_RANK says
    if ranks.local_rank < visible:
        return torch.device("cuda", ranks.local_rank)
    raise ValueError(
        f"LOCAL_RANK={ranks.local_rank} but this task sees {visible} GPUs "
        f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}); "
        "ask for one GPU per task (gpus_per_node equal to the tasks per node)"
    )


@contextlib.contextmanager
def session(environ: Mapping[str, str] | None = None) -> Iterator[Ranks]:
    """This task's ``Ranks`` (with its device) for the block, inside the process group if several.

    A process group that is already up (a user's script that called
    ``init_process_group`` itself) is used as it is and left up; one started here is
    destroyed at the end of the block.
    """
    ranks = read_env(environ)
    device = device_for(ranks)
    ranks = Ranks(ranks.rank, ranks.world_size, ranks.local_rank, ranks.local_world_size, device)
    if not ranks.distributed:
        yield ranks
        return
    started = not dist.is_initialized()
    if started:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=ranks.rank, world_size=ranks.world_size)
    elif dist.get_world_size() != ranks.world_size or dist.get_rank() != ranks.rank:
        raise ValueError(
            f"the process group already up is rank {dist.get_rank()} of {dist.get_world_size()}, "
            f"but the environment says RANK={ranks.rank} WORLD_SIZE={ranks.world_size}"
        )
    try:
        yield ranks
    finally:
        if started and dist.is_initialized():
            dist.destroy_process_group()


def barrier(ranks: Ranks) -> None:
    if ranks.distributed:
        dist.barrier()


def agree(ranks: Ranks, flag: bool) -> bool:
    """True on every rank if ``flag`` is true on any (the stop at the warning signal)."""
    if not ranks.distributed:
        return flag
    value = torch.tensor([int(flag)], device=ranks.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_across(ranks: Ranks, *values: Tensor) -> list[Tensor]:
    """Each of ``values`` (0-d tensors on the device) summed over the ranks, in one all_reduce."""
    if not ranks.distributed:
        return list(values)
    packed = torch.stack([v.double() for v in values])
    dist.all_reduce(packed)
    return [p.to(v.dtype) for p, v in zip(packed, values, strict=True)]


def shard_bounds(n: int, ranks: Ranks) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous share of ``n`` items (sizes differ by at most 1)."""
    return n * ranks.rank // ranks.world_size, n * (ranks.rank + 1) // ranks.world_size


def gather_rows(ranks: Ranks, rows: Tensor) -> Tensor:
    """Every rank's ``rows`` (1-D, lengths may differ by rank) concatenated in rank order, on every rank."""
    if not ranks.distributed:
        return rows
    rows = rows.to(ranks.device)
    length = torch.tensor([len(rows)], device=ranks.device)
    lengths = [torch.zeros_like(length) for _ in range(ranks.world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(x.item() for x in lengths))
    padded = torch.zeros(longest, dtype=rows.dtype, device=ranks.device)
    padded[: len(rows)] = rows
    parts = [torch.zeros_like(padded) for _ in range(ranks.world_size)]
    dist.all_gather(parts, padded)
    return torch.cat([p[: int(n.item())] for p, n in zip(parts, lengths, strict=True)]).cpu()


def broadcast_buffers(ranks: Ranks, model: torch.nn.Module) -> None:
    """Make every rank's buffers (BatchNorm running statistics) rank 0's."""
    if ranks.distributed:
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
