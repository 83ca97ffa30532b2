"""Read a W&B offline run (``run-*.wandb``) without the network: for tests and the report.

The file is a 7-byte W&B header followed by LevelDB-log-format blocks of 32 KiB, each record a
7-byte header (crc32c, little-endian length, type: full/first/middle/last) and a chunk of a
serialized ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes) -> Iterator[bytes]:
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - (pos % BLOCK)
        if left_in_block < HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        body = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        if kind == FULL:
            yield body
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE:
            pending += body
        elif kind == LAST:
            yield pending + body
            pending = b""


def records(path: Path) -> Iterator[Any]:
    from wandb.proto import wandb_internal_pb2 as pb

    for chunk in _chunks(Path(path).read_bytes()):
        rec = pb.Record()
        try:
            rec.ParseFromString(chunk)
        except Exception:  # a torn final record after a kill: everything before it stands
            return
        yield rec


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(run_dir: Path) -> dict[str, Any]:
    """{"summary": {...}, "history": [{...}, ...], "config": {...}, "group": str, "name": str}."""
    files = list(Path(run_dir).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb in {run_dir}")
    out: dict[str, Any] = {"summary": {}, "history": [], "config": {}, "group": None, "name": None, "tags": []}
    for rec in records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "summary":
            for item in rec.summary.update:
                out["summary"][_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "config":
            for item in rec.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "run":
            out["group"] = rec.run.run_group or None
            out["name"] = rec.run.display_name or None
            out["tags"] = list(rec.run.tags)
            for item in rec.run.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
    return out
