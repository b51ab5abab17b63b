"""The project's one statistics module, on `scipy.stats`: bootstrap intervals, Wilson intervals of
a proportion, paired comparisons, and the summary table of an evaluation run.

    from raintools.experiments.stats import bootstrap_ci, wilson_interval, win_rate, summarize
    bootstrap_ci([1, 0, 1, 1])             # CI(estimate=0.75, lo=..., hi=..., n=4)
    wilson_interval(3, 4)                  # (0.30, 0.95): binomtest(3, 4).proportion_ci("wilson")
    win_rate(rain_flags, vanilla_flags)    # paired comparison over the same prompts
    paired_difference(a_flags, b_flags)    # rate(a) - rate(b), Newcombe's paired interval
    mcnemar_test(a_flags, b_flags)         # exact McNemar test (binomtest on the discordant pairs)

Every bootstrap here is `scipy.stats.bootstrap(..., method="percentile")` with a seeded
`numpy.random.default_rng(seed)`: the same data give the same interval, and the resamples are the
same draws as the numpy code this module replaced (so the notebooks' committed numbers stand).
`summarize(records)` turns the runner's `results.jsonl` records into the per-method table of
`summary.csv`. No model, no files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np
from scipy import stats as _st

from ..errors import ConfigError

__all__ = ["CI", "bootstrap_ci", "rate_ci", "win_rate", "WinRate", "metric_keys", "summarize",
           "wilson_interval", "paired_difference", "mcnemar_test", "cluster_ratio_ci", "ratio_summary",
           "auc", "auc_interval", "PRIMARY_METRICS", "NUMERIC_METRICS"]

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


def _check(n_boot, confidence) -> None:
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence}.")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ConfigError(f"n_boot must be a positive integer, got {n_boot!r}.")


def _percentile_bootstrap(data: tuple, statistic, n_boot: int, confidence: float, seed: int,
                          paired: bool = False, vectorized: bool = False) -> tuple[float, float]:
    res = _st.bootstrap(data, statistic, n_resamples=n_boot, confidence_level=confidence,
                        method="percentile", paired=paired, vectorized=vectorized,
                        rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def bootstrap_ci(values: Iterable, stat: Callable[[np.ndarray], float] = np.mean,
                 n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> CI:
    """Percentile bootstrap interval of `stat` over `values` (None entries are dropped), by
    `scipy.stats.bootstrap` with `n_boot` resamples from a generator seeded with `seed`.

    With no values the estimate and bounds are nan; with one value the interval is that value."""
    _check(n_boot, confidence)
    arr = _values(values)
    n = int(arr.size)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0, confidence)
    est = float(stat(arr))
    if n == 1:
        return CI(est, est, est, 1, confidence)
    if stat is np.mean:
        lo, hi = _percentile_bootstrap((arr,), np.mean, n_boot, confidence, seed, vectorized=True)
    else:
        lo, hi = _percentile_bootstrap((arr,), lambda s: float(stat(s)), n_boot, confidence, seed)
    return CI(est, lo, hi, n, confidence)


def rate_ci(flags: Iterable, **kw) -> CI:
    """Rate of True among `flags` (bools; None dropped) with a bootstrap interval."""
    return bootstrap_ci([bool(f) for f in flags if f is not None], **kw)


def wilson_interval(successes: float, n: int, z: float = 1.96,
                    percent: bool = False) -> tuple[float, float]:
    """Wilson score interval of a proportion (stays inside [0, 1], sensible for small n), from
    `scipy.stats.binomtest(successes, n).proportion_ci(method="wilson")` at the confidence level
    of `z` (1.96: 95%). `percent=True` gives it in %.

    A count with a half in it (ties counting one half, `views.analysis.SelfEvalAccuracy`) is not a
    binomial count and scipy refuses it; for those the same Wilson score formula is solved
    directly."""
    if n <= 0:
        return float("nan"), float("nan")
    scale = 100.0 if percent else 1.0
    if float(successes).is_integer():
        confidence = 2.0 * _st.norm.cdf(z) - 1.0
        ci = _st.binomtest(int(successes), int(n)).proportion_ci(confidence, method="wilson")
        return scale * max(0.0, float(ci.low)), scale * min(1.0, float(ci.high))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return scale * max(0.0, centre - half), scale * min(1.0, centre + half)


def paired_difference(a: Sequence[bool], b: Sequence[bool], z: float = 1.96) -> dict:
    """Difference of two rates measured on the same items, rate(a) - rate(b), with Newcombe's
    (1998) interval for paired proportions (the Wilson limits of each rate combined with the
    phi correlation of the pairs, continuity-corrected). Returns n, diff, lo, hi, and the
    discordant counts a_only (a good, b bad) and b_only. `mcnemar_test` gives the p-value."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ConfigError("paired_difference needs two equally long, non-empty lists of outcomes.")
    n = len(a)
    both, a_only = int((a & b).sum()), int((a & ~b).sum())
    b_only, neither = int((~a & b).sum()), int((~a & ~b).sum())
    p1, p2 = (both + a_only) / n, (both + b_only) / n
    l1, u1 = wilson_interval(both + a_only, n, z)
    l2, u2 = wilson_interval(both + b_only, n, z)
    denom = (both + a_only) * (b_only + neither) * (both + b_only) * (a_only + neither)
    cross = both * neither - a_only * b_only
    corrected = max(cross - n / 2, 0) if cross > 0 else cross
    phi = corrected / math.sqrt(denom) if denom > 0 else 0.0
    d = p1 - p2
    lo = d - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    hi = d + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return dict(n=n, diff=d, lo=max(lo, -1.0), hi=min(hi, 1.0), a_only=a_only, b_only=b_only)


