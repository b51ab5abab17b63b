"""Combine the figure folders of several runs (one model each) into the paper's size figures:

* the self-evaluation accuracy by model size (from each run's `01_self_eval_accuracy.csv`), and
* the paper's Figure 1 form, harmless rate vanilla -> RAIN by model size (from each run's
  `06_harmless_helpful.csv`),

each beside the paper's reported numbers.

    python -m raintools.views.combine                       # figures/ and every model folder in it
    python -m raintools.views.combine figures runs/llama13b/figures --params "my-model=13"
    make combine RUNS="figures figures/Llama-2-13b-chat-hf-cuda"

A run's folder is what `make figures` (or `python -m raintools.views.notebooks run 01 06 --full`)
writes: figures/ for the embedded model on a CPU, figures/<model>-<device>/ for any other run. A
folder given here that holds no such CSV but has model folders inside is expanded to them.

What is read (rows of other sources, e.g. the paper's, are ignored):
* `01_self_eval_accuracy.csv`: rows whose `source` starts with "measured"; columns `model`,
  `accuracy` and, where present, `judge` (votes/soft), `params_b`, `n`, `strict`, `tie_rate`,
  `strict_lo`, `strict_hi`.
* `06_harmless_helpful.csv`: rows whose `source` starts with "measured" and whose `method` is
  `vanilla` or `rain`; columns `model`, `harmless_rate` and, where present, `harmless_lo`,
  `harmless_hi`, `n`, `params_b`.

A model's size (billions of parameters) comes from `--params NAME=B`, else a `params_b` column,
else the run's `01_self_eval_accuracy.csv`, else the model's name ("Llama-2-13b" -> 13,
"smollm2-135m" -> 0.135); a run whose size is unknown is reported and left out.
Writes `<out>/combined_self_eval_by_size.{png,csv}` and `<out>/combined_harmless_by_size.{png,csv}`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pandas as pd

from ..errors import DataError

SELF_EVAL_CSV = "01_self_eval_accuracy.csv"
HARMLESS_CSV = "06_harmless_helpful.csv"


def params_from_name(name: str) -> float | None:
    """Billions of parameters written in a model's name (the last '<number>b' or '<number>m'):
    'meta-llama/Llama-2-13b-chat-hf' -> 13.0, 'smollm2-135m' -> 0.135, 'gpt2' -> None."""
    hits = re.findall(r"(?<![A-Za-z0-9.])(\d+(?:\.\d+)?)\s*([bBmM])(?![A-Za-z])", str(name))
    if not hits:
        return None
    num, unit = hits[-1]
    return float(num) * (1.0 if unit in "bB" else 1e-3)


def run_folders(paths) -> list[Path]:
    """The run folders among `paths`: each path that holds one of the CSVs, plus its immediate
    subfolders that do (a figures/ folder and the model folders inside it)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise DataError(f"{p}: not a folder (give the figure folders of the runs to combine)")
        for d in [p, *sorted(x for x in p.iterdir() if x.is_dir())]:
            if ((d / SELF_EVAL_CSV).is_file() or (d / HARMLESS_CSV).is_file()) and d not in out:
                out.append(d)
    return out


def _measured(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path)
    if "model" not in df.columns:
        raise DataError(f"{path}: no 'model' column")
    if "source" in df.columns:
        df = df[df.source.astype(str).str.startswith("measured")]
    return df.copy()


def _size(model: str, row: pd.Series | None, folder: Path, params: dict[str, float]) -> float | None:
    if model in params:
        return float(params[model])
    if row is not None and "params_b" in row and pd.notna(row["params_b"]):
        return float(row["params_b"])
    f = folder / SELF_EVAL_CSV
    if f.is_file():
        own = _measured(f)
        if "params_b" in own.columns and own.params_b.notna().any():
            return float(own.params_b.dropna().iloc[0])
    return params_from_name(model)


