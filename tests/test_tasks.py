"""Tasks (harmless, truthful, sentiment): the self-evaluation templates, the value arithmetic with
three labels, prompts and judge arguments built from the real data files, the task evaluator."""

from __future__ import annotations

import dataclasses
import random

import pytest
import torch

from raintools import RainConfig, rain_generate
from raintools.config import PRESETS
from raintools.experiments.data import Item
from raintools.errors import ConfigError
from raintools.evaluate import SelfEvaluator, load_template, option_token_ids, self_evaluator
from raintools.experiments.judges import SentimentJudge, TruthfulnessJudge
from raintools.testing import tiny_model
from raintools.experiments.tasks import REVIEW_REQUEST, TASKS, MappedEvaluator, RequestWrapper, get_task
from raintools.testing import char_tokenizer, complete, word_tokenizer

NEW_TEMPLATES = ("truthful", "sentiment")


def letters_for(t):
    return "ABC"[: len(t.labels)]


# ------------------------------------------------------------------------------------------
# Templates


def test_truthful_template_parses():
    t = load_template("truthful")
    assert (t.positive, t.negative, t.others) == ("truthful", "untruthful", ())
    assert t.orders() == [("truthful", "untruthful"), ("untruthful", "truthful")]
    q = t.question_text(t.orders()[1])
    assert q.endswith("Answer: (") and "(A) untruthful (B) truthful" in q
    full = t.full_text("Why is the sky blue?", " Because of how air scatters light. ", t.orders()[0])
    assert full.startswith(t.header)
    assert "Human: Why is the sky blue?\nAssistant: Because of how air scatters light.\n" in full
    assert "{" not in full


def test_sentiment_template_has_three_labels_in_two_orders():
    t = load_template("sentiment")
    assert (t.positive, t.negative, t.others) == ("positive", "negative", ("neutral",))
    # the neutral label sits in the middle, so reversing swaps only positive and negative
    assert t.orders() == [("positive", "neutral", "negative"), ("negative", "neutral", "positive")]
    q = t.question_text(t.orders()[1])
    assert q.endswith("Answer: (") and "(A) negative (B) neutral (C) positive" in q
    # the review reads as one text: the opening ({query}) then the continuation ({response})
    full = t.full_text("I rented this film last weekend and", " it was a delight. ", t.orders()[0])
    assert "\nReview: I rented this film last weekend and it was a delight.\nWhat is" in full
    assert "{" not in full


@pytest.mark.parametrize("name", NEW_TEMPLATES)
@pytest.mark.parametrize("make_tok", [char_tokenizer, word_tokenizer], ids=["char", "word"])
def test_option_letters_are_single_tokens_on_small_tokenizers(name, make_tok):
    t, tok = load_template(name), make_tok()
    for order in t.orders():
        ids = option_token_ids(tok, t.question_text(order), letters_for(t))
        assert [tok.convert_ids_to_tokens(i).lstrip("▁") for i in ids] == list(letters_for(t))


@pytest.mark.embedded
@pytest.mark.parametrize("name", NEW_TEMPLATES)
def test_option_letters_are_single_tokens_on_the_embedded_model(embedded_lm, name):
    t = load_template(name)
    for order in t.orders():
        ids = option_token_ids(embedded_lm.tokenizer, t.question_text(order), letters_for(t))
        assert [embedded_lm.tokenizer.decode([i]) for i in ids] == list(letters_for(t))


# ------------------------------------------------------------------------------------------
# Value arithmetic (fake letter probabilities; no model)


def fake_evaluator(template: str, mode: str = "votes") -> SelfEvaluator:
    ev = SelfEvaluator.__new__(SelfEvaluator)
    ev.template = load_template(template)
    ev.orders = ev.template.orders()
    ev.mode = mode
    return ev


def probs(*rows):
    return [torch.tensor(r) for r in rows]


def test_three_label_votes_and_soft_margin():
    ev = fake_evaluator("sentiment")
    # order 1 letters: A positive, B neutral, C negative; order 2: A negative, B neutral, C positive
    assert ev._value(probs([.7, .2, .1], [.1, .2, .7])) == 1.0       # positive in both orders
    assert ev._value(probs([.1, .2, .7], [.7, .2, .1])) == -1.0      # negative in both
    assert ev._value(probs([.2, .7, .1], [.1, .7, .2])) == 0.0       # neutral in both
    assert ev._value(probs([.7, .2, .1], [.2, .7, .1])) == 0.5       # positive, then neutral
    assert ev._value(probs([.1, .2, .7], [.2, .7, .1])) == -0.5      # negative, then neutral
    assert ev._value(probs([.7, .2, .1], [.7, .2, .1])) == 0.0       # always "A": the orders disagree
    assert ev._value(probs([.1, .2, .7], [.1, .2, .7])) == 0.0       # always "C": the same
    soft = fake_evaluator("sentiment", "soft")
    assert soft._value(probs([.6, .3, .1], [.2, .5, .3])) == pytest.approx(((.6 - .1) + (.3 - .2)) / 2)
    assert soft._value(probs([0., 1., 0.], [0., 1., 0.])) == 0.0     # all neutral: no margin
    assert soft._value(probs([.5, .3, .2], [.5, .3, .2])) == 0.0     # letter bias cancels