def mcnemar_test(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar test of paired outcomes: `scipy.stats.binomtest` of the pairs where
    only a is good among the discordant pairs, against 1/2. 1.0 when no pair is discordant."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1:
        raise ConfigError("mcnemar_test needs two equally long lists of outcomes.")
    a_only, b_only = int((a & ~b).sum()), int((~a & b).sum())
    if a_only + b_only == 0:
        return 1.0
    return float(_st.binomtest(a_only, a_only + b_only, 0.5).pvalue)


def cluster_ratio_ci(sums: Sequence[float], counts: Sequence[float], n_boot: int = 4000,
                     confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(sums) / sum(counts) that resamples whole clusters
    (one entry of `sums` and `counts` per cluster, e.g. a prompt and its seeds): a paired
    `scipy.stats.bootstrap` over the clusters."""
    _check(n_boot, confidence)
    s, c = np.asarray(sums, dtype=float), np.asarray(counts, dtype=float)
    if len(s) < 2:
        r = float(s.sum() / c.sum()) if len(s) else math.nan
        return r, r
    return _percentile_bootstrap((s, c), lambda x, y, axis=-1: x.sum(axis) / y.sum(axis),
                                 n_boot, confidence, seed, paired=True, vectorized=True)


def ratio_summary(num: Sequence[float], den: Sequence[float], n_boot: int = 2000,
                  seed: int = 0) -> dict:
    """Geometric mean of the per-item ratios num/den with a bootstrap 95% interval over items."""
    logs = np.log(np.asarray(num, dtype=float) / np.asarray(den, dtype=float))
    ci = bootstrap_ci(logs, n_boot=n_boot, seed=seed)
    return dict(n=len(logs), ratio=float(np.exp(ci.estimate)), lo=float(np.exp(ci.lo)),
                hi=float(np.exp(ci.hi)))


def auc(pos: Sequence[float], neg: Sequence[float]) -> float:
    """P(a positive example scores above a negative one); ties count one half. Chance = 0.5."""
    p, n = np.asarray(pos, dtype=float)[:, None], np.asarray(neg, dtype=float)[None, :]
    if p.size == 0 or n.size == 0:
        return float("nan")
    return float(((p > n) + 0.5 * (p == n)).mean())


def auc_interval(pos: Sequence[float], neg: Sequence[float], n_boot: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """AUC with a percentile-bootstrap 95% interval (`scipy.stats.bootstrap` of the two samples:
    positives and negatives resampled apart)."""
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    value = auc(pos, neg)
    if len(pos) == 0 or len(neg) == 0:
        return value, math.nan, math.nan
    # scipy resamples a sample of two or more; a sample of one is the same in every resample
    if len(pos) < 2 and len(neg) < 2:
        return value, value, value
    if len(pos) < 2 or len(neg) < 2:
        data, stat = ((neg,), lambda x: auc(pos, x)) if len(pos) < 2 else ((pos,), lambda x: auc(x, neg))
    else:
        data, stat = (pos, neg), auc
    lo, hi = _percentile_bootstrap(data, stat, n_boot, 0.95, seed)
    return value, lo, hi


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
