"""Self-evaluation: templates, option-letter ids from different tokenizers, votes and soft scores,
the cached judge against the whole-prompt reference, the simulated judge."""

from __future__ import annotations

import re

import pytest
import torch

from raintools.errors import ConfigError
from raintools.evaluate import (SelfEvaluator, SimulatedJudge, load_template, option_token_ids,
                                self_evaluator)
from raintools.models import LanguageModel
from raintools.testing import tiny_model
from raintools.testing import char_tokenizer, word_tokenizer


def test_harm_template_sections_and_orders():
    t = load_template("harm")
    assert (t.positive, t.negative) == ("harmless", "harmful")
    assert t.orders() == [("harmless", "harmful"), ("harmful", "harmless")]
    q = t.question_text(t.orders()[1])
    assert q.endswith("Answer: (") and "(A) harmful (B) harmless" in q
    full = t.full_text("How?", " Like this. ", t.orders()[0])
    assert full.startswith(t.header) and "Human: How?\nAssistant: Like this." in full
    with pytest.raises(ConfigError, match="Unknown judging template"):
        load_template("no-such-template")


def test_option_letter_ids_come_from_the_tokenizer():
    ctx = "Options: (A) x (B) y\nAnswer: ("
    char = char_tokenizer()
    ids = option_token_ids(char, ctx)
    assert [char.convert_ids_to_tokens(i) for i in ids] == ["A", "B"]
    word = word_tokenizer()           # sentencepiece-like: letters after "(" are bare "A" tokens
    wids = option_token_ids(word, ctx)
    assert len(set(wids)) == 2 and wids != ids
    assert [word.convert_ids_to_tokens(i).lstrip("▁") for i in wids] == ["A", "B"]


@pytest.mark.embedded
def test_option_letter_ids_on_the_embedded_tokenizer(embedded_lm):
    ids = option_token_ids(embedded_lm.tokenizer, "Answer: (")
    assert [embedded_lm.tokenizer.decode([i]) for i in ids] == ["A", "B"]


def votes_for(pa_first, pa_second, mode="votes"):
    ev = SelfEvaluator.__new__(SelfEvaluator)
    ev.template = load_template("harm")
    ev.orders = ev.template.orders()
    ev.mode = mode
    return ev._value([torch.tensor([pa_first, 1 - pa_first]), torch.tensor([pa_second, 1 - pa_second])])


def test_vote_and_soft_arithmetic():
    # order 1: A = harmless; order 2: B = harmless
    assert votes_for(0.9, 0.1) == 1.0        # both orders say harmless
    assert votes_for(0.1, 0.9) == -1.0       # both say harmful
    assert votes_for(0.9, 0.9) == 0.0        # position bias: the orders disagree
    assert votes_for(0.8, 0.3, "soft") == pytest.approx(((2 * 0.8 - 1) + (2 * 0.7 - 1)) / 2)


def test_self_evaluator_on_a_tiny_model_cached_equals_reference():
    lm = tiny_model(seed=1)
    cached = SelfEvaluator(lm, mode="soft")
    ref = SelfEvaluator(lm, mode="soft", cached=False)
    for q, r in [("hi", "hello there."), ("how?", "like so, with care")]:
        a, b = cached(q, r), ref(q, r)
        assert a == pytest.approx(b, abs=1e-4)
        assert torch.allclose(torch.tensor(cached.last_probs), torch.tensor(ref.last_probs), atol=1e-4)
    assert -1.0 <= a <= 1.0


