"""The search's rules one phase at a time, each on a tiny random model in milliseconds (no whole
search unless it is a few steps long): the early-stop test and its edges, the step budget, the
commit rule, dynamic node addition (what it adds, its cap, its draws, its cost), the counters of a
result's stats and the trace's commit records, the progress bar; the engines' expansions against
the reference engine and the model's own forward (rollouts, clause completions that outlast them,
both routes), the reference engine's costs (the public code's), and the commit's caches.

Written against the survivors of a mutation run (mutmut 3.8.1 over search.py, engines.py and
observe.py against the fast tests, 2026-12-07; partial: 1,030 of 2,184 mutants run): each test
asserts a rule of the spec (`docs/rain-spec.md` of the project's shared docs) or a number users
read; each was seen failing with its survivor's mutation applied by hand."""

from __future__ import annotations

import re
import time
from collections import Counter

import numpy as np
import pytest
import torch

from raintools import RainConfig, RainSearch, rain_generate
from raintools.engine import CompletionRequest, Expansion
from raintools.engines import CachedEngine, ReferenceEngine
from raintools.models import kv_len, kv_slice
from raintools.observe import Observer
from raintools.sampling import COMPLETE, keyed_rng
from raintools.testing import tiny_model
from raintools.tree import Node

from model_families import build
from test_search import SMALL, letter_embedder, vowel_judge

good = lambda q, r: 1.0        # noqa: E731  every response judged harmless
bad = lambda q, r: -1.0        # noqa: E731
alike = lambda texts: torch.ones(len(texts), 4)    # noqa: E731  every text embedded the same


def search(lm, cfg=SMALL, evaluator=vowel_judge, embedder=letter_embedder, **kw):
    return RainSearch(lm, "hello", cfg, evaluator=evaluator, embedder=embedder, **kw)


# ------------------------------------------------------------------ early stop and the step budget

def test_early_stop_fires_only_past_both_thresholds_on_the_most_visited_child(tiny_lm):
    """Spec, outer loop: stop early when the most-visited root child has fn > T_m and q > V; a child
    exactly at either threshold does not stop, nor does a good child that is not the most visited."""
    cfg = SMALL.replace(min_visits=3, value_threshold=0.5)
    s = search(tiny_lm, cfg)
    assert not s.should_stop_early()                     # no child yet
    s.expand(s.root)
    a, b = s.root.children[:2]

    def visits(node, fn, q):
        node.n, node.fn, node.q = float(fn), fn, q

    visits(a, 4, 0.6)
    assert s.should_stop_early()
    visits(a, 3, 0.6)                                    # fn == T_m
    assert not s.should_stop_early()
    visits(a, 4, 0.5)                                    # q == V
    assert not s.should_stop_early()
    visits(a, 4, 0.6)
    visits(b, 5, 0.0)                                    # b is the most visited, and not good
    assert not s.should_stop_early()
    visits(b, 4, 0.0)                                    # a tie on visits goes to the higher q: a
    assert s.should_stop_early()


def test_a_step_stops_right_after_the_first_back_up_that_passes_the_test(tiny_lm):
    """The test runs after each back-up (K = 1): the step's simulations are exactly those up to the
    first one after which the most visited root child is past both thresholds."""
    passed = []

    class Watch(Observer):
        def backed_up(self, search, sim, similarity):
            best = max(search.root.children, key=lambda ch: (ch.n, ch.q), default=None)
            passed.append(best is not None and best.fn > 2 and best.q > 0.8)

    cfg = SMALL.replace(max_simulations=20, extra_simulations=5, min_visits=2, value_threshold=0.8)
    s = search(tiny_lm, cfg, evaluator=good, observers=[Watch()])
    s.commit_step()
    assert True in passed
    assert s.stats.sims_per_step == [passed.index(True) + 1] and s.counts["early_stops"] == 1
    assert len(passed) == passed.index(True) + 1 < 20


