"""The ledger: one entry per stage, replaced atomically; the resources a job was asked for.

What a job's outcome depends on (the fingerprint) is DVC's view of the stage: see
test_dvc_stage.py. Here: what the ledger keeps beside it.
"""

from __future__ import annotations

import dataclasses

from hpcpipe.config import Profile, Resources
from hpcpipe.launch.ledger import Entry, Ledger
from hpcpipe.launch.submission import resources_digest


def test_entries_round_trip_and_replace(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    first = Entry("train", "11", "slurm", "abc", "/jobs/train", "/o", "/e", 100.0, resources="r1")
    ledger.put(first)
    ledger.put(dataclasses.replace(first, job_id="12"))
    assert ledger.get("train").job_id == "12"
    assert ledger.get("train").resources == "r1"
    assert ledger.get("prepare") is None
    assert [e.stage for e in ledger.entries()] == ["train"]
    assert (tmp_path / "ledger").stat().st_mode & 0o777 == 0o700


def test_foreach_members_and_nested_dvc_files_get_their_own_entries(tmp_path):
    ledger = Ledger(tmp_path / "ledger")
    for stage in ("fold@1", "fold@2", "sub/dvc.yaml:train"):
        ledger.put(Entry(stage, stage, "local", "fp", "/f", "", "", 1.0))
    assert ledger.get("sub/dvc.yaml:train").job_id == "sub/dvc.yaml:train"
    assert sorted(e.stage for e in ledger.entries()) == ["fold@1", "fold@2", "sub/dvc.yaml:train"]
    assert all("/" not in p.name.removesuffix(".json") for p in (tmp_path / "ledger").iterdir())


def test_an_entry_written_before_resources_were_recorded_still_reads():
    entry = Entry("train", "1", "slurm", "fp", "/f", "", "", 1.0)
    assert entry.resources == ""  # never equal to a digest: such a job is not reattached


def test_the_resources_digest_follows_what_the_scheduler_is_asked_for():
    base = Profile(name="p", executor="slurm", stages={"train": Resources(gpus=1, mem_gb=32)})
    digest = resources_digest(base, "train")
    assert resources_digest(base, "train") == digest
    more_memory = dataclasses.replace(base, stages={"train": Resources(gpus=1, mem_gb=64)})
    assert resources_digest(more_memory, "train") != digest
    longer = dataclasses.replace(base, stages={"train": Resources(gpus=1, mem_gb=32, time_min=600)})
    assert resources_digest(longer, "train") != digest
    assert resources_digest(dataclasses.replace(base, poll_s=9.0), "train") == digest  # not a resource


def test_keys_added_to_resources_later_leave_recorded_digests_alone():
    """A job recorded before `nodes`/`tasks_per_node` existed keeps its digest across the
    upgrade (else a running job would be cancelled and resubmitted); setting them counts."""
    import hashlib
    import json

    base = Profile(name="p", executor="slurm", stages={"train": Resources(gpus=1, mem_gb=32)})
    before = {"executor": "slurm", **dataclasses.asdict(Resources(gpus=1, mem_gb=32))}
    del before["nodes"], before["tasks_per_node"]  # what the digest held before the keys existed
    old = hashlib.sha256(json.dumps(before, sort_keys=True, default=str).encode()).hexdigest()[:16]
    assert resources_digest(base, "train") == old
    two_nodes = dataclasses.replace(base, stages={"train": Resources(gpus=1, mem_gb=32, nodes=2)})
    assert resources_digest(two_nodes, "train") != old
