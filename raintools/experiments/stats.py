"""Statistics for evaluation tables: bootstrap confidence intervals, rates and win rates.

    from raintools.experiments.stats import bootstrap_ci, win_rate, summarize
    bootstrap_ci([1, 0, 1, 1])             # CI(estimate=0.75, lo=..., hi=..., n=4)
    win_rate(rain_flags, vanilla_flags)    # paired comparison over the same prompts

`summarize(records)` turns the runner's `results.jsonl` records into the per-method table of
`summary.csv`. Everything here is plain numpy on lists: no model, no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import ConfigError

__all__ = ["CI", "bootstrap_ci", "rate_ci", "win_rate", "WinRate", "metric_keys", "summarize",
           "PRIMARY_METRICS", "NUMERIC_METRICS"]

# Boolean verdict keys, in the order the summary shows them; any other boolean key a judge returns
# (except "empty") is added after these. The first one present is the "primary" metric that the
# win rate compares (higher is better for all of them; a refusal counts as the safe outcome).
PRIMARY_METRICS = ("harmless", "truthful", "positive", "helpful", "refusal")
SKIP_KEYS = {"empty"}
# Numeric verdict keys summarised as means (sentiment score, truthfulness margin, judge
# probabilities); other numbers in verdicts are diagnostics and stay in results.jsonl only.
NUMERIC_METRICS = ("score", "margin", "p_harmless", "p_helpful")


@dataclass(frozen=True)
class CI:
    """A point estimate with a percentile-bootstrap confidence interval."""

    estimate: float
    lo: float
    hi: float
    n: int
    confidence: float = 0.95

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.lo:.3f}, {self.hi:.3f}] (n={self.n})"


def _values(values: Iterable) -> np.ndarray:
    arr = np.asarray([float(v) for v in values if v is not None], dtype=float)
    if arr.size and not np.all(np.isfinite(arr)):
        raise ConfigError("bootstrap_ci: values must be finite numbers.")
    return arr


def bootstrap_ci(values: Iterable, stat: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> CI:
    """Percentile bootstrap interval of `stat` over `values` (None entries are dropped).

    Resamples with replacement `n_boot` times with a seeded generator (so the same data give the
    same interval). With no values the estimate and bounds are nan; with one value the interval
    is that value."""
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}.")
    arr = _values(values)
    n = int(arr.size)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0, confidence)
    est = float(stat(arr))
    if n == 1:
        return CI(est, est, est, 1, confidence)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    samples = arr[idx]
    if stat is np.mean:
        boots = samples.mean(axis=1)
    else:
        boots = np.array([stat(s) for s in samples], dtype=float)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(boots, [a, 1 - a])
    return CI(est, float(lo), float(hi), n, confidence)


def rate_ci(flags: Iterable, **kw) -> CI:
    """Rate of True among `flags` (bools; None dropped) with a bootstrap interval."""
    return bootstrap_ci([bool(f) for f in flags if f is not None], **kw)


@dataclass(frozen=True)
class WinRate:
    """Paired comparison of a method against a baseline on the same prompts.

    A *win* is a prompt where the method is better (True where the baseline is False, or a
    higher score), a *loss* the reverse, a *tie* otherwise. `rate = (wins + ties / 2) / n`, so 0.5
    means no difference; `ci` bootstraps that rate over prompts."""

    wins: int
    ties: int
    losses: int
    rate: float
    ci: CI

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses


def win_rate(method: Sequence, baseline: Sequence, n_boot: int = 2000, confidence: float = 0.95,
             seed: int = 0) -> WinRate:
    """Win rate of `method` over `baseline`: two equally long sequences of bools or numbers, one
    entry per prompt (pairs with a None on either side are dropped)."""
    a, b = list(method), list(baseline)
    if len(a) != len(b):
        raise ConfigError(f"win_rate needs paired results of equal length ({len(a)} vs {len(b)}).")
    scores = []
    for x, y in zip(a, b):
        if x is None or y is None:
            continue
        x, y = float(x), float(y)
        scores.append(1.0 if x > y else 0.0 if x < y else 0.5)
    wins = sum(s == 1.0 for s in scores)
    losses = sum(s == 0.0 for s in scores)
    ties = len(scores) - wins - losses
    ci = bootstrap_ci(scores, n_boot=n_boot, confidence=confidence, seed=seed)
    return WinRate(wins, ties, losses, ci.estimate, ci)


# --------------------------------------------------------------------------------------------
# The summary table of an evaluation run


def metric_keys(records: Iterable[dict]) -> tuple[list[str], list[str]]:
    """(boolean metric keys, numeric metric keys) present in the records' `metrics`."""
    bools, nums = set(), set()
    for r in records:
        for k, v in (r.get("metrics") or {}).items():
            if k in SKIP_KEYS:
                continue
            if isinstance(v, bool):
                bools.add(k)
            elif isinstance(v, (int, float)) and k in NUMERIC_METRICS:
                nums.add(k)
    ordered = [k for k in PRIMARY_METRICS if k in bools] + sorted(bools - set(PRIMARY_METRICS))
    return ordered, [k for k in NUMERIC_METRICS if k in nums]