def test_each_step_runs_max_of_T_minus_the_kept_visits_and_the_extra_simulations(tiny_lm):
    """Spec: simulations from initi = root.fn (the kept subtree's visits) up to max(T, initi + 15):
    a step's budget is max(T - root.fn, extra_simulations), whole when nothing stops it early."""
    cfg = SMALL.replace(max_new_tokens=12, max_simulations=12, extra_simulations=3, min_visits=2,
                        value_threshold=1.0)           # q > 1 never: no early stop
    s = search(tiny_lm, cfg)
    kept, budgets = [], []
    while not s.finished:
        kept.append(int(s.root.fn))
        budgets.append(max(cfg.max_simulations - kept[-1], cfg.extra_simulations))
        s.commit_step()
    assert s.stats.sims_per_step == budgets and s.counts["early_stops"] == 0
    assert kept[0] == 0 and any(k > 0 for k in kept[1:])                # visits reused
    assert any(b == cfg.extra_simulations for b in budgets[1:])         # both terms of the max


# ------------------------------------------------------------------ the commit rule

def _commit_from(lm, rule, seed):
    """A root with children of visits a 1, b 3 (q 0.1), c 3 (q 0.5), the rest none; the step's
    simulations skipped so that the commit sees exactly these visits."""
    s = search(lm, SMALL.replace(commit_rule=rule, seed=seed))
    s.expand(s.root)
    a, b, c = s.root.children[:3]
    for node, (fn, q) in zip((a, b, c), ((1, -0.2), (3, 0.1), (3, 0.5))):
        node.n, node.fn, node.q = float(fn), fn, q
    s.root.n = s.root.fn = 8
    s.simulate_step = lambda budget: False
    return s.commit_step(), (a, b, c)


def test_argmax_commits_the_most_visited_child_ties_by_q(tiny_lm):
    for seed in range(4):
        chosen, (a, b, c) = _commit_from(tiny_lm, "argmax", seed)
        assert chosen is c


def test_sample_commits_by_a_draw_proportional_to_visits(tiny_lm):
    """The paper's rule: a child drawn with probability n / sum(n): never an unvisited one, the
    less visited ones too, shares about 1 : 3 : 3 over seeds."""
    picks = Counter()
    for seed in range(28):
        chosen, kids = _commit_from(tiny_lm, "sample", seed)
        assert chosen in kids
        picks[kids.index(chosen)] += 1
    assert picks[0] >= 1 and picks[1] >= 5 and picks[2] >= 5 and picks[0] < min(picks[1], picks[2])


# ------------------------------------------------------------------ dynamic node addition

def _two_token_leaf(lm, cfg):
    """A search and a leaf at the 2-token level (a child of the root), expanded."""
    s = search(lm, cfg, evaluator=bad, embedder=alike)
    s.expand(s.root)
    leaf = s.root.children[0]
    s.expand(leaf)
    return s, leaf


def _ticks(s):
    """The logical ticks (raintools.flow) of each request the search makes from now on."""
    seen, real = [], s.flow.request

    def spy(ticks, made=True):
        seen.append(ticks)
        return real(ticks, made)

    s.flow.request = spy
    return seen


def test_node_addition_at_the_one_token_level_adds_the_next_ranked_token(tiny_lm):
    """Spec: the next-ranked token (one, at the token temperature), priors renormalised; no
    forward pass, and its token is not counted as computed (it is not, until it is expanded)."""
    cfg = SMALL.replace(num_candidates=3, token_temperature=2.0)
    s = search(tiny_lm, cfg, evaluator=bad, embedder=alike)
    s.expand(s.root)
    probs = torch.softmax(s.root.logits.float() / 2.0, -1)
    ranked = torch.argsort(probs, descending=True).tolist()
    assert [ch.tokens for ch in s.root.children] == [(t,) for t in ranked[:3]]
    needed, before, ticks = s.counts["tokens_needed"], tiny_lm.stats.snapshot(), _ticks(s)
    added = s.add_nodes(s.root)
    assert [ch.tokens for ch in added] == [(ranked[3],)] and s.root.children[-1] is added[0]
    assert added[0].raw_p == pytest.approx(float(probs[ranked[3]]), rel=1e-5)
    assert sum(ch.p for ch in s.root.children) == pytest.approx(1.0)
    raw = torch.tensor([ch.raw_p for ch in s.root.children])
    mixed = 0.75 * raw / raw.sum() + 0.25 / 4                   # root children: the root mix
    assert [ch.p for ch in s.root.children] == pytest.approx(mixed.tolist(), rel=1e-5)
    assert tiny_lm.stats.since(before).calls == 0 and s.counts["tokens_needed"] == needed
    assert s.counts["nodes_added"] == 1 and [t() for t in ticks] == [1]   # a request of 1 tick


