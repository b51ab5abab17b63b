"""The one statistics module (raintools.experiments.stats) is built on scipy.stats, keeps the
numbers of the code it replaced (same bootstrap draws, same Wilson limits), and is the only place
in the package that computes an interval."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as sps

import raintools
from raintools.experiments import stats as S

PKG = Path(raintools.__file__).resolve().parent


def _old_percentile_bootstrap(values, n_boot=2000, seed=0, confidence=0.95):
    """The hand-written bootstrap the module replaced (resample indices, mean, quantiles)."""
    arr = np.asarray(values, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(arr), size=(n_boot, len(arr)))
    a = (1 - confidence) / 2
    return tuple(np.quantile(arr[idx].mean(axis=1), [a, 1 - a]))


def test_bootstrap_ci_is_scipys_percentile_bootstrap_with_the_old_draws():
    x = [1, 0, 1, 1, 0, 1, 1, 1, 0, 0.5, 0.3]
    ci = S.bootstrap_ci(x, n_boot=999, seed=3)
    ref = sps.bootstrap((np.asarray(x, float),), np.mean, n_resamples=999, method="percentile",
                        rng=np.random.default_rng(3)).confidence_interval
    assert (ci.lo, ci.hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert (ci.lo, ci.hi) == pytest.approx(_old_percentile_bootstrap(x, 999, 3), abs=1e-12)
    assert ci.estimate == pytest.approx(np.mean(x)) and ci.n == 11
    med = S.bootstrap_ci(x, stat=np.median, n_boot=500)
    assert med.lo <= med.estimate <= med.hi
    assert S.bootstrap_ci([1, 1, 1]).lo == 1.0          # degenerate data: no warning, no nan
    assert math.isnan(S.bootstrap_ci([]).estimate) and S.bootstrap_ci([2.0]).hi == 2.0


@pytest.mark.parametrize("k,n", [(0, 4), (4, 4), (3, 4), (50, 100), (14, 20), (0, 11), (6, 6)])
def test_wilson_interval_is_binomtest_wilson(k, n):
    lo, hi = S.wilson_interval(k, n)
    conf = 2 * sps.norm.cdf(1.96) - 1
    ref = sps.binomtest(k, n).proportion_ci(conf, method="wilson")
    assert (lo, hi) == pytest.approx((ref.low, ref.high), abs=1e-12)
    # the textbook formula (the old hand-written code) gives the same limits
    p, z = k / n, 1.96
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert (lo, hi) == pytest.approx((max(0, centre - half), min(1, centre + half)), abs=1e-9)
    assert S.wilson_interval(k, n, percent=True) == pytest.approx((100 * lo, 100 * hi))


def test_wilson_interval_with_half_counts_and_no_items():
    lo, hi = S.wilson_interval(2.5, 4)                   # ties counting one half
    assert S.wilson_interval(2, 4)[0] < lo < S.wilson_interval(3, 4)[0]
    assert S.wilson_interval(2, 4)[1] < hi < S.wilson_interval(3, 4)[1]
    assert all(math.isnan(v) for v in S.wilson_interval(0, 0))


def test_mcnemar_and_cluster_ratio():
    a = [True] * 10 + [False] * 2 + [True] * 8
    b = [False] * 10 + [True] * 2 + [True] * 8
    assert S.mcnemar_test(a, b) == pytest.approx(sps.binomtest(10, 12, 0.5).pvalue)
    assert S.mcnemar_test(a, a) == 1.0
    sums, counts = np.array([1.0, 0.0, -1.0, 2.0, 1.0]), np.array([2.0, 2.0, 2.0, 2.0, 2.0])
    lo, hi = S.cluster_ratio_ci(sums, counts, n_boot=1000, seed=0)
    idx = np.random.default_rng(0).integers(0, 5, size=(1000, 5))
    ref = np.quantile(sums[idx].sum(1) / counts[idx].sum(1), [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(ref), abs=1e-12)


def test_auc_interval_resamples_both_groups():
    v, lo, hi = S.auc_interval([3, 4, 5, 6], [1, 2, 3, 4], n_boot=500)
    assert lo <= v <= hi and v == S.auc([3, 4, 5, 6], [1, 2, 3, 4])
    ref = sps.bootstrap((np.array([3, 4, 5, 6.]), np.array([1, 2, 3, 4.])), S.auc, n_resamples=500,
                        method="percentile", vectorized=False, rng=np.random.default_rng(0))
    assert (lo, hi) == pytest.approx((ref.confidence_interval.low, ref.confidence_interval.high))
    v1, lo1, hi1 = S.auc_interval([3], [1, 2, 3, 4])      # a group of one is the same in every resample
    assert lo1 <= v1 <= hi1


def _functions_and_calls(path: Path):
    tree = ast.parse(path.read_text())
    defs = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    return defs, calls


def test_one_statistics_module():
    """No other module defines an interval or computes bootstrap quantiles by hand."""
    stats_file = PKG / "experiments" / "stats.py"
    for path in PKG.rglob("*.py"):
        if path == stats_file:
            continue
        defs, calls = _functions_and_calls(path)
        rel = path.relative_to(PKG)
        assert not defs & {"wilson_interval", "bootstrap_ci", "paired_difference", "auc_interval",
                           "ratio_summary", "win_rate"}, f"{rel} defines its own statistics"
        assert not calls & {"np.quantile", "np.percentile", "numpy.quantile"}, \
            f"{rel} computes quantiles by hand: use raintools.experiments.stats"
    _, calls = _functions_and_calls(stats_file)
    assert {"_st.bootstrap", "_st.binomtest"} <= calls
