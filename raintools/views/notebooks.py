"""Executing the walkthrough notebooks (jupytext percent scripts in notebooks/).

    python -m raintools.views.notebooks run --all            # fast mode, figures to a temp folder
    python -m raintools.views.notebooks run --all --full     # what `make figures` does

Conventions every notebook follows: a first code cell tagged `parameters` reads `FAST`, `MODEL`,
`DEVICE` and `SEED` from `settings()` below (environment variables RAINTOOLS_FAST, RAINTOOLS_MODEL,
RAINTOOLS_DEVICE, RAINTOOLS_SEED), so the same notebook runs on the embedded model here and on a
30B model on a GPU; figures are written with `raintools.views.plots.save_figure`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"


@dataclass
class Settings:
    fast: bool
    model: str
    device: str | None
    seed: int


def settings() -> Settings:
    """Notebook parameters from the environment (fast mode is what the tests use)."""
    return Settings(fast=os.environ.get("RAINTOOLS_FAST", "0") == "1",
                    model=os.environ.get("RAINTOOLS_MODEL", "smollm2-135m"),
                    device=os.environ.get("RAINTOOLS_DEVICE") or None,
                    seed=int(os.environ.get("RAINTOOLS_SEED", "0")))


def figures_dir() -> Path:
    d = Path(os.environ.get("RAINTOOLS_FIGURES", REPO / "figures"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
    if names:
        paths = [p for p in paths if any(p.stem.startswith(n) or p.name == n for n in names)]
    return paths


def run_notebook(path: str | Path, fast: bool = True, timeout: int = 1200,
                 figures: str | Path | None = None, save_ipynb: bool = False):
    """Execute one notebook top to bottom in a fresh kernel; returns the executed notebook."""
    import jupytext
    from nbclient import NotebookClient

    path = Path(path)
    nb = jupytext.read(path)
    env_before = dict(os.environ)
    os.environ["RAINTOOLS_FAST"] = "1" if fast else "0"
    if figures is not None:
        os.environ["RAINTOOLS_FIGURES"] = str(figures)
    os.environ.setdefault("MPLBACKEND", "Agg")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    if save_ipynb:
        import nbformat
        nbformat.write(nb, path.with_suffix(".ipynb"))
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raintools.views.notebooks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute notebooks")
    r.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 00 04_rewind")
    r.add_argument("--all", action="store_true")
    r.add_argument("--full", action="store_true", help="full mode (default: fast mode)")
    r.add_argument("--figures", default=None, help="figure folder (default: figures/ in full mode, "
                                                   "a temporary folder in fast mode)")
    args = ap.parse_args(argv)
    paths = notebook_paths(None if args.all else args.names)
    if not paths:
        print("no notebooks matched", file=sys.stderr)
        return 2
    figures = args.figures or (str(REPO / "figures") if args.full else tempfile.mkdtemp(prefix="rt-fig-"))
    for p in paths:
        t0 = time.perf_counter()
        print(f"running {p.name} ({'full' if args.full else 'fast'} mode) ...", flush=True)
        run_notebook(p, fast=not args.full, figures=figures)
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"figures in {figures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