def test_node_addition_at_a_longer_level_adds_a_fresh_sampled_rollout_each_time(tiny_lm):
    """Spec: one greedy + one sampled rollout of the level's length; the greedy one is already a
    child, so the sample is added, its tokens counted as computed (a rollout computed them). Each
    addition draws anew (a second one adds another), and the draws follow the seed; the request
    lasts 1 + the rollout length ticks."""
    cfg = SMALL.replace(num_candidates=1)                # the expansion keeps the greedy rollout only
    s, leaf = _two_token_leaf(tiny_lm, cfg)
    (greedy,) = leaf.children
    assert len(greedy.tokens) == 2 and s.level_length(leaf) == 2
    needed, ticks = s.counts["tokens_needed"], _ticks(s)
    first = s.add_nodes(leaf)
    assert len(first) == 1 and len(first[0].tokens) == 2 and first[0].tokens != greedy.tokens
    assert s.counts["tokens_needed"] == needed + 2
    assert [t() for t in ticks] == [1 + 2]
    second = s.add_nodes(leaf)
    assert len(second) == 1 and second[0].tokens not in (greedy.tokens, first[0].tokens)
    assert [ch.tokens for ch in leaf.children] == [greedy.tokens, first[0].tokens, second[0].tokens]
    assert sum(ch.p for ch in leaf.children) == pytest.approx(1.0)
    other, leaf1 = _two_token_leaf(tiny_lm, cfg.replace(seed=1))
    assert leaf1.children[0].tokens == greedy.tokens      # the greedy rollout has no draw
    assert other.add_nodes(leaf1)[0].tokens != first[0].tokens


def test_node_addition_never_passes_the_cap_and_a_full_node_costs_nothing(tiny_lm):
    """At most max_children children: with room for one, where the greedy rollout and a sample
    would both be new, one is added; a full node adds nothing and runs no forward pass."""
    s, leaf = _two_token_leaf(tiny_lm, SMALL.replace(num_candidates=2))
    greedy, sample = leaf.children
    leaf.children = [sample]                 # the greedy rollout is new again
    wide = s.add_nodes(leaf)                 # room for all (max_children 20)
    assert len(wide) == 2 and {c.tokens for c in wide} == {greedy.tokens, wide[1].tokens}
    s, leaf = _two_token_leaf(tiny_lm, SMALL.replace(num_candidates=2, max_children=2))
    leaf.children = leaf.children[1:]
    assert len(s.add_nodes(leaf)) == 1 and len(leaf.children) == 2
    before = tiny_lm.stats.snapshot()
    assert s.add_nodes(leaf) == [] and len(leaf.children) == 2
    assert tiny_lm.stats.since(before).calls == 0


def test_expand_alone_draws_no_clause_completion(tiny_lm):
    """`RainSearch.expand` (the notebooks' step) expands one leaf and completes nothing."""
    s = search(tiny_lm)
    assert s.expand(s.root) and s.counts["completion_tokens"] == 0
    assert s.counts["tokens_needed"] == len(s.engine.prefix_ids)


# ------------------------------------------------------------------ what a result reports

SUMMARY_KEYS = {
    "simulations", "evaluations", "evaluator_calls", "memo_hits", "nodes_created", "nodes_added",
    "tokens_needed", "completion_tokens", "embed_calls", "embedded_texts", "early_stops",
    "max_live_nodes", "engine", "engine_route", "committed_tokens", "commits", "simulations_per_step",
    "forward_calls", "tokens_computed", "wall_time_s", "stop_reason", "prompt_tokens",
    *(f"time_{p}_s" for p in ("select", "add", "ensure", "judge", "expand", "embed", "commit"))}