def primary_metric(bool_keys: Sequence[str]) -> str | None:
    for k in PRIMARY_METRICS:
        if k in bool_keys:
            return k
    return bool_keys[0] if bool_keys else None


def _mean(xs) -> float:
    xs = [float(x) for x in xs if x is not None]
    return float(np.mean(xs)) if xs else math.nan


def summarize(records: Sequence[dict], baseline: str = "vanilla", methods: Sequence[str] | None = None,
              n_boot: int = 2000, confidence: float = 0.95, seed: int = 0):
    """Per-method table (a pandas DataFrame) from result records.

    Each record needs `id`, `method`, `metrics` (verdict keys -> bool / number) and `stats`
    (`wall_time_s`, `forward_calls`, `tokens_computed`, `committed_tokens`). Columns: `n`;
    for each boolean metric `<key>_rate`, `<key>_lo`, `<key>_hi` (bootstrap interval); for each
    numeric metric `<key>_mean` with its interval; the win rate over `baseline` on the primary
    metric (`win_metric`, `win_rate`, `win_lo`, `win_hi`, `wins`, `ties`, `losses`; paired by
    prompt id); and cost: mean time, forward calls, tokens computed and their ratios to the
    baseline. `baseline` falls back to the first method when absent."""
    import pandas as pd

    records = list(records)
    order = list(methods) if methods else list(dict.fromkeys(r["method"] for r in records))
    by_method = {m: [r for r in records if r["method"] == m] for m in order}
    bool_keys, num_keys = metric_keys(records)
    primary = primary_metric(bool_keys)
    base = baseline if baseline in by_method else (order[0] if order else None)
    base_by_id = {r["id"]: r for r in by_method.get(base, [])}
    kw = dict(n_boot=n_boot, confidence=confidence, seed=seed)

    def cost(rs, key):
        return _mean((r.get("stats") or {}).get(key) for r in rs)

    base_time = cost(by_method.get(base, []), "wall_time_s")
    base_calls = cost(by_method.get(base, []), "forward_calls")
    base_tokens = cost(by_method.get(base, []), "tokens_computed")
    rows = []
    for m in order:
        rs = by_method[m]
        row: dict = {"method": m, "n": len(rs)}
        for k in bool_keys:
            ci = rate_ci(((r.get("metrics") or {}).get(k) for r in rs), **kw)
            row.update({f"{k}_rate": ci.estimate, f"{k}_lo": ci.lo, f"{k}_hi": ci.hi, f"{k}_n": ci.n})
        for k in num_keys:
            ci = bootstrap_ci(((r.get("metrics") or {}).get(k) for r in rs), **kw)
            row.update({f"{k}_mean": ci.estimate, f"{k}_lo": ci.lo, f"{k}_hi": ci.hi})
        row["baseline"] = base
        row["win_metric"] = primary
        if primary is not None and m != base:
            pairs = [(r["metrics"].get(primary), base_by_id[r["id"]]["metrics"].get(primary))
                     for r in rs if r["id"] in base_by_id]
            w = win_rate([p[0] for p in pairs], [p[1] for p in pairs], **kw)
            row.update(win_rate=w.rate, win_lo=w.ci.lo, win_hi=w.ci.hi, wins=w.wins, ties=w.ties,
                       losses=w.losses)
        else:
            row.update(win_rate=math.nan, win_lo=math.nan, win_hi=math.nan, wins=None, ties=None,
                       losses=None)
        t, calls, toks = cost(rs, "wall_time_s"), cost(rs, "forward_calls"), cost(rs, "tokens_computed")
        row.update(mean_time_s=t, time_ratio=t / base_time if base_time else math.nan,
                   mean_forward_calls=calls,
                   forward_ratio=calls / base_calls if base_calls else math.nan,
                   mean_tokens_computed=toks,
                   compute_ratio=toks / base_tokens if base_tokens else math.nan,
                   mean_new_tokens=cost(rs, "committed_tokens"))
        rows.append(row)
    return pd.DataFrame(rows)
