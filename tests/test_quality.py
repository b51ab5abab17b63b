"""The checkable ground truth of the simulated-judge experiments (sums) on constructed answers,
the paired comparison of two searches, and its figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from raintools.errors import RainToolsError
from raintools.views import analysis as A

Q = A.SUM_PROMPT.format(a=17, b=25)


@pytest.fixture
def truth():
    return A.SumTruth({Q: (17, 25)})


@pytest.mark.parametrize("response", [
    "42", "42.", "The answer is 42.", "17 + 25 = 42", "17+25=42", "It is 42, of course.", "42.0",
])
def test_the_sum_and_nothing_else_is_good(truth, response):
    assert truth(Q, response) is True
    assert truth.reason(Q, response) == "states 42 and no other result"


@pytest.mark.parametrize("response", [
    "43", "4", "2", "420", "24", "4 2", "40 or 42", "The answer is 42 or 43.", "17 + 25", "",
    "I don't know.", "forty-two", "banana banana banana", "42.5", "-42 and 3",
])
def test_anything_else_is_bad(truth, response):
    assert truth(Q, response) is False
    assert truth.reason(Q, response).startswith(("does not state", "states 42 but also"))


def test_text_cannot_pass_by_accident(truth):
    """Random strings of digits, letters and punctuation almost never state the sum and nothing
    else, and an answer right for one prompt is wrong for a prompt with another sum."""
    rng = np.random.default_rng(0)
    alphabet = list("0123456789 abcdefghij.,+=")
    texts = ["".join(rng.choice(alphabet, size=int(rng.integers(1, 12)))) for _ in range(5000)]
    assert np.mean([truth(Q, t) for t in texts]) < 0.01
    many = A.SumTruth.make(n=40, seed=0)
    assert len(many.prompts) == 40 and len(set(many.prompts)) == 40
    for q in many.prompts:
        right = str(many.answer(q))
        assert many(q, right) and many(q, f"The answer is {right}.")
        others = [p for p in many.prompts if many.answer(p) != many.answer(q)]
        assert not any(many(p, right) for p in others)
    assert A.SumTruth.make(n=40, seed=0).pairs == many.pairs           # seeded
    with pytest.raises(ValueError):
        A.SumTruth.make(n=10, low=1, high=2)


def test_paired_quality_counts_and_intervals():
    rows = []
    for p, (g1, g4) in {0.6: ([1, 0, 0, 1], [1, 1, 0, 1]), 1.0: ([1, 1, 1, 1], [1, 1, 1, 0])}.items():
        for i in range(4):
            for seed in (0, 1):
                rows.append(dict(k=1, p=p, seed=seed, prompt=f"q{i}", good=bool(g1[i])))
                rows.append(dict(k=4, p=p, seed=seed, prompt=f"q{i}", good=bool(g4[i])))
    s = A.paired_quality(pd.DataFrame(rows), a=4, b=1).set_index("p")
    assert s.loc[0.6, "pairs"] == 8 and s.loc[0.6, "prompts"] == 4
    assert s.loc[0.6, "good_k1"] == 0.5 and s.loc[0.6, "good_k4"] == 0.75
    assert s.loc[0.6, "difference"] == pytest.approx(0.25)
    assert (s.loc[0.6, "a_only"], s.loc[0.6, "b_only"]) == (2, 0)
    assert s.loc[1.0, "difference"] == pytest.approx(-0.25) and s.loc[1.0, "b_only"] == 2
    for p in (0.6, 1.0):
        assert s.loc[p, "difference_lo"] <= s.loc[p, "difference"] <= s.loc[p, "difference_hi"]
        assert (s.loc[p, "good_k1_lo"], s.loc[p, "good_k1_hi"]) == pytest.approx(
            A.wilson_interval(s.loc[p, "good_k1"] * 8, 8))
    assert s.loc[0.6, "difference_lo"] >= 0.0          # every resample has K=4 no worse


def study_rows(good1, good4, seeds=(2, 3), p=0.8):
    """Rows as bench/parallel_quality.py writes them: question i is good at K = 1 / K = 4 when
    good1[i] / good4[i]; passes and simulations that differ per question and K."""
    rows = []
    for i, (g1, g4) in enumerate(zip(good1, good4)):
        for seed in seeds:
            rows.append(dict(question=f"q{i}", seed=seed, k=1, p=p, good=bool(g1), simulations=10 + i,
                             forward_calls=40 + 3 * i + seed))
            rows.append(dict(question=f"q{i}", seed=seed, k=4, p=p, good=bool(g4), simulations=12 + i,
                             forward_calls=20 + i))
    return pd.DataFrame(rows)


def test_parallel_quality_table_pairs_questions_and_counts_the_cost():
    runs = study_rows([1, 0, 1, 1, 0], [1, 1, 0, 1, 1])
    unpaired = dict(question="q9", seed=2, k=1, p=0.8, good=False, simulations=10, forward_calls=99)
    t = A.parallel_quality_table(pd.concat([runs, pd.DataFrame([unpaired])]), a=4, b=1, n_boot=500)
    assert list(t.measure) == ["share good", "share good", "difference", "passes per simulation",
                               "passes per simulation"]
    assert (t.questions == 5).all() and (t.pairs == 10).all()          # q9 has no K = 4 run
    est = t.set_index(["measure", "k"]).estimate
    assert est["share good", "1"] == pytest.approx(3 / 5) and est["share good", "4"] == pytest.approx(4 / 5)
    paired = A.paired_quality(runs.rename(columns={"question": "prompt"}), a=4, b=1, n_boot=500).iloc[0]
    d = t[t.measure == "difference"].iloc[0]
    assert (d.estimate, d.lo, d.hi) == pytest.approx((paired.difference, paired.difference_lo, paired.difference_hi))
    for k in (1, 4):
        g = runs[runs.k == k]
        assert est["passes per simulation", str(k)] == pytest.approx(g.forward_calls.sum() / g.simulations.sum())
    assert (t.lo <= t.estimate).all() and (t.estimate <= t.hi).all()
    assert (t[t.measure == "share good"].hi > t[t.measure == "share good"].lo).all()   # not zero-width
    with pytest.raises(RainToolsError, match="forward_calls"):
        A.parallel_quality_table(runs.drop(columns="forward_calls"), a=4)
    assert A.parallel_quality_table(runs[runs.k == 1], a=4).empty


def test_share_intervals_resample_questions_not_runs():
    """Two seeds that always agree carry one question's worth of evidence: the interval over
    questions is as wide as with one seed, wider than treating the runs as independent."""
    one = A.parallel_quality_table(study_rows([1, 0] * 10, [1, 0] * 10, seeds=(2,)), a=4, n_boot=2000)
    two = A.parallel_quality_table(study_rows([1, 0] * 10, [1, 0] * 10, seeds=(2, 3)), a=4, n_boot=2000)
    width = lambda t: float((t.hi - t.lo)[t.measure == "share good"].iloc[0])
    assert width(two) == pytest.approx(width(one), abs=0.03)
    lo, hi = A.wilson_interval(20, 40)
    assert width(two) > (hi - lo) + 0.05


@pytest.mark.parametrize("estimate, lo, questions, shown, few", [
    (0.01, -0.03, 120, True, False), (-0.02, -0.08, 120, False, False), (-0.10, -0.20, 120, False, False),
    (0.03, 0.00, 50, True, True), (0.00, -0.06, 119, False, True),
])
def test_parallel_verdict_says_what_the_interval_shows(estimate, lo, questions, shown, few):
    table = pd.DataFrame([dict(measure="difference", k="4 - 1", p=0.8, questions=questions, pairs=2 * questions,
                               estimate=estimate, lo=lo, hi=estimate + 0.05)])
    (line,) = A.parallel_verdict(table, margin=0.05, planned=120)
    assert ("non-inferiority not shown" in line) == (not shown)
    assert ("non-inferiority shown" in line) == shown
    assert ("Point estimate below -0.05" in line) == (estimate < -0.05)
    assert ("lower end below -0.05" in line) == (lo < -0.05)
    assert ("Too few questions" in line) == few and f"{questions} questions" in line
    assert A.parallel_verdict(table.iloc[:0]) == ["no question has both K finished: no verdict"]


def test_parallel_quality_figure_draws_its_table(monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from raintools.views.plots import legend_overlaps, plot_parallel_quality

    t = A.parallel_quality_table(study_rows([1, 0, 1, 1, 0, 1], [1, 1, 0, 1, 1, 0]), a=4, n_boot=500)
    axes = plot_parallel_quality(t, margin=0.05)
    for ax, measure in zip(axes, ("share good", "difference", "passes per simulation")):
        rows = t[t.measure == measure]
        drawn = [(c.lines[0].get_ydata()[0], *sorted(cap.get_ydata()[0] for cap in c.lines[1]))
                 for c in ax.containers]
        assert np.allclose(drawn, list(zip(rows.estimate, rows.lo, rows.hi)))
    assert any(np.allclose(line.get_ydata(), -0.05) for line in axes[1].get_lines() if len(line.get_ydata()) == 2)
    assert legend_overlaps(axes[0].figure) == []
    with pytest.raises(ValueError):
        plot_parallel_quality(pd.concat([t, t.assign(p=1.0)]))