@pytest.mark.parametrize("judge", ["good", "bad"])
def test_stats_trace_and_result_report_what_happened(judge):
    """Every key of a result's stats, each equal to what the search did (counted from the trace
    and the model's counters, not from the counters themselves), the trace's commit records, and
    the result's own fields."""
    lm = tiny_model(seed=0)
    cfg = SMALL.replace(max_new_tokens=7, max_simulations=12, extra_simulations=3, min_visits=1)
    t0, before = time.perf_counter(), lm.stats.snapshot()
    s = search(lm, cfg, evaluator=good if judge == "good" else bad)
    prompt = list(s.engine.prefix_ids)
    r = s.run()
    elapsed, made = time.perf_counter() - t0, lm.stats.since(before)
    st, trace = r.stats, r.trace
    assert set(st) == SUMMARY_KEYS
    per_step = Counter(rec.outer_step for rec in trace.simulations)
    assert st["simulations_per_step"] == [per_step[i] for i in range(len(r.token_sets))]
    assert st["simulations"] == len(trace.simulations) == sum(st["simulations_per_step"])
    assert st["evaluations"] == st["simulations"]
    assert st["memo_hits"] == sum(rec.memo_hit for rec in trace.simulations)
    assert st["evaluator_calls"] == st["evaluations"] - st["memo_hits"]
    assert st["nodes_added"] == sum(len(rec.added) for rec in trace.simulations)
    assert (st["engine"], st["engine_route"], st["stop_reason"]) == ("fast", lm.route.kind, "length")
    assert st["committed_tokens"] == len(r.tokens) == 7 and st["commits"] == len(r.token_sets) == 3
    assert (st["forward_calls"], st["tokens_computed"]) == (made.calls, made.tokens)
    assert st["prompt_tokens"] == len(prompt) and 0 < st["wall_time_s"] <= elapsed
    assert st["max_live_nodes"] == max(len(rec.tree) for rec in trace.commits)
    assert st["early_stops"] == sum(rec.early_stop for rec in trace.commits)
    # the commit records: step, the simulations of the step, the root, the chosen child
    first, root = 0, 0
    for i, (rec, tokens) in enumerate(zip(trace.commits, r.token_sets)):
        assert (rec.outer_step, rec.simulations, rec.first_simulation) == (i, per_step[i], first)
        assert rec.root == root and rec.tokens == tokens and rec.text == lm.decode(tokens)
        assert rec.early_stop is (judge == "good")       # 12 simulations: a good child stops it
        first, root = first + rec.simulations, rec.chosen
    assert r.tokens == [t for ts in r.token_sets for t in ts]
    assert (r.text, r.prompt, r.method) == (lm.response_text(r.tokens), "hello", "rain")
    assert r.config == cfg.to_dict() and r.trace is s.trace


def test_engine_route_and_a_judge_that_counts_nothing():
    """`engine_route`: "reference" for the reference engine, the model's route for the fast one,
    "server" for a vLLM engine, whose judge (the search's own at K > 1) counts no tokens."""
    lm = tiny_model(seed=0)
    assert search(lm, engine="reference").result().stats["engine_route"] == "reference"
    fast = search(lm).result().stats
    assert (fast["engine"], fast["engine_route"]) == ("fast", "packed")

    class ServerLike(CachedEngine):            # a server engine's name and judge
        name = "vllm-keyed"

        def judge(self, evaluator):
            return lambda query, response: 0.0   # judged elsewhere: no stats here

    s = RainSearch(lm, "hello", SMALL.replace(parallel_simulations=2), embedder=letter_embedder,
                   engine=ServerLike(lm))
    st = s.result().stats
    assert s.own_judge and (st["engine"], st["engine_route"]) == ("vllm-keyed", "server")
    assert st["tokens_needed"] == len(s.engine.prefix_ids)


def _bar(capsys, call):
    capsys.readouterr()
    out = call()
    return out, capsys.readouterr().err


def test_a_progress_bar_only_when_asked(tiny_lm, capsys):
    cfg = SMALL.replace(max_new_tokens=3)
    _, err = _bar(capsys, lambda: search(tiny_lm, cfg).run())
    assert err == ""
    s = search(tiny_lm, cfg)
    r, err = _bar(capsys, lambda: s.run(progress=True))
    assert "\rRAIN: " in err and "tok/s" in err and f"3/3 [" in err and f"sims={s.sim_index}]" in err
    assert not err.endswith("\n")             # left=False: the bar is cleared at the end
    _, err = _bar(capsys, lambda: rain_generate(tiny_lm, "hello", cfg, evaluator=vowel_judge,
                                                embedder=letter_embedder))
    assert err == ""
    _, err = _bar(capsys, lambda: rain_generate(tiny_lm, "hello", cfg, evaluator=vowel_judge,
                                                embedder=letter_embedder, progress=True))
    assert "\rRAIN: " in err


