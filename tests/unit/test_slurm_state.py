"""squeue/sacct output -> job state, parsed as text (what Slurm 22.05 prints)."""

from __future__ import annotations

from hpcpipe.launch.slurm_state import JobState, from_queue, parse_sacct
from hpcpipe.queue_cache import parse

SQUEUE = (  # queue_cache.squeue_command's output
    "40|ann|RUNNING|None|gpu-node-07|1:02|0|\n"
    "41|ann|PENDING|Resources||0:00|0|\n"
    "400|ann|RUNNING|None|n1|0:01|2|\n"
)


def squeue_state(job_id: str) -> JobState | None:
    queued = parse(SQUEUE, "ann").get(job_id)
    return from_queue(queued) if queued else None


def test_pending_job_keeps_its_reason():
    state = squeue_state("41")
    assert state == JobState("PENDING", reason="Resources", node="", elapsed="0:00")
    assert state.describe() == "PENDING (Resources)"
    assert not state.final


def test_running_job_names_its_node_and_its_restarts():
    assert squeue_state("40").describe() == "RUNNING on gpu-node-07"
    assert squeue_state("400").restarts == 2


def test_a_job_not_in_the_queue_is_none():
    assert squeue_state("4") is None


def test_sacct_final_states_with_exit_code():
    text = "40|TIMEOUT|0:0|nid001|00:10:03\n"
    state = parse_sacct(text, "40")
    assert state.final and state.describe() == "TIMEOUT on nid001 exit code 0:0"
    cancelled = parse_sacct("40|CANCELLED by 0|0:15|nid001|00:00:04\n", "40")
    assert cancelled.state == "CANCELLED" and cancelled.final


def test_sacct_latest_record_of_a_requeued_job_wins():
    text = "40|PREEMPTED|0:0|n1|00:01:00\n40|RUNNING|0:0|n2|00:00:10\n"
    state = parse_sacct(text, "40")
    assert state.state == "RUNNING" and state.node == "n2" and not state.final


def test_out_of_memory_is_final():
    assert parse_sacct("7|OUT_OF_MEMORY|0:125|n1|00:00:30\n", "7").final
