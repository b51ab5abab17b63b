"""What the benchmark scripts share: the run's metadata and the CSV they write."""

from __future__ import annotations

import csv
import platform
from pathlib import Path

import torch


def run_meta(lm, **extra) -> dict:
    """Model, device, dtype, host and torch threads of this run, then `extra`."""
    return {"model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype).replace("torch.", ""),
            "host": platform.node(), "threads": torch.get_num_threads(), **extra}


def write_csv(path, meta: dict, rows: list[dict]) -> Path:
    """One CSV row per variant: the run's metadata then the variant's figures (floats rounded)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(meta) + list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**meta, **{k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items()}})
    print(f"wrote {path}")
    return path
