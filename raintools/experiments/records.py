"""JSONL files that survive interruption: the record format of every resumable run (evaluations,
attacks). Appends are flushed and fsynced record by record; a last line torn by an interruption is
repaired (or skipped when another process may be writing)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import DataError


def read_jsonl(path, repair: bool = True) -> list[dict]:
    """Records of a JSONL file; a bad line is a DataError naming the file and line, except a last
    line cut off mid-write (an interrupted run). With `repair` (only for a file this process
    appends to) such a line is removed from the file so that appends stay valid JSONL (a complete
    last record missing only its newline gets the newline); without it, the file is never
    modified (another process may be writing it) and the torn line is just skipped."""
    p = Path(path)
    if not p.exists():
        return []
    raw = p.read_bytes()
    lines = raw.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else a line without one
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            raise DataError(f"{p}: line {i + 1}: not a JSON object; fix or delete the line.")
        records.append(rec)
    if tail.strip():
        try:
            rec = json.loads(tail)
        except ValueError:
            rec = None
        if isinstance(rec, dict):  # complete record, only its newline missing
            records.append(rec)
            if repair:
                with open(p, "ab") as fh:
                    fh.write(b"\n")
        elif repair:  # torn by an interruption: drop it so appends stay valid JSONL
            with open(p, "r+b") as fh:
                fh.truncate(len(raw) - len(tail))
    return records


def append_jsonl(path, record: dict) -> None:
    """Append one record and force it to disk."""
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