def test_no_progress_bar_on_a_terminal_unless_asked(tiny_lm, monkeypatch):
    """Not asked, no bar even where stderr is a terminal (tqdm shows one there unless disabled)."""
    import io
    import sys

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    search(tiny_lm, SMALL.replace(max_new_tokens=3)).run()
    assert term.getvalue() == ""
    search(tiny_lm, SMALL.replace(max_new_tokens=3)).run(progress=True)
    assert "RAIN: " in term.getvalue()


def test_rain_generate_passes_the_embedder_and_the_prompt_ids_on(tiny_lm):
    calls = []
    counted = lambda texts: calls.append(len(texts)) or letter_embedder(texts)    # noqa: E731
    ids = tiny_lm.encode("raw ids, no chat template")
    r = rain_generate(tiny_lm, "hello", SMALL.replace(max_new_tokens=3), evaluator=vowel_judge,
                      embedder=counted, prompt_ids=ids)
    assert calls and r.stats["embed_calls"] == len(calls)
    assert r.stats["prompt_tokens"] == len(ids) != len(tiny_lm.prompt_ids("hello"))


# ------------------------------------------------------------------ the engines

def _request(lm, engine, length, keep, attempts=6, completion=0, until="turn", seed=0):
    """One expansion of the root on `engine` (rollouts and/or a clause completion); the draws
    keyed as a search keys them, so both engines see the same uniforms."""
    root = engine.start(lm.encode("hello there"))
    u = np.random.default_rng(seed).random((attempts, length)) if length else None
    comp = (CompletionRequest([], keyed_rng(seed, COMPLETE, 0, 0), completion, until)
            if completion else None)
    return root, engine.expand(Expansion(root, length, u, keep, comp)), comp


def _full_kv(lm, ids):
    return lm.forward(torch.tensor([list(ids)]))[1]


@pytest.mark.parametrize("family", ["llama", "bloom"])       # the packed and the rows route
@pytest.mark.parametrize("length,keep,attempts,temperature,completion", [
    (3, 3, 6, 1.0, 7),      # the completion outlasts the rollouts: it goes on alone
    (0, 0, 0, 1.0, 5),      # a completion with no rollout to ride with
    (1, 3, 6, 1.0, 0),      # a rollout level cut to one token by the budget
    (4, 3, 12, "peaked", 3),     # samples alike at first, different later
])
def test_fast_expansions_equal_the_reference_and_the_models_own_forward(
        family, length, keep, attempts, temperature, completion):
    """The fast engine's candidates and clause completion equal the reference engine's (the same
    keyed draws), and each candidate comes with its caches: the logits after it and the KV of its
    own tokens, as the model's own forward over the whole prefix gives them."""
    lm = build(family) if family != "llama" else tiny_model(seed=0)
    assert lm.route.kind == ("rows" if family == "bloom" else "packed")
    if temperature == "peaked":     # found by trying: two candidates share their first token
        temperature = {"llama": 0.03, "bloom": 0.05}[family]
    out = {}
    for cls in (CachedEngine, ReferenceEngine):
        engine = cls(lm, top_k=15, temperature=temperature)
        root, cands, comp = _request(lm, engine, length, keep, attempts, completion)
        out[cls.name] = cands, comp
    (fast, fcomp), (ref, rcomp) = out["fast"], out["reference"]
    assert [c.tokens for c in fast] == [c.tokens for c in ref]
    assert [c.raw_p for c in fast] == pytest.approx([c.raw_p for c in ref], rel=1e-4)
    assert bool(fast) == (length > 0) and len(fast) <= max(keep, 1)
    if completion:
        assert fcomp.out == rcomp.out and fcomp.fed == rcomp.fed and len(fcomp.out) >= 1
        if length == 3:
            assert len(fcomp.out) > length          # it did go on alone
    prefix = lm.encode("hello there")
    for c in fast:
        ids = prefix + list(c.tokens)
        assert torch.allclose(c.logits, lm.full_logits(ids), atol=1e-4)
        for (k, v), (fk, fv) in zip(c.kv, kv_slice(_full_kv(lm, ids), len(prefix))):
            assert torch.allclose(k, fk, atol=1e-4) and torch.allclose(v, fv, atol=1e-4)
    if length == 4:     # rows alike at first become distinct later: they were fed on
        assert len(fast) == keep and len({c.tokens[0] for c in fast}) < keep


