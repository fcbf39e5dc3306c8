"""torchrun's variables from Slurm's (launch.distributed), and how ranks report their ends (launch.ranks).

Pure: environments are given as mappings, as Slurm sets them for one task of a job step
(values seen on the two-node test cluster and in Slurm's documentation).
"""

from __future__ import annotations

import pytest

from hpcpipe.launch.distributed import (
    PORT_BASE,
    PORT_SPAN,
    Placement,
    PlacementError,
    first_host,
    master_port,
    placement,
    tasks_on_nodes,
)
from hpcpipe.launch.ranks import RankBoard, worst

# rank 5 of a 2-node, 4-GPU-per-node Perlmutter job: the second node's second task
PERLMUTTER_TASK = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "31415926",
    "SLURM_PROCID": "5",
    "SLURM_NTASKS": "8",
    "SLURM_LOCALID": "1",
    "SLURM_NODEID": "1",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_TASKS_PER_NODE": "4(x2)",
    "SLURM_JOB_NODELIST": "nid[001234,001240]",
    "SLURMD_NODENAME": "nid001240",
}


def test_a_task_gets_what_torchrun_would_set():
    place = placement(PERLMUTTER_TASK)
    assert place is not None and not place.leader
    assert place.env() == {
        "RANK": "5",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "nid001234",
        "MASTER_PORT": str(PORT_BASE + 31415926 % PORT_SPAN),
    }
    assert place.describe() == "rank 5 of 8, on nid001240"


def test_local_world_size_is_what_slurm_started_on_this_node():
    """``-n 7 -N 2`` puts 4 tasks on the first node and 3 on the second; SLURM_NTASKS_PER_NODE
    is unset without --ntasks-per-node."""
    env = {k: v for k, v in PERLMUTTER_TASK.items() if k != "SLURM_NTASKS_PER_NODE"}
    env.update(SLURM_NTASKS="7", SLURM_TASKS_PER_NODE="4,3", SLURM_PROCID="6", SLURM_LOCALID="2")
    assert placement(env).local_world_size == 3  # type: ignore[union-attr]
    assert tasks_on_nodes("2(x3),1") == [2, 2, 2, 1]
    only_requested = {k: v for k, v in PERLMUTTER_TASK.items() if k != "SLURM_TASKS_PER_NODE"}
    assert placement(only_requested).local_world_size == 4  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [
        ("nid001234", "nid001234"),
        ("localhost,vm", "localhost"),
        ("nid[001234-001237,001240]", "nid001234"),
        ("nid[001240],gpu7", "nid001240"),
        ("rack[3-4]-ib,x1", "rack3-ib"),
    ],
)
def test_master_is_the_first_host_of_the_nodelist(nodelist, first):
    assert first_host(nodelist) == first


def test_the_port_comes_from_the_job_id_and_never_collides_with_a_fixed_one():
    """Two jobs on one shared node must not both bind 29500; the port is an unprivileged
    one below Linux's ephemeral range, the same for every task and every attempt of a job."""
    ports = {master_port(job) for job in range(1_000_000, 1_000_050)}
    assert len(ports) == 50
    assert all(1024 <= port < 32768 for port in ports)
    assert master_port("123_4") != master_port("123_5")  # array tasks
    with pytest.raises(PlacementError):
        master_port("")


def test_single_task_and_non_submitit_processes_get_nothing():
    """A one-task stage keeps its old environment; inside an allocation (the inline
    executor) SLURM_NTASKS describes the allocation, not the stage."""
    assert placement({**PERLMUTTER_TASK, "SLURM_NTASKS": "1"}) is None
    assert placement({k: v for k, v in PERLMUTTER_TASK.items() if k != "SUBMITIT_EXECUTOR"}) is None
    assert placement({}) is None


def test_submitit_local_tasks_meet_on_this_machine():
    env = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_JOB_ID": "4242",
    }
    place = placement(env)
    assert place is not None
    assert (place.rank, place.world_size, place.local_world_size, place.master_addr) == (1, 2, 2, "127.0.0.1")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"SLURM_PROCID": ""}, "SLURM_PROCID is ''"),
        ({"SLURM_TASKS_PER_NODE": "four"}, "SLURM_TASKS_PER_NODE is not"),
        ({"SLURM_JOB_NODELIST": ""}, "SLURM_JOB_NODELIST is not a host list"),
    ],
)
def test_malformed_slurm_variables_are_named(change, message):
    with pytest.raises(PlacementError, match=message):
        placement({**PERLMUTTER_TASK, **change})


def _place(rank: int, world: int = 3) -> Placement:
    return Placement(rank, world, rank, world, "localhost", 15000, node=f"n{rank}")


def test_ranks_record_their_ends_and_the_worst_failure_is_the_jobs(tmp_path):
    boards = [RankBoard(tmp_path, _place(rank)) for rank in range(3)]
    boards[0].record(0)
    assert boards[0].failure_elsewhere() is None
    boards[2].record(3)
    boards[1].record(143, "stopped: rank 2 failed", stopped=True)
    assert boards[0].failure_elsewhere().rank == 2  # type: ignore[union-attr]
    ends = boards[0].wait_for_all()
    assert sorted(ends) == [0, 1, 2]
    bad = worst(ends)
    assert bad is not None and (bad.rank, bad.code) == (2, 3)  # not the stopped rank's 143
    assert bad.describe(3) == "rank 2 of 3, on n2 exited with status 3"


def test_ends_at_the_warning_are_not_failures(tmp_path):
    boards = [RankBoard(tmp_path, _place(rank, 2)) for rank in range(2)]
    boards[1].record(143, warned=True)
    boards[0].record(0)
    assert boards[0].failure_elsewhere() is None and worst(boards[0].wait_for_all()) is None


def test_waiting_stops_when_told(tmp_path):
    board = RankBoard(tmp_path, _place(0))
    board.record(0)
    assert list(board.wait_for_all(until=lambda: True)) == [0]
