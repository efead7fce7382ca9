"""Read an offline W&B run's history back (wandb 0.31 ships no reader for offline runs).

The run's ``run-<id>.wandb`` file is a LevelDB-style log: a 7-byte header (b":W&B", magic
0xBEE1, version 0), then 32 KiB blocks of chunks with a 7-byte header (crc32, length, type:
1 full, 2 first, 3 middle, 4 last); each record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK, HEADER = 32768, 7


def records(path: Path) -> Iterator[pb.Record]:
    """Every complete record of a ``.wandb`` file, in order."""
    data = path.read_bytes()
    if struct.unpack("<4sHB", data[:HEADER]) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"not a W&B transaction log: {path}")
    position, buffer = HEADER, b""
    while position + HEADER <= len(data):
        space = BLOCK - position % BLOCK
        if space < HEADER:
            position += space
            continue
        crc, length, kind = struct.unpack("<IHB", data[position : position + HEADER])
        if kind == 0 and length == 0:
            position += space
            continue
        chunk = data[position + HEADER : position + HEADER + length]
        if len(chunk) < length:
            return  # the tail is still being written
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise ValueError(f"bad checksum at offset {position} in {path}")
        position += HEADER + length
        buffer = chunk if kind in (1, 2) else buffer + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buffer)
            yield record


def history(run_dir: Path, timeout: float = 30.0) -> list[dict]:
    """The history rows of a finished offline run, waiting for its exit record to be written."""
    (path,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        rows, finished = [], False
        for record in records(path):
            kind = record.WhichOneof("record_type")
            finished |= kind == "exit"
            if kind == "history":
                row: dict = {}
                for item in record.history.item:
                    keys = list(item.nested_key) or [item.key]
                    node = row
                    for key in keys[:-1]:
                        node = node.setdefault(key, {})
                    node[keys[-1]] = json.loads(item.value_json)
                rows.append(row)
        if finished:
            return rows
        if time.monotonic() > deadline:
            raise TimeoutError(f"no exit record in {path}")
        time.sleep(0.1)