def test_two_label_values_are_unchanged_by_the_three_label_rule():
    """Against the two-label formulas: v = 2 * votes / orders - 1 and mean(2 p(positive) - 1)."""
    rng = random.Random(0)
    for name in ("harm", "truthful"):
        votes, soft = fake_evaluator(name), fake_evaluator(name, "soft")
        for _ in range(200):
            a, b = rng.choice([rng.random(), 0.5]), rng.random()
            ps = probs([a, 1 - a], [b, 1 - b])
            j = [o.index(votes.template.positive) for o in votes.orders]
            old_votes = sum(float(p[i]) > float(p[1 - i]) for p, i in zip(ps, j))
            assert votes._value(ps) == 2 * old_votes / 2 - 1
            assert soft._value(ps) == pytest.approx(sum(2 * float(p[i]) - 1 for p, i in zip(ps, j)) / 2, abs=1e-6)


@pytest.mark.parametrize("name", NEW_TEMPLATES)
def test_cached_and_reference_self_evaluation_agree_on_a_tiny_model(name):
    # the template's own sections, with a one-line header (the char model computes every letter)
    t = dataclasses.replace(load_template(name), header="Judge the text.")
    lm = tiny_model(seed=2)
    cached, ref = SelfEvaluator(lm, t, mode="soft"), SelfEvaluator(lm, t, mode="soft", cached=False)
    for q, r in [("A fine film", "and I loved it."), ("Is it true?", "")]:
        assert cached(q, r) == pytest.approx(ref(q, r), abs=1e-4)
        assert torch.allclose(torch.tensor(cached.last_probs), torch.tensor(ref.last_probs), atol=1e-4)
        assert torch.tensor(cached.last_probs).shape == (2, len(cached.template.labels))


@pytest.mark.embedded
def test_new_templates_give_values_in_range_on_the_embedded_model(embedded_lm):
    tq, sent = get_task("truthful"), get_task("sentiment")
    cases = [(tq, "What is the capital of France?", "The capital of France is Paris."),
             (tq, "What is the capital of France?", "The capital of France is Rome."),
             (sent, REVIEW_REQUEST.wrap("I watched this film twice and"), "I loved every minute."),
             (sent, REVIEW_REQUEST.wrap("I watched this film twice and"), "")]
    for task, prompt, response in cases:
        n = len(load_template(task.template).labels)
        v = task.evaluator(embedded_lm)(prompt, response)
        assert v in {-1.0, -0.5, 0.0, 0.5, 1.0} and -1.0 <= v <= 1.0
        soft = task.evaluator(embedded_lm, "soft")
        s = soft(prompt, response)
        assert -1.0 <= s <= 1.0
        p = torch.tensor(soft.last_probs)
        assert p.shape == (2, n) and torch.allclose(p.sum(-1), torch.ones(2), atol=1e-5)
    # the sentiment evaluator reads the review opening, not the request around it
    plain = self_evaluator(embedded_lm, "sentiment", "soft")
    wrapped = sent.evaluator(embedded_lm, "soft")
    assert wrapped(REVIEW_REQUEST.wrap("A slow start, but"), "it grows on you.") == pytest.approx(
        plain("A slow start, but", "it grows on you."))


# ------------------------------------------------------------------------------------------
# Tasks


def test_registered_tasks_and_presets():
    assert {"harmless", "truthful", "sentiment"} <= set(TASKS)
    tq, sent = get_task("truthful"), get_task("sentiment")
    assert (tq.template, tq.judges, tq.data_task) == ("truthful", ("truthfulness",), "truthfulqa")
    assert (sent.template, sent.judges, sent.data_task) == ("sentiment", ("sentiment",), "imdb")
    assert tq.preset().min_visits == 16 and tq.preset().name == "truthfulqa"
    assert sent.preset().name == "sentiment" and sent.preset(max_new_tokens=8).max_new_tokens == 8
    assert PRESETS["sentiment"]() == RainConfig.sentiment()
    for task in TASKS.values():
        load_template(task.template)            # every task's template exists and parses
    with pytest.raises(ConfigError, match="Unknown task"):
        get_task("kindness")


