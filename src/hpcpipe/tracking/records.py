"""Read back what an offline W&B run wrote: the records of its ``.wandb`` file.

Why here and not wandb's: from 0.2x the reader lives in the Go core (``wandb-core``)
and the Python package no longer ships ``sdk.internal.datastore``. The format is small
and stable: a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then the LevelDB
log format: 32 KiB blocks of records, each ``crc32c:u32 length:u16 type:u8`` + payload,
a payload split FIRST/MIDDLE/LAST across blocks, each payload a serialised
``wandb_internal_pb2.Record``.

Used by ``tracking.run`` to replay an earlier segment's history into a requeued job's
run (see there why), and by the tests to assert config, history and summary.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILE_HEADER = struct.Struct("<4sHB")
RECORD_HEADER = struct.Struct("<IHB")
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def raw_records(path: Path) -> Iterator[bytes]:
    """Each record's payload bytes, in order. A torn tail (a killed job) ends the scan quietly."""
    data = path.read_bytes()
    if len(data) < FILE_HEADER.size:
        return
    ident, magic, _version = FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file")
    pos, pending = FILE_HEADER.size, b""
    while pos + RECORD_HEADER.size <= len(data):
        space = BLOCK - pos % BLOCK
        if space < RECORD_HEADER.size:  # the block's tail is zero padding
            pos += space
            continue
        _crc, length, kind = RECORD_HEADER.unpack_from(data, pos)
        start = pos + RECORD_HEADER.size
        if kind == 0 or start + length > len(data):
            return
        payload, pos = data[start : start + length], start + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            pending = payload
        elif kind == MIDDLE:
            pending += payload
        elif kind == LAST:
            yield pending + payload
            pending = b""


def _items(items: Any) -> dict[str, Any]:
    out = {}
    for item in items:
        key = "/".join(item.nested_key) if item.nested_key else item.key
        out[key] = json.loads(item.value_json)
    return out


@dataclass
class OfflineRun:
    """What one ``.wandb`` file says: the run, its config, history rows and summary."""

    run_id: str = ""
    project: str = ""
    group: str = ""
    tags: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def has_exit_record(path: Path) -> bool:
    """Whether the ``.wandb`` file holds the run's exit record, the last one wandb writes."""
    from wandb.proto import wandb_internal_pb2 as pb

    for payload in raw_records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") == "exit":
            return True
    return False


def read_run(path: Path) -> OfflineRun:
    """Parse ``run-ID.wandb`` (or the offline run folder holding it)."""
    from wandb.proto import wandb_internal_pb2 as pb

    if path.is_dir():
        path = next(path.glob("*.wandb"))
    run = OfflineRun()
    for payload in raw_records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project = record.run.run_id, record.run.project
            run.group, run.tags = record.run.run_group, tuple(record.run.tags)
            run.config.update(_items(record.run.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
        elif kind == "summary":
            run.summary.update(_items(record.summary.update))
            for item in record.summary.remove:
                run.summary.pop(item.key, None)
    return run