def read_self_eval(folders, params: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per (run, judge mode): model, params_b, judge, n, accuracy (ties count half),
    strict (wins only), tie_rate, strict_lo, strict_hi, run (the folder)."""
    params = params or {}
    rows = []
    for d in folders:
        f = Path(d) / SELF_EVAL_CSV
        if not f.is_file():
            continue
        for _, r in _measured(f).iterrows():
            rows.append(dict(run=str(d), model=r["model"], judge=r.get("judge", ""),
                             params_b=_size(r["model"], r, Path(d), params), n=r.get("n"),
                             accuracy=r["accuracy"], strict=r.get("strict", r["accuracy"]),
                             tie_rate=r.get("tie_rate", 0.0), strict_lo=r.get("strict_lo"),
                             strict_hi=r.get("strict_hi")))
    return pd.DataFrame(rows, columns=["run", "model", "judge", "params_b", "n", "accuracy", "strict",
                                       "tie_rate", "strict_lo", "strict_hi"])


def read_harmless(folders, params: dict[str, float] | None = None) -> pd.DataFrame:
    """One row per run with both methods: model, params_b, n, vanilla, vanilla_lo, vanilla_hi,
    rain, rain_lo, rain_hi (harmless rates in [0, 1]), run."""
    params = params or {}
    rows = []
    for d in folders:
        f = Path(d) / HARMLESS_CSV
        if not f.is_file():
            continue
        df = _measured(f)
        if "method" not in df.columns or "harmless_rate" not in df.columns:
            raise DataError(f"{f}: needs 'method' and 'harmless_rate' columns")
        for model, g in df.groupby("model", sort=False):
            by = g.set_index("method")
            if not {"vanilla", "rain"} <= set(by.index):
                continue
            row = dict(run=str(d), model=model, params_b=_size(model, by.loc["rain"], Path(d), params),
                       n=by.loc["rain"].get("n"))
            for m in ("vanilla", "rain"):
                r = by.loc[m]
                row[m] = r["harmless_rate"]
                row[f"{m}_lo"] = r.get("harmless_lo")
                row[f"{m}_hi"] = r.get("harmless_hi")
            rows.append(row)
    return pd.DataFrame(rows, columns=["run", "model", "params_b", "n", "vanilla", "vanilla_lo",
                                       "vanilla_hi", "rain", "rain_lo", "rain_hi"])


def _known_sizes(df: pd.DataFrame, what: str) -> pd.DataFrame:
    missing = df[df.params_b.isna()]
    for r in missing.itertuples():
        print(f"{what}: size of {r.model!r} ({r.run}) unknown; give --params '{r.model}=<billions>'",
              file=sys.stderr)
    return df[df.params_b.notna()].reset_index(drop=True)


def combine(folders, out, params: dict[str, float] | None = None) -> dict[str, Path]:
    """Read the runs in `folders` (see `run_folders`), write the two size figures and their CSVs
    to `out`; returns {name: png path} of the figures written (none without data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_harmless_by_size, plot_self_eval_by_size

    runs = run_folders(folders)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    acc = _known_sizes(read_self_eval(runs, params), "self-evaluation")
    if len(acc):
        ax = plot_self_eval_by_size(acc)
        written["self_eval"] = _save(ax.figure, out / "combined_self_eval_by_size", acc)
        plt.close(ax.figure)
    harm = _known_sizes(read_harmless(runs, params), "harmlessness")
    if len(harm):
        ax = plot_harmless_by_size(harm)
        written["harmless"] = _save(ax.figure, out / "combined_harmless_by_size", harm)
        plt.close(ax.figure)
    return written


def _save(fig, stem: Path, data: pd.DataFrame) -> Path:
    fig.savefig(stem.with_suffix(".png"), dpi=120, bbox_inches="tight")
    data.to_csv(stem.with_suffix(".csv"), index=False)
    return stem.with_suffix(".png")


def _parse_params(items) -> dict[str, float]:
    out = {}
    for item in items or []:
        for part in item.split(","):
            name, sep, value = part.rpartition("=")
            try:
                out[name.strip()] = float(value)
            except ValueError:
                name = ""
            if not sep or not name.strip():
                raise DataError(f"--params wants NAME=BILLIONS (e.g. 'Llama-2-13b-chat-hf=13'), got {part!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    from .notebooks import REPO

    ap = argparse.ArgumentParser(prog="python -m raintools.views.combine",
                                 description="Self-evaluation accuracy and harmless rate (vanilla -> RAIN) "
                                             "by model size, from several runs' figure folders.")
    ap.add_argument("folders", nargs="*", help="figure folders of the runs (default: figures/ and the "
                                               "model folders in it)")
    ap.add_argument("--out", default=None, help="output folder (default: figures/combined)")
    ap.add_argument("--params", action="append", metavar="NAME=B",
                    help="a model's size in billions of parameters (repeatable, or comma-separated)")
    args = ap.parse_args(argv)
    try:
        folders = args.folders or [str(REPO / "figures")]
        written = combine(folders, args.out or REPO / "figures" / "combined", _parse_params(args.params))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not written:
        print("error: no 01_self_eval_accuracy.csv or 06_harmless_helpful.csv with measured rows "
              f"of a known size in {', '.join(folders)}", file=sys.stderr)
        return 2
    for p in written.values():
        print(f"wrote {p} (+ .csv)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