def test_request_wrapper_round_trip():
    w = RequestWrapper("Please go on: {text} (thanks)")
    assert w.wrap("Once upon") == "Please go on: Once upon (thanks)"
    assert w.unwrap(w.wrap("Once upon")) == "Once upon"
    assert w.unwrap("not wrapped") == "not wrapped"
    assert REVIEW_REQUEST.unwrap(REVIEW_REQUEST.wrap("It was")) == "It was"
    with pytest.raises(ConfigError):
        RequestWrapper("no placeholder")


def test_harmless_evaluator_is_the_default_self_evaluator():
    lm = tiny_model(seed=0)
    assert get_task("harmless").evaluator(lm) is self_evaluator(lm, "harm", "votes")
    assert get_task("harmless").judge_kwargs(Item("x", "q"), "refusal") == {}


def test_task_evaluator_maps_the_query_and_runs_in_rain():
    lm = tiny_model(seed=0)
    sent = get_task("sentiment")
    ev = sent.evaluator(lm, "soft")
    assert isinstance(ev, MappedEvaluator)
    assert ev(REVIEW_REQUEST.wrap("A fine film"), "and fun.") == self_evaluator(lm, "sentiment", "soft")(
        "A fine film", "and fun.")
    assert ev.stats is ev.inner.stats and ev.template.name == "sentiment"
    seen = []

    class Recorder:
        def __call__(self, query, response):
            seen.append(query)
            return 0.0

    rec = MappedEvaluator(Recorder(), sent.query_fn)
    prompt = sent.prompt(Item("imdb-0000", "A fine film"))
    cfg = RainConfig(max_new_tokens=3, max_simulations=2, extra_simulations=1, min_visits=1,
                     clause_max_tokens=2, similarity_update=False, node_addition=False)
    r = rain_generate(lm, prompt, cfg, evaluator=rec)
    assert r.prompt == prompt and seen and set(seen) == {"A fine film"}


def fake_embedder(texts):
    """Deterministic bag-of-letters embedding (no model)."""
    out = torch.zeros(len(texts), 27)
    for i, t in enumerate(texts):
        for ch in t.lower():
            out[i, ord(ch) - 97 if "a" <= ch <= "z" else 26] += 1
    return out + 1e-3


def test_truthful_task_on_the_real_file(shared_data):
    task = get_task("truthful")
    items = task.load(shared_data / "truthfulqa" / "TruthfulQA.csv", limit=3)
    assert [it.id for it in items] == ["tqa-0000", "tqa-0001", "tqa-0002"]
    assert task.load("truthfulqa", limit=1)[0].prompt == items[0].prompt       # by short name
    it = items[0]
    assert task.prompt(it) == it.prompt and it.prompt.endswith("?")
    assert task.judge_query(task.prompt(it)) == it.prompt
    kw = task.judge_kwargs(it, "truthfulness")
    assert set(kw["correct"]) == {it.meta["best"], *it.meta["correct"]}
    assert kw["incorrect"] == it.meta["incorrect"]
    assert task.judge_kwargs(it, "sentiment") == {}
    judges = task.make_judges(items, embedder=fake_embedder)
    judge = judges["truthfulness"]
    assert isinstance(judge, TruthfulnessJudge)
    assert task.judge_kwargs(it, judge) == kw                  # by Judge object ("truthfulness:custom")
    best = judge.judge(it.prompt, it.meta["best"], **kw)
    assert best["truthful"] and best["max_correct"] == pytest.approx(1.0, abs=1e-5)
    batch = judge.judge_many([(x.prompt, x.meta["incorrect"][0]) for x in items])
    assert [v["truthful"] for v in batch] == [False, False, False]
    assert judge.judge(task.prompt(it), it.meta["best"]) == best           # references by prompt
    with pytest.raises(ConfigError, match="no TruthfulQA references"):
        task.judge_kwargs(Item("x", "Why?"), "truthfulness")


def test_sentiment_task_on_the_real_file(shared_data):
    task = get_task("sentiment")
    items = task.load(shared_data / "imdb" / "imdb_test.csv", limit=3)
    assert len(items) == 3 and all(it.meta["sentiment"] in ("positive", "negative") for it in items)
    for it in items:
        p = task.prompt(it)
        assert it.prompt in p and p != it.prompt and "review" in p.lower()
        assert task.judge_query(p) == it.prompt
        assert task.judge_kwargs(it, "sentiment") == {}
    judges = task.make_judges(items)
    assert set(judges) == {"sentiment"} and isinstance(judges["sentiment"], SentimentJudge)
    pytest.importorskip("vaderSentiment")
    v = judges["sentiment"].judge(items[0].prompt, "A wonderful, moving film; I loved it.")
    assert v["positive"] and v["score"] > 0


# ------------------------------------------------------------------------------------------
# The public code's TruthfulQA variant: one Yes/No vote, completion to the end of the turn,
# the answer judged up to its last full stop


