"""studies.fresh_check: notebook 06's comparisons on the requests its rule was written on, beside
the same comparisons on fresh requests (matched by arm and by the kind of baseline)."""

from __future__ import annotations

import pandas as pd
import pytest

from raintools.errors import RainToolsError
from raintools.views import studies as st


def runs(flags: dict[str, list[bool]]) -> pd.DataFrame:
    """One row per (arm, request): `good` from `flags[arm][i]` for request i."""
    return pd.DataFrame([dict(arm=arm, id=f"q{i}", good=g) for arm, gs in flags.items()
                         for i, g in enumerate(gs)])


N = 20
ALL, NONE, HALF = [True] * N, [False] * N, [True, False] * (N // 2)


def test_verdicts_are_matched_by_arm_and_baseline_kind():
    tuned = st.paired_differences(runs({"RAIN": ALL, "vanilla": NONE, "best-of-9": ALL}),
                                  [("RAIN", "vanilla"), ("RAIN", "best-of-9")])
    # fresh: RAIN no better than vanilla (the tuned verdict fails); best-of-N of equal cost is now
    # best-of-12 and beats RAIN by as much as RAIN beat vanilla before (a reversal there too)
    fresh = st.paired_differences(runs({"RAIN": NONE, "vanilla": NONE, "best-of-12": ALL}),
                                  [("RAIN", "vanilla"), ("RAIN", "best-of-12")])
    check = st.fresh_check(tuned, fresh).set_index("against")
    assert list(check.index) == ["vanilla", "best-of-N of equal cost"]
    assert check.loc["vanilla", "tuned_verdict"] == "a higher"
    assert check.loc["vanilla", "fresh_verdict"] == "no difference shown"
    assert check.loc["best-of-N of equal cost", "tuned_verdict"] == "no difference shown"
    assert check.loc["best-of-N of equal cost", "fresh_verdict"] == "a lower"
    assert check.loc["best-of-N of equal cost", ["tuned_b", "fresh_b"]].tolist() == ["best-of-9", "best-of-12"]
    assert not check.held.any()
    assert check.fresh_diff.tolist() == pytest.approx([0.0, -1.0])


def test_a_verdict_that_holds_and_one_with_an_interval_over_zero():
    tuned = st.paired_differences(runs({"RAIN": ALL, "vanilla": NONE, "best-of-4": HALF}),
                                  [("RAIN", "vanilla"), ("RAIN", "best-of-4")])
    fresh = st.paired_differences(runs({"RAIN": ALL, "vanilla": NONE, "best-of-5": ALL[:-1] + [False]}),
                                  [("RAIN", "vanilla"), ("RAIN", "best-of-5")])
    check = st.fresh_check(tuned, fresh).set_index("against")
    assert check.loc["vanilla", "held"]                      # higher on both
    assert check.loc["best-of-N of equal cost", "tuned_verdict"] == "a higher"
    assert check.loc["best-of-N of equal cost", "fresh_verdict"] == "no difference shown"   # 1 of 20
    assert not check.loc["best-of-N of equal cost", "held"]


def test_a_comparison_missing_on_fresh_data_is_one_clear_error():
    tuned = st.paired_differences(runs({"RAIN": ALL, "vanilla": NONE, "best-of-9": ALL}),
                                  [("RAIN", "vanilla"), ("RAIN", "best-of-9")])
    fresh = st.paired_differences(runs({"RAIN": ALL, "vanilla": NONE}), [("RAIN", "vanilla")])
    with pytest.raises(RainToolsError, match="exactly one fresh comparison"):
        st.fresh_check(tuned, fresh)
