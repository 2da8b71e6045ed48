"""Read back an offline W&B run (``wandb/offline-run-*/run-*.wandb``) without syncing it.

Useful to check what a study logged on an air-gapped machine, and used by the tests.
The file is W&B's record log: a 7-byte header, then LevelDB-style 32 KiB blocks of
chunks (crc 4 bytes, length 2, type 1: full=1, first=2, middle=3, last=4) holding
protobuf ``Record`` messages.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

BLOCK = 32768


def _records(path: Path) -> Iterator[object]:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path}: not a W&B run file")
    pos, buf = 7, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            buf = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: Path) -> dict:
    """History rows, final summary and exit code of an offline run folder.

    Args:
        run_dir: ``.../wandb/offline-run-DATE-ID`` (or the study folder that holds ``wandb/``).

    Returns:
        ``{"history": [row dicts in logging order], "summary": {...}, "exit_code": int or None}``
        (None when the run never finished).
    """
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("run-*.wandb")) or sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no offline W&B run file (run-*.wandb) found")
    history, summary, exit_code = [], {}, None
    for record in _records(files[-1]):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return {"history": history, "summary": summary, "exit_code": exit_code}
