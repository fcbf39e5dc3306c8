"""Job side: where this task sits in a multi-task stage, as torchrun would tell it.

A stage whose profile entry asks for several tasks (``nodes``, ``gpus`` per node,
``tasks_per_node``) is one Slurm job of ``nodes x tasks`` tasks: sbatch's script starts
the job side once per task (submitit's ``srun``), and every task runs the stage's
function or command. Before it does, the task's environment gets what ``torchrun``
sets, so ``torch.distributed.init_process_group("env://")`` (or ``init_method``
left out) just works, in a function stage and in a user's own script alike:

==================  ===================================================================
``RANK``            ``SLURM_PROCID``
``WORLD_SIZE``      ``SLURM_NTASKS``
``LOCAL_RANK``      ``SLURM_LOCALID``
``LOCAL_WORLD_SIZE`` this node's count in ``SLURM_TASKS_PER_NODE`` (``2(x3),1``: what
                    Slurm actually started here), else ``SLURM_NTASKS_PER_NODE``
``MASTER_ADDR``     the first host of ``SLURM_JOB_NODELIST`` (where Slurm puts task 0)
``MASTER_PORT``     ``master_port(SLURM_JOB_ID)``
==================  ===================================================================

The port is derived from the job id, never the fixed 29500 of the tutorials: two
jobs sharing a node (Perlmutter's ``shared`` QoS) would both bind 29500 and one
would fail with "address already in use". It lies below Linux's ephemeral range
(32768 and up), so no outgoing connection on the node can hold it by chance, and
above the privileged ports. A requeued job keeps its id, and so its port; its
previous attempt's processes are gone by then.

Under submitit's local executor (``tasks_per_node`` on a laptop) the same variables
come from submitit's ``SUBMITIT_LOCAL_*`` ones, with the master on 127.0.0.1.

Nothing is set for a single-task stage, nor outside a submitit job (the inline
executor inside an allocation, where ``SLURM_NTASKS`` describes the allocation,
not the stage): ``placement`` is then None.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

PORT_BASE = 15000  # MASTER_PORT = PORT_BASE + job id % PORT_SPAN: 15000..29999
PORT_SPAN = 15000
TORCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


class PlacementError(RuntimeError):
    """Slurm's variables for a multi-task job are missing or malformed."""


@dataclass(frozen=True)
class Placement:
    """One task of a multi-task job."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    master_addr: str
    master_port: int
    node: str = ""  # this task's node, for messages

    @property
    def leader(self) -> bool:
        """Rank 0: the task that publishes outputs, checkpoints, metrics and the W&B run."""
        return self.rank == 0

    def env(self) -> dict[str, str]:
        """The torchrun variables, as strings."""
        values = (
            self.rank,
            self.world_size,
            self.local_rank,
            self.local_world_size,
            self.master_addr,
            self.master_port,
        )
        return {name: str(value) for name, value in zip(TORCH_VARIABLES, values, strict=True)}

    def describe(self) -> str:
        where = f", on {self.node}" if self.node else ""
        return f"rank {self.rank} of {self.world_size}{where}"


def master_port(job_id: str | int) -> int:
    """The rendezvous port of a job: ``PORT_BASE + id % PORT_SPAN`` (see the module docstring).

    An array task's id (``123_4``) counts by its own Slurm id when it has one; otherwise
    both parts are mixed so that two tasks of one array differ.
    """
    text = str(job_id)
    digits = [int(part) for part in re.findall(r"\d+", text)]
    if not digits:
        raise PlacementError(f"no job id to derive MASTER_PORT from: {text!r}")
    number = digits[0] if len(digits) == 1 else digits[0] * 1009 + digits[1]
    return PORT_BASE + number % PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a Slurm hostlist: ``nid[001234-001237,001240],gpu7`` -> ``nid001234``."""
    text = nodelist.strip()
    match = re.match(r"([^,\[]*)(?:\[([^\]]*)\]([^,]*))?", text)
    if not text or match is None or not (match.group(1) or match.group(2)):
        raise PlacementError(f"SLURM_JOB_NODELIST is not a host list: {nodelist!r}")
    prefix, ranges, suffix = match.group(1), match.group(2), match.group(3) or ""
    if ranges is None:
        return prefix
    first = re.split(r"[,-]", ranges, maxsplit=1)[0]
    if not first:
        raise PlacementError(f"SLURM_JOB_NODELIST is not a host list: {nodelist!r}")
    return f"{prefix}{first}{suffix}"


def tasks_on_nodes(tasks_per_node: str) -> list[int]:
    """Slurm's compressed ``SLURM_TASKS_PER_NODE``, one count per node: ``2(x3),1`` -> [2, 2, 2, 1]."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        match = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if match is None:
            raise PlacementError(f"SLURM_TASKS_PER_NODE is not Slurm's task counts: {tasks_per_node!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    return counts


def _int(environ: Mapping[str, str], name: str) -> int:
    value = environ.get(name, "")
    if not value.strip().isdigit():
        raise PlacementError(f"{name} is {value!r} in a multi-task job; expected a number")
    return int(value)


def from_slurm(environ: Mapping[str, str]) -> Placement:
    """This task's placement from the variables Slurm gives each task of a job step."""
    rank, world = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_NTASKS")
    local = _int(environ, "SLURM_LOCALID")
    node_index = _int(environ, "SLURM_NODEID") if environ.get("SLURM_NODEID") else 0
    if environ.get("SLURM_TASKS_PER_NODE"):
        counts = tasks_on_nodes(environ["SLURM_TASKS_PER_NODE"])
        if node_index >= len(counts):
            nodes = len(counts)
            raise PlacementError(f"SLURM_NODEID {node_index}, but SLURM_TASKS_PER_NODE counts {nodes} nodes")
        local_world = counts[node_index]
    else:
        local_world = _int(environ, "SLURM_NTASKS_PER_NODE")
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or ""
    return Placement(
        rank=rank,
        world_size=world,
        local_rank=local,
        local_world_size=local_world,
        master_addr=first_host(environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST") or ""),
        master_port=master_port(job_id),
        node=environ.get("SLURMD_NODENAME", ""),
    )


def from_submitit_local(environ: Mapping[str, str]) -> Placement:
    """The same under submitit's local executor: one node, this machine."""
    rank = _int(environ, "SUBMITIT_LOCAL_GLOBALID")
    world = _int(environ, "SUBMITIT_LOCAL_NTASKS")
    return Placement(
        rank=rank,
        world_size=world,
        local_rank=_int(environ, "SUBMITIT_LOCAL_LOCALID"),
        local_world_size=world,
        master_addr="127.0.0.1",
        master_port=master_port(environ.get("SUBMITIT_LOCAL_JOB_ID", "")),
        node="localhost",
    )


def placement(environ: Mapping[str, str]) -> Placement | None:
    """This task's place in a multi-task submitit job; None for a single task or outside one."""
    executor = environ.get("SUBMITIT_EXECUTOR")
    if executor == "slurm" and environ.get("SLURM_NTASKS", "1") not in ("", "1"):
        return from_slurm(environ)
    if executor == "local" and environ.get("SUBMITIT_LOCAL_NTASKS", "1") not in ("", "1"):
        return from_submitit_local(environ)
    return None