def test_engines_made_with_their_defaults_sample_as_the_default_config(tiny_lm):
    cfg = RainConfig()
    for cls in (CachedEngine, ReferenceEngine):
        plain = _request(tiny_lm, cls(tiny_lm), 3, 4)[1]
        configured = _request(tiny_lm, cls(tiny_lm, top_k=cfg.top_k, temperature=cfg.temperature), 3, 4)[1]
        assert [(c.tokens, c.raw_p) for c in plain] == [(c.tokens, c.raw_p) for c in configured]


def test_both_engines_start_from_the_same_root(tiny_lm):
    ids = tiny_lm.encode("hello there")
    fast, ref = CachedEngine(tiny_lm).start(ids), ReferenceEngine(tiny_lm).start(ids)
    for root in (fast, ref):
        assert (root.tokens, root.step, root.uid, root.parent) == ((), 0, 0, None)
    assert torch.allclose(fast.logits, ref.logits, atol=1e-5)
    s = search(tiny_lm, engine="reference")
    s.expand(s.root)
    assert [len(ch.tokens) for ch in s.root.children] == [1] * 10     # step 0: the 1-token level
    assert len({n.uid for n in s.root.walk()}) == 11


def test_reference_engine_costs_are_the_public_codes(tiny_lm):
    """The reference engine runs as the authors' code: a rollout computes the whole prefix in its
    first pass and then one token per pass, its last token never fed; no more attempts once `keep`
    are unique; a clause completion likewise (prefix + its fed tokens)."""
    engine = ReferenceEngine(tiny_lm)
    for length, keep in ((4, 1), (3, 2)):
        before = tiny_lm.stats.snapshot()
        root, cands, _ = _request(tiny_lm, engine, length, keep, attempts=5)
        start = tiny_lm.stats.since(before)
        n = len(engine.prefix_ids)
        # the start's pass (the prefix), then each row's: all prefix + 1, then one token per pass
        rows = [c.tokens for c in cands]
        assert len(rows) == keep == len(set(rows))
        passes = sum(len(t) - 1 for t in rows)
        assert start.calls == 1 + passes and start.tokens == n + sum(n + len(t) - 1 for t in rows)
    before = tiny_lm.stats.snapshot()
    _, _, comp = _request(tiny_lm, engine, 0, 0, completion=6)
    made = tiny_lm.stats.since(before)
    assert comp.fed >= 1 and made.calls == 1 + comp.fed and made.tokens == n + n + comp.fed


def test_a_commit_merges_the_prefix_cache_into_the_new_root_and_frees_the_old(tiny_lm):
    """The new root holds the KV of the whole prefix, the old root none; a terminal child that has
    no cache (the search ends there) is committed without a forward pass."""
    engine = CachedEngine(tiny_lm)
    root, cands, _ = _request(tiny_lm, engine, 2, 2)
    child = cands[0]
    node = Node(tokens=child.tokens, parent=root, step=1, uid=1, kv=child.kv, logits=child.logits,
                terminal=True)
    engine.commit(root, node)
    assert root.kv is None and root.logits is None
    assert kv_len(node.kv) == len(engine.prefix_ids)
    root = engine.start(tiny_lm.encode("hello there"))
    end = Node(tokens=(tiny_lm.tokenizer.eos_token_id,), parent=root, step=1, uid=1, terminal=True)
    before = tiny_lm.stats.snapshot()
    engine.commit(root, end)
    assert tiny_lm.stats.since(before).calls == 0 and end.kv is None
    assert engine.prefix_ids[-1] == tiny_lm.tokenizer.eos_token_id


@pytest.mark.parametrize("family", ["llama", "bloom"])
def test_a_long_completion_equals_the_reference_on_a_sharp_model(family):
    """On a model whose next token depends strongly on its context (weights 25 times the usual
    scale: a random tiny model's distributions are nearly flat, so a token fed after the wrong
    past is often drawn all the same), a clause completion that rides with the rollouts and then
    goes on alone draws what the reference engine draws, token for token, over several draws."""
    lm = (build(family, initializer_range=0.5) if family != "llama"
          else tiny_model(seed=0, initializer_range=0.5))
    for seed in range(3):
        for length in (2, 3):
            comps = [_request(lm, cls(lm), length, 3, 6, completion=10, seed=seed)[2]
                     for cls in (CachedEngine, ReferenceEngine)]
            assert comps[0].out == comps[1].out and len(comps[0].out) > length + 2
