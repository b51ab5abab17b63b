"""The checkable ground truth of the simulated-judge experiments (sums) on constructed answers,
the paired comparison of two searches, and its figure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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


def test_parallel_quality_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("MPLBACKEND", "Agg")
    from raintools.views.plots import plot_parallel_quality

    summary = pd.DataFrame([dict(p=p, pairs=80, prompts=40, good_k1=0.5, good_k1_lo=0.4, good_k1_hi=0.6,
                                 good_k4=0.55, good_k4_lo=0.44, good_k4_hi=0.65, difference=0.05,
                                 difference_lo=-0.04, difference_hi=0.14) for p in (0.6, 0.8, 1.0)])
    left, right = plot_parallel_quality(summary)
    assert len(left.get_xticklabels()) == 3
    assert any(abs(line.get_ydata()[0] + 0.05) < 1e-12 for line in right.get_lines()
               if len(line.get_ydata()) == 2)
