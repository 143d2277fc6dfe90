"""Reads what a W&B run logged offline, from its ``run-<id>.wandb`` file (a LevelDB-style record log)."""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK_SIZE = 32 * 1024
HEADER_SIZE = 7  # crc32 (4), length (2), record type (1)
FULL, LAST = 1, 4


@dataclass
class LoggedRun:
    """What an offline run recorded."""

    history_keys: set[str] = field(default_factory=set)
    config_keys: set[str] = field(default_factory=set)
    artifacts: list[tuple[str, str]] = field(default_factory=list)
    run_ids: set[str] = field(default_factory=set)


def read_offline_run(run_dir: Path, timeout: float = 30.0) -> LoggedRun:
    """Parses every ``run-*.wandb`` file under ``run_dir`` (all offline segments of a resumed run).

    W&B's writer may still be flushing after ``run.finish()`` returns, so each file is read again until it holds
    its ``exit`` record (or ``timeout`` seconds pass).
    """
    logged = LoggedRun()
    for path in sorted(Path(run_dir).rglob("run-*.wandb")):
        for payload in _complete_records(path, timeout):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            kind = record.WhichOneof("record_type")
            if kind == "history":
                logged.history_keys.update(item.key or "/".join(item.nested_key) for item in record.history.item)
            elif kind == "run":
                logged.run_ids.add(record.run.run_id)
                logged.config_keys.update(item.key for item in record.run.config.update)
            elif kind == "artifact":
                logged.artifacts.append((record.artifact.name, record.artifact.type))
    return logged


def _complete_records(path: Path, timeout: float) -> list[bytes]:
    deadline = time.monotonic() + timeout
    while True:
        records = _records(path.read_bytes())
        if any(_kind(payload) == "exit" for payload in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def _kind(payload: bytes) -> str | None:
    record = wandb_internal_pb2.Record()
    record.ParseFromString(payload)
    return record.WhichOneof("record_type")


def _records(raw: bytes) -> list[bytes]:
    records, pending, position = [], b"", HEADER_SIZE
    while position + HEADER_SIZE <= len(raw):
        left_in_block = BLOCK_SIZE - position % BLOCK_SIZE
        if left_in_block < HEADER_SIZE:
            position += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", raw[position : position + HEADER_SIZE])
        position += HEADER_SIZE
        if length == 0 and kind == 0:
            break
        pending += raw[position : position + length]
        position += length
        if kind in (FULL, LAST):
            records.append(pending)
            pending = b""
    return records
