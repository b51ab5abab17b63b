"""What the benchmark scripts share: the run's metadata and the CSVs they write."""

from __future__ import annotations

import csv
import platform
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def git_head() -> str:
    """The short commit of the code that runs (`unknown` outside a git checkout)."""
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_meta(lm, **extra) -> dict:
    """Model, device, dtype, host and torch threads of this run, then `extra`, then the code's
    commit (`code`)."""
    return {"model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype).replace("torch.", ""),
            "host": platform.node(), "threads": torch.get_num_threads(), **extra, "code": git_head()}


def _rounded(meta: dict, row: dict) -> dict:
    return {**meta, **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}}


def write_csv(path, meta: dict, rows: list[dict]) -> Path:
    """One CSV row per variant: the run's metadata then the variant's figures (floats rounded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(meta) + list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow(_rounded(meta, r))
    print(f"wrote {path}")
    return path


def append_row(path, meta: dict, row: dict) -> None:
    """One more row (the metadata, then the figures, floats rounded) at the end of the CSV
    `path`, its header written when the file is new. An existing file must have these columns in
    this order (a row of another layout would land under the wrong names): else an error."""
    path = Path(path)
    fields = list(meta) + list(row)
    if path.exists() and path.stat().st_size:
        with open(path, newline="") as fh:
            header = next(csv.reader(fh), [])
        if header != fields:
            raise SystemExit(f"{path} has the columns {header}, this run writes {fields}: "
                             f"write to another file (--out)")
    new = not path.exists() or not path.stat().st_size
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(_rounded(meta, row))