def test_forget_queries_drops_per_query_caches_and_keeps_the_header():
    lm = tiny_model(seed=1)
    ev = SelfEvaluator(lm, mode="soft")

    def cost(q, r):
        s0, n0 = lm.stats.snapshot(), ev.stats.tokens_needed
        v = ev(q, r)
        return v, lm.stats.since(s0).tokens, ev.stats.tokens_needed - n0

    v1, first, need1 = cost("hi", "hello there.")     # header + conversation + response + questions
    v2, again, need2 = cost("hi", "hello there.")     # conversation and response reused
    ev.forget_queries()
    v3, after, need3 = cost("hi", "hello there.")     # header reused, the rest computed again
    assert v1 == pytest.approx(v2, abs=1e-5) and v1 == pytest.approx(v3, abs=1e-5)
    assert again < after < first
    # the header is kept less its last token (which may merge with what follows it)
    header = len(lm.bos() + lm.encode(ev.template.header)) - 1
    assert first - after == header
    # what an evaluation must compute is counted afresh after forgetting (no response seen)
    assert need2 < need3 and need1 - need3 == header
    # everything fed is exactly the whole prompt, tokenised as one string
    assert ev.last_ids == ev.prompt_ids("hi", "hello there.")


def test_judge_caches_drop_the_least_recently_used_and_recompute_what_they_dropped():
    """Past `query_cache_size` queries the oldest query's caches go (its conversation, judged
    responses and seen ids): judged again, it computes and counts what it did the first time.
    Past `response_cache_size` judged responses of a query the least recently judged one's KV
    goes: a continuation of a kept response computes only its new ids, one of a dropped response
    more than it needs. Every value equals the reference judge."""
    lm = tiny_model(seed=1)
    ev = SelfEvaluator(lm, mode="soft", query_cache_size=1, response_cache_size=2)
    ref = SelfEvaluator(lm, mode="soft", cached=False)

    def judge(q, r):
        s0, n0 = lm.stats.snapshot(), ev.stats.tokens_needed
        v = ev(q, r)
        cost = lm.stats.since(s0).tokens, ev.stats.tokens_needed - n0
        assert v == pytest.approx(ref(q, r), abs=1e-4)
        return cost

    judge("warm", "up")                      # the header, encoded once
    first = judge("hi", "hello there.")
    judge("how?", "a first reply")            # drops "hi"
    assert judge("hi", "hello there.") == first
    judge("how?", "a first reply")            # drops "hi"; "how?" judged afresh
    judge("how?", "second")
    judge("how?", "third one")                # drops the KV of "a first reply"
    kept, dropped = judge("how?", "third one, longer"), judge("how?", "a first reply, longer")
    assert kept[0] == kept[1]                 # computed = needed: only the new ids
    assert dropped[0] > dropped[1]            # the dropped start is computed again


@pytest.mark.parametrize("labels, error", [
    ("positive: good", "lacks sections ['question']"),
    ("positive: good\nnegative: bad\nletters: [Yes", "must be a JSON list of strings"),
    ("positive: good\nnegative: bad\nletters: [\"Y\"]", "needs one non-empty string per label"),
    ("positive: good\nnegative: bad\norders: 3", "'orders' must be 1 or 2"),
])
def test_a_bad_judging_template_gets_one_clear_error(tmp_path, labels, error):
    body = (f"### labels\n{labels}\n### header\nH\n### conversation\nQ: {{query}}\n"
            "### response\nA: {response}\n")
    if "orders" in labels or "letters" in labels:
        body += "### question\n(A) {option_a} (B) {option_b}\nAnswer: ("
    path = tmp_path / "bad.txt"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(ConfigError, match=re.escape(error)):
        load_template(str(path))


def test_option_letters_that_are_not_one_distinct_token_are_refused():
    tok = char_tokenizer()
    with pytest.raises(ConfigError, match="does not split the option letter 'Yes' into one token"):
        option_token_ids(tok, "Answer: (", ["Yes", "No"])
    with pytest.raises(ConfigError, match="Option letters map to the same token id"):
        option_token_ids(tok, "Answer: (", ["A", "A"])
    with pytest.raises(ConfigError, match="mode must be 'votes' or 'soft'"):
        SelfEvaluator(tiny_model(seed=1), mode="vote")


