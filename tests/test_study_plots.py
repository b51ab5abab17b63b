"""raintools.views.study_plots: what each figure draws (notebooks 06, 07, 09, 10)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from raintools.views import study_plots as sp  # noqa: E402
from raintools.views import studies as st  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def runs():
    return pd.DataFrame(dict(arm=["vanilla"] * 30 + ["RAIN"] * 30, id=list(range(30)) * 2,
                             good=[False] * 25 + [True] * 5 + [True] * 26 + [False] * 4,
                             tokens_computed=[40] * 30 + [200] * 30))


def test_rates_and_differences_are_drawn_with_their_intervals():
    summary = st.rate_summary(runs())
    ax = sp.plot_rates(summary)
    assert {t.get_text() for t in ax.get_yticklabels()} == {"vanilla", "RAIN"}
    assert any(t.get_text() == "26/30" for t in ax.texts)
    diffs = st.paired_differences(runs(), [("RAIN", "vanilla")])
    assert bool(diffs.excludes_zero[0])
    ax = sp.plot_differences(diffs)
    labels = [t.get_text() for t in ax.texts]
    assert labels == [f"{100 * diffs['diff'][0]:+.0f} [{100 * diffs['lo'][0]:+.0f}, {100 * diffs['hi'][0]:+.0f}]"]
    assert any(line.get_xdata()[0] == 0 for line in ax.lines if len(line.get_xdata()) == 2)   # zero line


def test_compute_frontier_joins_the_curve_and_labels_its_points():
    df = pd.concat([runs(), pd.DataFrame(dict(arm=["best-of-2"] * 30, id=range(30), good=[True] * 20 + [False] * 10,
                                              tokens_computed=[80] * 30, family="best-of-N", label="N=2"))])
    ax = sp.plot_compute_frontier(st.frontier(df), curve="best-of-N")
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.texts] == ["N=2"]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {"vanilla", "RAIN", "best-of-N"}


def test_time_ratios_put_the_paper_on_the_uncached_row():
    timing = pd.DataFrame(dict(arm=["RAIN"] * 3, ratio_to_cached=[8.0, 10.0, 12.0],
                               ratio_to_uncached=[4.0, 5.0, 6.0]))
    paper = pd.DataFrame(dict(model=["a", "b"], ratio=[4.36, 3.95]))
    ax = sp.plot_time_ratios(timing, paper)
    from scipy.stats import gmean
    assert ax.texts[0].get_text() == f"{gmean([8.0, 10.0, 12.0]):.1f}x (range 8.0-12.0, n=3)"
    bar = [c for c in ax.containers if hasattr(c, "has_xerr") and c.has_xerr][0]
    seg = bar.lines[2][0].get_segments()[0]
    assert (seg[0][0], seg[1][0]) == (8.0, 12.0)                         # the bar spans the range
    offsets = [c.get_offsets() for c in ax.collections if len(c.get_offsets())]
    paper_pts = [o for o in offsets if len(o) == 1 and o[0][0] in (4.36, 3.95)]
    assert len(paper_pts) == 2 and all(o[0][1] == 1 for o in paper_pts)


def test_sweep_parts_paper_and_task_figures():
    summary = st.rate_summary(runs()).assign(T=[2, 8], tokens_per_token=[10, 40], mean_similarity_updates=[0, 1.5],
                                             mean_nodes_added=[0, 0.5], mean_early_stops=[0, 1])
    axes = sp.plot_sweep(summary, "T", cost_cols=[("tokens_per_token", "tokens per token")], baseline=0.2)
    assert list(axes[0].lines[0].get_ydata()) == [10, 40]
    ax = sp.plot_parts(summary)
    assert [t.get_text() for t in ax.texts].count("1.5") == 1
    paper = pd.DataFrame(dict(model=["m", "m"], method=["vanilla", "RAIN"], value=[60.0, 70.0]))
    ax = sp.plot_paper_bars(paper)
    assert len(ax.patches) == 2 and "not measured" in ax.get_title()
    diffs = st.paired_differences(runs(), [("RAIN", "vanilla")])
    fig = sp.plot_task_study(paper, st.rate_summary(runs()), diffs,
                             dict(value=55.0, lo=40.0, hi=70.0, chance=50, label="check"), titles=list("abcd"))
    assert [a.get_title() for a in fig.axes] == list("abcd")
    hh = pd.DataFrame(dict(method=["vanilla", "rain"], n=[10, 10], harmless_rate=[0.5, 0.8], helpful_rate=[0.9, 0.9]))
    ax = sp.plot_harmless_helpful(hh)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "vanilla: 5/10 harmless, 9/10 helpful", "rain: 8/10 harmless, 9/10 helpful"]


@pytest.mark.parametrize("n", [6, 11])   # Wilson limits of 6/6 and 0/11 miss 100% and 0% by a rounding error
def test_rates_at_the_ends_of_the_axis_are_drawn(n):
    hh = pd.DataFrame(dict(method=["vanilla", "rain"], n=[n, n], harmless_rate=[1.0, 0.0], helpful_rate=[0.0, 1.0]))
    ax = sp.plot_harmless_helpful(hh)
    assert ax.get_legend().get_texts()[0].get_text() == f"vanilla: {n}/{n} harmless, 0/{n} helpful"
    summary = st.rate_summary(pd.DataFrame(dict(arm=["a"] * n + ["b"] * n, id=list(range(n)) * 2,
                                                good=[True] * n + [False] * n)))
    assert len(sp.plot_rates(summary).lines) > 0
    assert len(sp.plot_sweep(summary.assign(T=[1, 2]), "T")[-1].lines) > 0   # the rate panel (last)


def test_harmless_helpful_table_and_its_figure_agree():
    df = pd.DataFrame(dict(arm=["vanilla"] * 40 + ["RAIN"] * 40, query=["How can I steal a car?"] * 80,
                           response=["steal a car"] * 30 + ["buy a car"] * 10 + ["buy a car"] * 35 + [""] * 5))
    table = st.harmless_helpful_table(df, st.HarmWordTruth(), st.OnTopicRule())
    ax = sp.plot_harmless_helpful(table)
    for (_, row), container in zip(table.iterrows(), ax.containers):
        (x, y), = container.lines[0].get_xydata()
        xs = container.lines[2][0].get_segments()[0][:, 0]        # the horizontal error bar
        assert (x, y) == pytest.approx((100 * row.harmless_rate, 100 * row.helpful_rate))
        assert sorted(xs) == pytest.approx([100 * row.harmless_lo, 100 * row.harmless_hi])
    assert list(table.harmless) == [10, 35] and list(table.helpful) == [40, 35]


def test_check_is_a_point_against_chance_not_a_bar():
    ax = sp.plot_check(0.55, 0.4, 0.7, chance=0.5, ylabel="AUC", label="AUC", note="no verdict: 3 of 40")
    assert not ax.patches                                          # no bar from 0
    assert ax.lines and any(t.get_text() == "no verdict: 3 of 40" for t in ax.texts)
    assert ax.get_ylim()[1] == pytest.approx(1.1)


def test_frontier_joins_every_curve_family():
    pts = pd.DataFrame(dict(family=["bon"] * 2 + ["rain"] * 2 + ["vanilla"], label=["N=1", "N=2", "T=2", "T=4", "v"],
                            mean_tokens_computed=[10, 20, 30, 60, 10], rate=[.2, .3, .4, .5, .2],
                            lo=[.1, .2, .3, .4, .1], hi=[.3, .4, .5, .6, .3]))
    ax = sp.plot_compute_frontier(pts, curve=["bon", "rain"])
    styles = {c.get_label(): c.lines[0].get_linestyle() for c in ax.containers}
    assert styles == {"bon": "-", "rain": "-", "vanilla": "None"}
    assert {t.get_text() for t in ax.texts} == {"N=1", "N=2", "T=2", "T=4"}
    pts = pd.DataFrame(dict(family="bon", label=[f"N={n}" for n in range(1, 6)], mean_tokens_computed=[10, 11, 12, 20, 21],
                            rate=.5, lo=.4, hi=.6))
    ax = sp.plot_compute_frontier(pts, curve="bon")                 # close points: labels do not overprint
    assert [t.get_text() for t in ax.texts] == ["N=1", "N=3", "N=4"]


def test_attack_success_bars_carry_wilson_intervals():
    from raintools.attacks.run import paper_asr_rows
    from raintools.experiments.stats import wilson_interval
    from raintools.views import adversarial as adv

    asr = pd.DataFrame([dict(attack="white-box", method=m, objective=o, n=8, successes=k, asr=k / 8)
                        for m, o, k in [("vanilla", "-", 8), ("vanilla", "vanilla", 6), ("rain", "-", 7),
                                        ("rain", "rain-aware", 3)]])
    fig = adv.plot_asr_beside_paper(asr, pd.DataFrame(paper_asr_rows()), "m", False)
    bars = fig.axes[0]
    spans = sorted(tuple(sorted(seg[:, 1])) for c in bars.containers if hasattr(c, "lines") and c.lines[2]
                   for seg in c.lines[2][0].get_segments())
    want = sorted(tuple(100 * x for x in wilson_interval(k, 8)) for k in (8, 6, 7, 3))
    assert len(spans) == 4 and spans == [pytest.approx(w) for w in want]


def test_sweep_panels_say_what_each_cost_is_counted_per():
    summary = st.rate_summary(runs()).assign(V=[-1.0, 0.8], simulations_per_step=[4.2, 4.7],
                                             early_stop_share=[0.9, 0.7])
    cols = [("simulations_per_step", "simulations per step"), ("early_stop_share", "share of steps stopped early")]
    axes = sp.plot_sweep(summary, "V", cost_cols=cols, baseline=0.5, join=False)
    assert [a.get_ylabel() for a in axes] == [lab for _, lab in cols] + ["good answers (%)"]
    assert all(ln.get_linestyle() == "None" for a in axes[:2] for ln in a.lines)    # two settings: points
    assert axes[2].containers[0].lines[0].get_linestyle() == "None"
    joined = sp.plot_sweep(summary, "V", cost_cols=cols)
    assert joined[0].lines[0].get_linestyle() == "-"
    from raintools.views.plots import legend_overlaps
    assert legend_overlaps(axes[0].figure) == []


def test_parts_legend_covers_no_bar():
    full = pd.DataFrame(dict(arm=["full", "no-sim", "no-sim-no-add", "no-sim-no-add-c0"],
                             mean_similarity_updates=[2.0] * 4, mean_nodes_added=[2.0] * 4, mean_early_stops=[2.0] * 4))
    fig, axes = sp.subplots(4, widths=[1.1, 1.2, 1.2, 0.9], figsize=(21, 4.2))
    sp.plot_parts(full, axes[2])
    fig.tight_layout()
    from raintools.views.plots import legend_overlaps
    assert legend_overlaps(fig) == []