def test_truthful_yesno_template_asks_one_order_with_yes_no_answers():
    t = load_template("truthful_yesno")
    assert t.orders() == [("truthful", "untruthful")] and t.option_letters() == (" Yes", " No")
    full = t.full_text("Is the Earth flat?", " No, it is round.", t.orders()[0])
    assert full.startswith(t.header) and full.endswith("Q: Is the Earth flat?\nA: No, it is round.\n"
                                                      "Is the answer truthful?")
    task = get_task("truthful-yesno")
    assert (task.template, task.data_task, task.judges) == ("truthful_yesno", "truthfulqa", ("truthfulness",))
    cfg = task.preset()
    assert (cfg.min_visits, cfg.complete_until, cfg.cut_at_last_stop) == (16, "turn", True)
    assert PRESETS["truthfulqa-yesno"]() == cfg


def test_truthful_yesno_vote_arithmetic():
    votes, soft = fake_evaluator("truthful_yesno"), fake_evaluator("truthful_yesno", "soft")
    # one order, (Yes, No): the single vote is +1 when "Yes" is strictly more likely, else -1
    assert votes._value(probs([.7, .3])) == 1.0
    assert votes._value(probs([.3, .7])) == -1.0
    assert votes._value(probs([.5, .5])) == -1.0          # a tie is not a "Yes"
    assert soft._value(probs([.7, .3])) == pytest.approx(0.4)
    rng = random.Random(1)
    for _ in range(100):                                  # v = 2 A - 1 with A = [p(Yes) > p(No)]
        a = rng.random()
        assert votes._value(probs([a, 1 - a])) == 2 * (a > 1 - a) - 1


@pytest.mark.parametrize("kind", ["sentencepiece", pytest.param("embedded", marks=pytest.mark.embedded)])
def test_truthful_yesno_judge_on_real_tokenizers(kind, request):
    lm = request.getfixturevalue("llama_lm" if kind == "sentencepiece" else "embedded_lm")
    ev = SelfEvaluator(lm, "truthful_yesno")
    ref = SelfEvaluator(lm, "truthful_yesno", cached=False)
    assert [lm.tokenizer.decode([i]).strip() for i in ev.letter_ids] == ["Yes", "No"]
    for q, r in [("Is the Earth flat?", "No, it is round."), ("Is the Earth flat?", "Yes.")]:
        v = ev(q, r)
        assert v in (-1.0, 1.0) and v == ref(q, r)
        assert ev.last_ids == ev.prompt_ids(q, r) and len(ev.last_ids) == 1
        p = torch.tensor(ev.last_probs)
        assert p.shape == (1, 2) and torch.allclose(p, torch.tensor(ref.last_probs), atol=1e-4)
        assert v == (1.0 if p[0, 0] > p[0, 1] else -1.0)


def test_truthful_yesno_search_completes_the_turn_and_judges_up_to_the_last_stop():
    from raintools import RainSearch
    from raintools.search import Simulation
    from raintools.tree import Node

    lm = tiny_model(seed=5)
    seen = []
    cfg = RainConfig.truthfulqa_yesno(max_new_tokens=24, max_simulations=6, extra_simulations=2,
                                      min_visits=2, clause_max_tokens=12)
    s = RainSearch(lm, "Is it true?", cfg, evaluator=lambda q, r: seen.append(r) or -1.0,
                   embedder=lambda texts: torch.ones(len(texts), 4))
    s.run()
    assert seen and all(r.endswith(".") or "." not in r for r in seen)
    # the judged text is the cut one: text after the last full stop is dropped; without one, whole
    for text, judged in [("It is round. Some say", "It is round."), ("No full stop here",) * 2]:
        seen.clear()
        s.memo.clear()
        s.response = []          # the response judged is the leaf's tokens alone
        s.evaluate(Simulation([s.root, Node(tuple(lm.encode(text)), parent=s.root)]))
        assert seen == [judged]
    # completions run to the end of the turn: a clause end does not stop them, only EOS or the budget
    import numpy as np

    turn, clause = (RainSearch(lm, "Is it true?", cfg.replace(complete_until=until),
                               evaluator=lambda q, r: -1.0, embedder=lambda texts: torch.ones(len(texts), 4))
                    for until in ("turn", "clause"))
    stopped_early = 0
    for seed in range(12):
        turn_out, _ = complete(turn.engine, turn.root, [], np.random.default_rng(seed), 12,
                                    turn.cfg.complete_until)
        clause_out, _ = complete(clause.engine, clause.root, [], np.random.default_rng(seed), 12,
                                      clause.cfg.complete_until)
        assert len(turn_out) == 12 or lm.is_stop_token(turn_out[-1])
        assert turn_out[: len(clause_out)] == clause_out          # the same draws, continued
        stopped_early += len(clause_out) < len(turn_out)
    assert stopped_early > 0                                     # the clause rule did stop some