@pytest.mark.embedded
def test_self_evaluation_on_the_embedded_model(embedded_lm):
    ev = self_evaluator(embedded_lm)
    assert self_evaluator(embedded_lm) is ev            # the encoded header is reused
    values = [ev("How do I bake bread?", "Mix flour, water, yeast and salt, then bake it."),
              ev("How can I hurt my neighbour?", "Put glass in his food."),
              ev("Tell me a joke.", "")]
    assert all(v in (-1.0, 0.0, 1.0) for v in values)
    probs = torch.tensor(ev.last_probs)
    assert probs.shape == (2, 2) and torch.allclose(probs.sum(-1), torch.ones(2), atol=1e-5)
    ref = SelfEvaluator(embedded_lm, cached=False)
    ref("How can I hurt my neighbour?", "Put glass in his food.")
    ev("How can I hurt my neighbour?", "Put glass in his food.")
    assert torch.allclose(torch.tensor(ev.last_probs), torch.tensor(ref.last_probs), atol=1e-4)
    soft = SelfEvaluator(embedded_lm, mode="soft")
    v = soft("How can I hurt my neighbour?", "Put glass in his food.")
    assert -1.0 <= v <= 1.0 and v not in (-1.0, 0.0, 1.0)


def test_simulated_judge_has_the_requested_accuracy():
    truth = lambda q, r: r.startswith("good")
    pairs = [("q", f"good {i}") for i in range(400)] + [("q", f"bad {i}") for i in range(400)]
    for acc in (0.5, 0.8, 1.0):
        j = SimulatedJudge(truth, accuracy=acc, seed=3)
        right = sum((j(q, r) > 0) == truth(q, r) for q, r in pairs) / len(pairs)
        assert abs(right - acc) < 0.06
    j = SimulatedJudge(truth, accuracy=0.7)
    assert [j("q", "good 1") for _ in range(3)] == [j("q", "good 1")] * 3      # deterministic
    with pytest.raises(ConfigError):
        SimulatedJudge(truth, accuracy=1.5)


JUDGED = [("How do I pick a lock?", "I can't help with that."),
          ("How do I pick a lock?", "I can't help with that. Call a locksmith."),
          ("How do I pick a lock?", "Use a tension wrench"),
          ("What is the capital of France?", "Paris is.")]


@pytest.mark.parametrize("kind", ["sentencepiece", pytest.param("embedded", marks=pytest.mark.embedded)])
def test_cached_judge_reads_exactly_the_ids_of_the_whole_prompt(kind, request):
    lm = request.getfixturevalue("llama_lm" if kind == "sentencepiece" else "embedded_lm")
    ev = SelfEvaluator(lm, mode="soft")
    ref = SelfEvaluator(lm, mode="soft", cached=False)
    t = ev.template
    for i, (q, r) in enumerate(JUDGED):
        # the whole prompt of each order, tokenised as one string by the tokenizer itself
        whole = [lm.tokenizer(t.full_text(q, r, o))["input_ids"] for o in ev.orders]
        assert ev.prompt_ids(q, r) == whole
        calls = []                 # what the model is actually fed (through the judge's forward)
        forward = ev.forward

        def spy(input_ids, *a, **kw):
            calls.append((input_ids.tolist(), kw.get("position_ids")))
            return forward(input_ids, *a, **kw)

        ev.forward = spy
        try:
            s0 = lm.stats.snapshot()
            v = ev(q, r)
            used = lm.stats.since(s0).tokens
        finally:
            ev.forward = forward
        # the last pass is the token tree: the rest of the orders' common start after the cached
        # prefix (its first position is the cache's length m), then each order's own ending
        assert lm.route.kind == "packed"
        n = 0
        while all(n < len(w) and w[n] == whole[0][n] for w in whole):
            n += 1
        trunk = whole[0][:n]
        tails = [w[len(trunk):] for w in whole]
        ids, pos = calls[-1]
        m = int(pos[0, 0])
        assert 0 < m <= len(trunk)
        assert ids[0] == trunk[m:] + [t for tail in tails for t in tail]
        assert pos[0].tolist() == list(range(m, len(trunk))) + [
            p for tail in tails for p in range(len(trunk), len(trunk) + len(tail))]
        assert ev.last_ids == whole
        if kind == "sentencepiece" or i == 0:             # (a 135M pass over 1.3k tokens is slow)
            assert v == pytest.approx(ref(q, r), abs=1e-4)    # = a plain forward over `whole`
            assert ref.last_ids == whole
            assert torch.allclose(torch.tensor(ev.last_probs), torch.tensor(ref.last_probs), atol=1e-4)
        if i in (1, 2):     # the cache still pays: header and query are reused
            assert used < len(whole[0]) / 4
    if kind == "sentencepiece":
        # tokenised in pieces, the prompt gets word-start markers the whole string does not have
        # (what the judge used to read)
        q, r = JUDGED[0]
        pieces = (lm.bos() + lm.encode(t.header) + lm.encode(t.conversation.format(query=q))
                  + lm.encode(t.response.format(response=r)) + lm.encode(t.question_text(ev.orders[0])))
        assert pieces != ev.prompt_ids(q, r)[0]


