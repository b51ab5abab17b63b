"""Where a run's figures and tables go, so runs of different models never overwrite each other.

The embedded default model on a CPU keeps the plain names (`figures/04_rewind_x.png`, the figures
committed to the repository); any other model, or the embedded model on another device (which runs
other constants: `RainConfig.hh` instead of `cpu_demo`), writes into a subfolder named by
`run_tag`, e.g. `figures/Llama-2-13b-chat-hf-cuda/04_rewind_x.png`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..models import DEFAULT_MODEL, default_device


def device_kind(device: str | None) -> str:
    """'cpu', 'cuda', 'mps', ... for a device string; None means the loader's default (CUDA when
    available); 'auto' (layers spread over the GPUs) counts as 'cuda'."""
    if device is None:
        return default_device()
    kind = str(device).split(":")[0].strip().lower()
    return "cuda" if kind == "auto" else kind


def model_slug(model: str) -> str:
    """A folder-safe name of a model: the last part of a hub id or a path, other characters than
    letters, digits, '.', '_' and '-' replaced by '-'."""
    name = str(model).rstrip("/\\")
    name = re.split(r"[/\\]", name)[-1] or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


def run_tag(model: str | None, device: str | None = None) -> str:
    """'' for the embedded default model on a CPU; otherwise '<model slug>-<device kind>'."""
    model = model or DEFAULT_MODEL
    kind = device_kind(device)
    if model == DEFAULT_MODEL and kind == "cpu":
        return ""
    return f"{model_slug(model)}-{kind}"


def run_dir(base, model: str | None, device: str | None = None) -> Path:
    """`base`, or its `run_tag` subfolder for any run but the embedded model on a CPU (created)."""
    d = Path(base) / run_tag(model, device)
    d.mkdir(parents=True, exist_ok=True)
    return d