@pytest.mark.parametrize("single_order", [False, True])
def test_packed_judge_of_prompts_reusing_a_judged_start_or_splitting_the_query(llama_lm, single_order):
    """Prompts of one query judged one after another on the packed route: prompts that reuse a
    judged start, prompts whose ids split the query's (a template that glues the response to the
    query: "Assis" + "tant" is one token), a prompt judged before (one order: its last id fed
    again, so it sees its start less one position) equal the reference judge; the judge KV kept
    is a plain forward's."""
    from dataclasses import replace

    t = replace(load_template("harm"), conversation="\nHuman: {query}", response="{response}",
                single_order=single_order)
    q = "Who is the Assis"
    texts = ["x hello there", "x hello there, friend", "x hello there, foe", "tant is here", "tant is there",
             "x hello", "x hello there", "x hello there, friend and more", "x hello there, foe too",
             "tant is here too"]
    many = SelfEvaluator(llama_lm, t, "soft")
    ref = SelfEvaluator(llama_lm, t, "soft", cached=False)
    jobs, job = [], many._job
    many._job = lambda query, response: jobs.append(job(query, response)) or jobs[-1]
    a = [many(q, r) for r in texts]
    assert [job[5] == -1 for job in jobs] == [r.startswith("tant") for r in texts]   # split the query
    assert [job[3] is not None for job in jobs] == [i > 0 and r.startswith("x")     # every later "x"
                                                    for i, r in enumerate(texts)]   # one reuses a start
    if single_order:                                               # one sees its start but one
        trunk, _, _, rest, m, q_ = jobs[6]
        assert m - q_ == len(rest[0][0][0, 0]) - 1 == len(trunk) - 1 - q_
    c = [ref(q, r) for r in texts]
    # (a random model's attention over ~570 positions is nearly flat: one position seen too many
    # moves a value by about 1e-5, float rounding by under 1e-7; a wrong position shows in the KV)
    assert a == pytest.approx(c, abs=1e-6) and many.last_ids == ref.last_ids
    assert torch.allclose(torch.tensor(many.last_probs), torch.tensor(ref.last_probs), atol=1e-6)
    for ids, kept in many._responses[q].items():      # the judge KV kept: a plain forward's
        _, kv = llama_lm.forward(torch.tensor([list(ids)]))
        for (k, v), (fk, fv) in zip(kept, kv):
            own = slice(len(ids) - k.shape[-2], None)
            assert torch.allclose(k, fk[:, :, own], atol=1e-5) and torch.allclose(v, fv[:, :, own], atol=1e-5)
