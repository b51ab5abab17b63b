"""RAIN end to end on a tiny random model: tree invariants, rewind, cache reuse, early stop,
determinism, equivalence of the fast and reference engines, ablation switches."""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from raintools import RainConfig, RainSearch, SelfEvaluator, rain_generate
from raintools.engine import Expansion
from raintools.errors import ConfigError, PromptError
from raintools.models import kv_len
from raintools.testing import tiny_model
from raintools.trace import Trace
from raintools.tree import Node, needs_node_addition


def letter_embedder(texts):
    """Cheap deterministic embedding: letter counts (alike texts are alike)."""
    rows = []
    for t in texts:
        v = torch.zeros(27)
        for ch in t.lower():
            v[ord(ch) - 97 if "a" <= ch <= "z" else 26] += 1
        rows.append(v + 1e-3)
    return torch.stack(rows)


def vowel_judge(query, response):
    """A toy evaluator: more vowels is 'better'. Values in {-1, 0, 1}."""
    vowels = sum(ch in "aeiou" for ch in response)
    return 1.0 if vowels >= 3 else (0.0 if vowels else -1.0)


SMALL = RainConfig(max_new_tokens=18, max_simulations=6, extra_simulations=3, min_visits=2,
                   clause_max_tokens=4)


def run(lm, cfg=SMALL, engine="fast", evaluator=vowel_judge, embedder=letter_embedder, prompt="hello"):
    s = RainSearch(lm, prompt, cfg, evaluator=evaluator, embedder=embedder, engine=engine)
    return s, s.run()


def check_invariants(root: Node, similarity: bool):
    for node in root.walk():
        if node.children and not node.terminal:
            # every visit through an expanded node went to one child, except the one that expanded it
            assert node.fn == 1 + sum(ch.fn for ch in node.children)
        for ch in node.children:
            assert ch.parent is node
            assert ch.step == node.step + 1
            assert -1.0 <= ch.q <= 1.0
            assert ch.n >= ch.fn - 1e-9
            if not similarity:
                assert ch.n == ch.fn
        if node.children:
            assert sum(ch.p for ch in node.children) == pytest.approx(1.0)


def test_tree_invariants_during_search(tiny_lm):
    s = RainSearch(tiny_lm, "hello", SMALL, evaluator=vowel_judge, embedder=letter_embedder)
    for _ in range(12):
        s.simulate()
        check_invariants(s.root, similarity=True)
    assert s.root.fn == 12
    # children of the root carry the 0.75 p + 0.25 uniform prior
    raw = torch.tensor([c.raw_p for c in s.root.children])
    expect = 0.75 * raw / raw.sum() + 0.25 / len(raw)
    assert torch.allclose(torch.tensor([c.p for c in s.root.children]), expect, atol=1e-9)


def test_token_sets_follow_absolute_depth(tiny_lm):
    s, r = run(tiny_lm, SMALL.replace(max_new_tokens=30))
    lengths = [len(t) for t in r.token_sets]
    assert lengths[:4] == [1, 2, 4, 10]
    assert r.tokens == [t for ts in r.token_sets for t in ts]
    assert len(r.tokens) == 30


def test_rewind_keeps_exactly_the_committed_prefix_and_frees_the_rest(tiny_lm):
    s = RainSearch(tiny_lm, "hello", SMALL, evaluator=vowel_judge, embedder=letter_embedder)
    prompt_len = len(s.engine.prefix_ids)
    seen = {}
    commit = s.engine.commit

    def spy(root, child):            # weak references to the whole tree at commit time
        seen["nodes"] = [weakref.ref(n) for n in root.walk()]
        seen["kept"] = {id(n) for n in child.walk()}
        commit(root, child)

    s.engine.commit = spy
    while not s.finished:
        old_root = s.root
        child = s.commit_step()
        if child is None:
            break
        assert s.root is child and child.parent is None
        assert s.engine.prefix_ids[prompt_len:] == s.response
        assert kv_len(s.root.kv) == len(s.engine.prefix_ids)       # the root holds the prefix cache
        assert old_root.kv is None                                 # old caches released
        del old_root
        gc.collect()
        alive = {id(w()) for w in seen["nodes"] if w() is not None}
        assert alive == seen["kept"]                               # every other branch is freed
        assert {id(n) for n in s.root.walk()} == seen["kept"]      # the chosen subtree is kept whole
    assert s.response == [t for ts in s.token_sets for t in ts]


def test_cached_logits_match_full_forward(tiny_lm):
    s = RainSearch(tiny_lm, "hello", SMALL, evaluator=vowel_judge, embedder=letter_embedder)
    s.commit_step()
    s.commit_step()
    for _ in range(4):
        s.simulate()
    checked = 0
    for node in s.root.walk():
        if node.logits is None:
            continue
        full = tiny_lm.full_logits(s.engine.prefix_ids + node.response_tokens())
        assert torch.allclose(node.logits, full, atol=1e-4), node.uid
        checked += 1
    assert checked >= 5
    # the keys and values kept along each cached path (packed rollouts gather them from a token
    # tree) equal those of one plain forward pass over the whole text
    kv_checked = 0
    for node in s.root.walk():
        if any(n.kv is None for n in node.path_from_root()):
            continue
        _, full_kv = tiny_lm.forward(torch.tensor([s.engine.prefix_ids + node.response_tokens()]))
        for (k, v), (fk, fv) in zip(s.engine.path_kv(node), full_kv):
            assert torch.allclose(k, fk, atol=1e-4) and torch.allclose(v, fv, atol=1e-4), node.uid
        kv_checked += node.step > s.root.step
    assert kv_checked >= 3


def test_each_token_is_computed_about_once(tiny_lm):
    _, r = run(tiny_lm)
    st = r.stats
    assert st["tokens_needed"] > 0
    assert st["tokens_computed"] / st["tokens_needed"] < 1.3
    _, ref = run(tiny_lm, engine="reference")
    assert ref.stats["tokens_computed"] > 5 * st["tokens_computed"]


def test_fast_and_reference_engines_build_the_same_search(tiny_lm):
    cfg = SMALL.replace(max_new_tokens=16)
    _, fast = run(tiny_lm, cfg)
    _, ref = run(tiny_lm, cfg, engine="reference")
    assert fast.token_sets == ref.token_sets
    assert fast.stats["simulations_per_step"] == ref.stats["simulations_per_step"]
    for a, b in zip(fast.trace.commits, ref.trace.commits):
        ta = sorted((n.uid, tuple(n.tokens), n.fn) for n in a.tree)
        tb = sorted((n.uid, tuple(n.tokens), n.fn) for n in b.tree)
        assert ta == tb
        qa = torch.tensor([n.q for n in sorted(a.tree, key=lambda n: n.uid)])
        qb = torch.tensor([n.q for n in sorted(b.tree, key=lambda n: n.uid)])
        assert torch.allclose(qa, qb, atol=1e-9)


def test_determinism_under_a_seed(tiny_lm):
    _, a = run(tiny_lm)
    _, b = run(tiny_lm)
    assert a.token_sets == b.token_sets and a.stats["simulations"] == b.stats["simulations"]
    _, c = run(tiny_lm, SMALL.replace(seed=1))
    trees_a = [(n.uid, tuple(n.tokens)) for n in a.trace.commits[1].tree]
    trees_c = [(n.uid, tuple(n.tokens)) for n in c.trace.commits[1].tree]
    assert trees_a != trees_c     # sampled candidates depend on the seed


def test_early_stop_when_a_child_is_good_and_visited_enough(tiny_lm):
    cfg = SMALL.replace(max_simulations=30, extra_simulations=5, min_visits=3, value_threshold=0.8)
    _, good = run(tiny_lm, cfg, evaluator=lambda q, r: 1.0)
    assert good.stats["early_stops"] == good.stats["commits"]
    assert good.stats["simulations_per_step"][0] < 30
    _, bad = run(tiny_lm, cfg, evaluator=lambda q, r: -1.0)
    assert bad.stats["early_stops"] == 0
    per_step = bad.stats["simulations_per_step"]
    assert per_step[0] == 30                    # the whole budget, from a fresh root
    # later steps reuse the kept subtree's visits: they run up to max(T, initi + 15) - initi
    assert all(n >= 5 for n in per_step)


def test_max_commits_stops_early_without_shortening_the_horizon(tiny_lm):
    long = SMALL.replace(max_new_tokens=30)
    _, full = run(tiny_lm, long)
    s, cut = run(tiny_lm, long.replace(max_commits=2))
    assert cut.stats["commits"] == 2 and cut.stats["stop_reason"] == "max commits"
    # the same search as the longer run up to that point (the horizon is still 30 tokens) ...
    assert cut.token_sets == full.token_sets[:2]
    assert cut.stats["simulations_per_step"] == full.stats["simulations_per_step"][:2]
    # ... unlike max_new_tokens=3, which makes leaves at 3 tokens terminal and changes the search
    _, short = run(tiny_lm, SMALL.replace(max_new_tokens=3))
    assert len(short.tokens) == 3 == len(cut.tokens)
    # the live tree reaches past the 3 committed tokens, which a 3-token horizon never does
    assert max(len(s.response) + len(n.response_tokens()) for n in s.root.walk()) > 3
    with pytest.raises(ConfigError, match="max_commits"):
        RainConfig(max_commits=0)


def test_ablation_switches(tiny_lm):
    _, nosim = run(tiny_lm, SMALL.replace(similarity_update=False))
    # no similarity update: visit counts stay integers everywhere
    for rec in nosim.trace.commits:
        assert all(float(n.n).is_integer() for n in rec.tree)
    # constant embeddings: every sibling is similar, and the children of a node are identical,
    # so with values all negative, node addition fires
    const = lambda texts: torch.ones(len(texts), 4)
    s, r = run(tiny_lm, SMALL.replace(max_new_tokens=6, num_candidates=3), evaluator=lambda q, x: -1.0,
               embedder=const)
    assert r.stats["nodes_added"] > 0
    assert any(rec.added for rec in r.trace.simulations)
    assert any(rec.similarity for rec in r.trace.simulations)
    _, none = run(tiny_lm, SMALL.replace(max_new_tokens=6, node_addition=False), evaluator=lambda q, x: -1.0,
                  embedder=const)
    assert none.stats["nodes_added"] == 0
    _, sampled = run(tiny_lm, SMALL.replace(commit_rule="sample"))
    assert len(sampled.tokens) == 18
    # with neither the similarity update nor node addition nothing reads embeddings: no embedder
    # is loaded or called
    calls = []
    counted = lambda texts: calls.append(len(texts)) or letter_embedder(texts)
    _, both = run(tiny_lm, SMALL.replace(node_addition=False), embedder=counted)
    assert calls and not both.stats.get("nodes_added")
    calls.clear()
    off = SMALL.replace(similarity_update=False, node_addition=False)
    s, _ = run(tiny_lm, off, embedder=counted)
    assert not calls
    assert RainSearch(tiny_lm, "hello", off, evaluator=vowel_judge).embedder is None


@pytest.mark.parametrize("c", [0.0, 2.0])
def test_c_reaches_selection_and_c0_selects_by_value_alone(tiny_lm, monkeypatch, c):
    """With c = 0 every selection takes a child of the highest normalised value (qh = 0 for an
    unvisited child), whatever the ties' order; with c = 2 the prior bonus overrules the value
    at least once."""
    import raintools.search as search_module

    picks = []
    real = search_module.select_child

    def spy(node, bounds, c_arg, tie=None):
        chosen = real(node, bounds, c_arg, tie)
        qh = lambda ch: 0.0 if ch.n == 0 else (ch.q - bounds.qmin) / (bounds.qmax - bounds.qmin + 1e-5)
        picks.append((c_arg, qh(chosen), max(qh(ch) for ch in node.children)))
        return chosen

    monkeypatch.setattr(search_module, "select_child", spy)
    run(tiny_lm, SMALL.replace(c=c))
    assert picks and {p[0] for p in picks} == {c}
    greedy = [chosen == best for _, chosen, best in picks]
    assert all(greedy) if c == 0 else not all(greedy)


def test_trace_round_trip_and_replay(tiny_lm):
    _, r = run(tiny_lm)
    t2 = Trace.from_json(r.trace.to_json())
    assert t2.to_dict() == r.trace.to_dict()
    assert_replay_matches_commits(t2)


def test_trace_written_to_a_file_reads_back_and_a_finished_search_commits_no_more(tiny_lm, tmp_path):
    """`trace.to_json(path)` (the README's way to keep a trace) writes the file that
    `Trace.from_json(path)` reads back; `commit_step()` after the search has finished returns
    None and changes nothing."""
    s, r = run(tiny_lm)
    path = tmp_path / "trace.json"
    assert r.trace.to_json(path) == path.read_text(encoding="utf-8")
    assert Trace.from_json(path).to_dict() == r.trace.to_dict()
    response, sims, root = list(s.response), s.sim_index, s.root
    assert s.finished and s.commit_step() is None
    assert (s.response, s.sim_index, s.root) == (response, sims, root)


def assert_replay_matches_commits(trace):
    """Replaying the simulations reproduces the tree recorded at each commit."""
    for c in trace.commits:
        last = c.first_simulation + c.simulations - 1
        replay = trace.tree_at(last)
        recorded = {n.uid: n for n in c.tree}
        assert set(replay) == set(recorded)
        for uid, node in recorded.items():
            assert replay[uid].fn == node.fn
            assert replay[uid].n == pytest.approx(node.n)
            assert replay[uid].q == pytest.approx(node.q)
            assert replay[uid].p == pytest.approx(node.p)


def steer(lm, next_of, boost=30.0):
    """Forward hooks that add `boost` to the logit of `next_of(ids)` (the token after each input
    id): the tiny model then says what the test needs. Returns the handles (remove them)."""
    fed = {}

    def pre(module, args, kwargs):
        fed["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def post(module, args, kwargs, out):
        ids = fed["ids"][:, -out.logits.shape[1]:]
        bias = torch.zeros_like(out.logits)
        bias.scatter_(-1, next_of(ids).unsqueeze(-1), boost)
        out.logits = out.logits + bias
        return out

    return [lm.model.register_forward_pre_hook(pre, with_kwargs=True),
            lm.model.register_forward_hook(post, with_kwargs=True)]


@pytest.mark.parametrize("reason", ["eos", "user turn", "length", "max commits"])
def test_stop_reasons(reason):
    """Each way a search ends, forced on a tiny chat model: the end-of-turn token, a new user
    turn ('<|im_start|>user'), the token budget, the commit cap."""
    lm = tiny_model(seed=3, chat=True)
    tok = lm.tokenizer
    eos, start = tok.eos_token_id, tok.convert_tokens_to_ids("<|im_start|>")
    cfg = SMALL.replace(max_new_tokens=40)
    handles = []
    if reason == "eos":
        handles = steer(lm, lambda ids: torch.full_like(ids, eos))
    elif reason == "user turn":        # '<|im_start|>' then 'u', 's', 'e', 'r'
        chain = {start: "u", **dict(zip(map(tok.convert_tokens_to_ids, "use"), "ser"))}

        def next_of(ids):
            nxt = torch.full_like(ids, start)
            for a, b in chain.items():
                nxt[ids == a] = tok.convert_tokens_to_ids(b)
            return nxt
        handles = steer(lm, next_of)
    else:                              # never the end of the turn
        handles = steer(lm, lambda ids: torch.full_like(ids, eos), boost=-1e4)
        cfg = SMALL.replace(max_new_tokens=12) if reason == "length" else SMALL.replace(max_commits=2)
    try:
        _, r = run(lm, cfg)
    finally:
        for h in handles:
            h.remove()
    assert r.stats["stop_reason"] == reason
    text = lm.decode_raw(r.tokens)
    if reason == "eos":
        assert r.tokens[-1] == eos and r.tokens.count(eos) == 1
    elif reason == "user turn":
        assert "<|im_start|>user" in text and eos not in r.tokens
    elif reason == "length":
        assert len(r.tokens) == 12 and eos not in r.tokens and lm.has_user_turn(r.tokens) is False
    else:
        assert r.stats["commits"] == 2 and len(r.tokens) == 1 + 2 and eos not in r.tokens


def kids(commit) -> int:
    """The most children any node of a commit's recorded tree has."""
    from collections import Counter

    return max(Counter(n.parent for n in commit.tree if n.parent is not None).values())


def test_node_addition_thresholds_are_wired_into_selection(tiny_lm, monkeypatch):
    """select() asks needs_node_addition with the configured max_children and variance factor and
    the level's length; the factor and the cap decide whether nodes are added."""
    import raintools.search as search_module

    const = lambda texts: torch.ones(len(texts), 4)       # variance 0: alike candidates
    bad = lambda q, x: -1.0                               # all look bad
    base = SMALL.replace(max_new_tokens=12, num_candidates=3)
    asked = []
    real = search_module.needs_node_addition

    def spy(node, max_children, factor, length):
        asked.append((max_children, factor, length, node.step, s.remaining(node)))
        return real(node, max_children, factor, length)

    monkeypatch.setattr(search_module, "needs_node_addition", spy)
    cfg = base.replace(max_children=5, add_variance_factor=0.07, max_new_tokens=9)
    eos = tiny_lm.tokenizer.eos_token_id
    handles = steer(tiny_lm, lambda ids: torch.full_like(ids, eos), boost=-1e4)   # to the budget
    try:
        s = RainSearch(tiny_lm, "hello", cfg, evaluator=bad, embedder=const)
        r = s.run()
    finally:
        for h in handles:
            h.remove()
    assert asked and r.stats["nodes_added"] > 0 and len(r.tokens) == 9
    for max_children, factor, length, step, remaining in asked:
        assert (max_children, factor) == (5, 0.07)
        assert length == max(1, min((1, 2, 4, 10)[min(step, 3)], remaining))
    # the last level (10 tokens by depth) is cut to the 2 tokens left: the length asked is the cut one
    assert any(step == 3 and length == 2 for _, _, length, step, _ in asked)
    assert max(kids(rec) for rec in r.trace.commits) == 5
    monkeypatch.setattr(search_module, "needs_node_addition", real)
    # a zero threshold never fires (0 < 0 is false); neither does a cap the expansion already fills
    for change in (dict(add_variance_factor=0.0), dict(max_children=3)):
        _, none = run(tiny_lm, base.replace(**change), evaluator=bad, embedder=const)
        assert none.stats["nodes_added"] == 0, change
    _, four = run(tiny_lm, base.replace(max_children=4), evaluator=bad, embedder=const)
    assert four.stats["nodes_added"] > 0
    assert max(kids(rec) for rec in four.trace.commits) == 4


@pytest.mark.parametrize("bad", [
    dict(c=-1.0), dict(max_simulations=0), dict(token_set_lengths=(1, 0)), dict(value_threshold=1.5),
    dict(sim_threshold=2.0), dict(min_visits=-1), dict(eval_mode="maybe"), dict(commit_rule="best"),
    dict(temperature=0.0), dict(num_candidates=0), dict(max_new_tokens=0), dict(c=float("nan")),
    dict(similarity_update="yes"), dict(sim_threshold=-0.5), dict(token_temperature=0.0),
    dict(add_attempts=-1),
])
def test_bad_hyperparameters_raise_one_clear_error(bad):
    with pytest.raises(ConfigError, match="Invalid RainConfig"):
        RainConfig(**bad)


def test_bad_prompts(tiny_lm):
    for prompt in ("", "   \n"):
        with pytest.raises(PromptError, match="empty"):
            rain_generate(tiny_lm, prompt, SMALL, evaluator=vowel_judge, embedder=letter_embedder)
    with pytest.raises(PromptError, match="context"):
        rain_generate(tiny_lm, "x" * 600, SMALL, evaluator=vowel_judge, embedder=letter_embedder)
    with pytest.raises(PromptError, match="max_length"):
        rain_generate(tiny_lm, "hello", SMALL.replace(max_length=50), evaluator=vowel_judge,
                      embedder=letter_embedder)
    with pytest.raises(ConfigError, match="outside"):
        rain_generate(tiny_lm, "hello", SMALL, evaluator=lambda q, r: 3.0, embedder=letter_embedder)
    with pytest.raises(ConfigError, match="engine"):
        rain_generate(tiny_lm, "hello", SMALL, evaluator=vowel_judge, engine="warp")


def _short_greedy_root(lm, cfg, engine="fast"):
    """A search whose root sits at absolute depth 3 (10-token level) and whose greedy rollout is a
    bare end-of-turn token: the root's next-token logits are nudged so that EOS is the argmax by a
    hair (the samples still vary). Expanded, then made to look alike (equal embeddings) and bad
    (q = -1): the node-addition test fires."""
    s = RainSearch(lm, "hello", cfg, evaluator=vowel_judge, embedder=letter_embedder, engine=engine)
    eos = lm.tokenizer.eos_token_id
    s.root.step = 3
    s.root.logits = s.root.logits.clone()
    s.root.logits[eos] = s.root.logits.max() + 0.01
    s.expand(s.root)
    for ch in s.root.children:
        ch.n, ch.fn, ch.q, ch.embedding = 1.0, 1, -1.0, torch.ones(4)
    s.root.n = s.root.fn = len(s.root.children)
    return s, eos


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_node_addition_with_an_end_of_turn_first_child_adds_one_candidate_of_the_level(engine):
    lm = tiny_model(seed=3, chat=True)
    cfg = SMALL.replace(max_new_tokens=40)
    s, eos = _short_greedy_root(lm, cfg, engine)
    kids = s.root.children
    assert kids[0].tokens == (eos,) and len(kids) >= 3
    assert all(len(ch.tokens) == 10 or ch.tokens[-1] == eos for ch in kids)
    assert s.level_length(s.root) == 10
    assert needs_node_addition(s.root, cfg.max_children, cfg.add_variance_factor, s.level_length(s.root))
    before = len(kids)
    added = s.add_nodes(s.root)
    # the greedy rollout is the (EOS,) child again: at most the one sampled rollout is new, and it
    # has the level's length (10 tokens, or fewer only when it ends at EOS itself); the old code
    # took the (EOS,) child's length 1 and added the top-(k+1) single tokens at once
    assert len(added) <= 1 and len(s.root.children) == before + len(added)
    assert all(len(a.tokens) == 10 or a.tokens[-1] == eos for a in added)
    assert sum(ch.p for ch in s.root.children) == pytest.approx(1.0)
    # the cap holds after adding: with room for one child, the greedy (EOS,) rollout and a sample
    # would both be new once the (EOS,) child is gone; only one is added
    s2, _ = _short_greedy_root(lm, cfg, engine)
    s2.root.children = s2.root.children[1:]
    s2.cfg.max_children = len(s2.root.children) + 1
    added = s2.add_nodes(s2.root)
    assert len(added) == 1 and len(s2.root.children) == s2.cfg.max_children
    assert s2.add_nodes(s2.root) == []                     # full: nothing more


def test_node_addition_never_exceeds_the_cap_in_a_search():
    lm = tiny_model(seed=3, chat=True)
    const = lambda texts: torch.ones(len(texts), 4)
    cfg = SMALL.replace(max_new_tokens=24, num_candidates=3, max_children=4, max_simulations=12)
    _, r = run(lm, cfg, evaluator=lambda q, x: -1.0, embedder=const)
    assert r.stats["nodes_added"] > 0
    for rec in r.trace.commits:
        kids: dict[int, int] = {}
        for n in rec.tree:
            if n.parent is not None:
                kids[n.parent] = kids.get(n.parent, 0) + 1
        assert max(kids.values()) <= 4


def test_advbench_preset_temperature_at_every_level_and_attempts(tiny_lm):
    adv = RainConfig.advbench()
    assert (adv.min_visits, adv.temperature, adv.token_temperature) == (5, 2.0, 2.0)
    assert (adv.sample_attempts, adv.add_attempts) == (19, 3)
    hh = RainConfig.hh()
    assert (hh.temperature, hh.token_temperature, hh.sample_attempts, hh.add_attempts) == (1.0, 1.0, 9, 1)
    # the 1-token level's priors are the top-10 of softmax(logits / 2), then the root mix
    cfg = adv.replace(max_new_tokens=8, max_simulations=4, extra_simulations=2)
    s = RainSearch(tiny_lm, "hello", cfg, evaluator=vowel_judge, embedder=letter_embedder)
    s.expand(s.root)
    vals, idx = torch.topk(torch.softmax(s.root.logits.float() / 2.0, -1), 10)
    want = vals / vals.sum() * 0.75 + 0.25 / 10
    assert [ch.tokens[0] for ch in s.root.children] == idx.tolist()
    assert torch.allclose(torch.tensor([ch.p for ch in s.root.children]), want / want.sum(), atol=1e-6)
    # rollouts at temperature 2; node addition draws 3 sampled rollouts (expansion 19)
    assert s.engine.temperature == 2.0
    shapes = []
    real = s.engine.expand
    s.engine.expand = lambda req: (shapes.append((req.uniforms.shape[0], req.keep)) if req.length
                                   else None) or real(req)
    s.root.children[0].step = 1
    leaf = s.root.children[0]
    s.expand(leaf)
    for ch in leaf.children:
        ch.n, ch.fn, ch.q, ch.embedding = 1.0, 1, -1.0, torch.ones(4)
    s.add_nodes(leaf)
    assert shapes == [(19, 10), (3, 2)]


def test_fast_and_reference_agree_on_the_advbench_preset_with_node_addition(tiny_lm):
    """Temperature 2 at every level and 3 sampling attempts per node addition: both engines draw
    the same candidates (the reference stops its attempts once enough are unique)."""
    cfg = RainConfig.advbench(max_new_tokens=12, max_simulations=8, extra_simulations=3,
                              min_visits=2, clause_max_tokens=4, num_candidates=3)
    const = lambda texts: torch.ones(len(texts), 4)
    _, fast = run(tiny_lm, cfg, evaluator=lambda q, x: -1.0, embedder=const)
    _, ref = run(tiny_lm, cfg, engine="reference", evaluator=lambda q, x: -1.0, embedder=const)
    assert fast.stats["nodes_added"] > 0
    assert fast.token_sets == ref.token_sets
    assert fast.stats["nodes_added"] == ref.stats["nodes_added"]
    for a, b in zip(fast.trace.commits, ref.trace.commits):
        assert sorted((n.uid, tuple(n.tokens)) for n in a.tree) == sorted((n.uid, tuple(n.tokens)) for n in b.tree)


@pytest.mark.parametrize("keep", [3, 1])
def test_rollout_rows_that_can_no_longer_be_kept_are_not_fed(tiny_lm, keep):
    """AdvBench's 19 sampled rows for a few places: once `keep` rows differ, the rows after them
    can no longer be kept and are fed no more (the reference engine stops drawing there), so an
    expansion feeds at most `keep` lines of `length` tokens; the candidates stay the reference's
    (with keep = 1, `num_candidates=1`: the greedy one alone)."""
    from raintools.engines import CachedEngine, ReferenceEngine

    ids = tiny_lm.prompt_ids("hello")
    u = np.random.default_rng(0).random((19, 4))
    out = {}
    for cls in (CachedEngine, ReferenceEngine):
        engine = cls(tiny_lm, top_k=15, temperature=2.0)
        root = engine.start(ids)
        before = tiny_lm.stats.snapshot()
        out[cls.name] = engine.expand(Expansion(root, 4, u, keep=keep)), tiny_lm.stats.since(before).tokens
    (fast, fed), (ref, _) = out["fast"], out["reference"]
    assert [c.tokens for c in fast] == [c.tokens for c in ref] and len(fast) == keep
    assert [c.raw_p for c in fast] == pytest.approx([c.raw_p for c in ref], rel=1e-5)
    assert fed <= keep * 4


# ------------------------------------------------------------------ the engine interface

def test_the_search_talks_to_its_engine_only_through_the_interface(tiny_lm):
    """Both engines implement `raintools.engine.Engine`, and a search given an engine behind a
    proxy that exposes only the interface's members runs as with the engine itself (a vLLM or
    any other backend needs nothing more)."""
    from raintools.engine import Engine
    from raintools.engines import CachedEngine, ReferenceEngine

    members = {"name", "prefix_ids", "stats", "embed_one_by_one", "concurrent", "start", "ensure",
               "expand", "commit", "judge"}

    class OnlyTheInterface:
        def __init__(self, inner):
            self._inner = inner

        def __getattr__(self, name):
            assert name in members, f"the search reached past the engine interface: {name}"
            return getattr(self._inner, name)

    cfg = SMALL.replace(max_new_tokens=12, parallel_simulations=2)
    for cls in (CachedEngine, ReferenceEngine):
        assert isinstance(cls(tiny_lm), Engine)
        plain = RainSearch(tiny_lm, "hello", cfg, evaluator=vowel_judge, embedder=letter_embedder,
                           engine=cls.name).run()
        eng = OnlyTheInterface(cls(tiny_lm, top_k=cfg.top_k, temperature=cfg.temperature))
        proxied = RainSearch(tiny_lm, "hello", cfg, evaluator=vowel_judge, embedder=letter_embedder,
                             engine=eng).run()
        assert proxied.token_sets == plain.token_sets
        assert proxied.stats["simulations"] == plain.stats["simulations"]


@pytest.mark.parametrize("k", [1, 4])
def test_the_search_that_encodes_the_judging_header_counts_it(k):
    """On a fresh model the first search with the model's own judge encodes the judging header:
    every pass of the model is counted as a search's, and an identical second search (the header
    now shared) counts exactly one pass and the header's tokens less, computed and needed. At
    K = 4 the header is encoded by the search's fork of the judge (it was counted by no search)."""
    from raintools.evaluate import self_evaluator

    lm = tiny_model(seed=0)
    cfg = SMALL.replace(max_new_tokens=8, parallel_simulations=k)
    before = lm.stats.snapshot()
    first = rain_generate(lm, "hello", cfg, embedder=letter_embedder)
    made = lm.stats.since(before)
    assert (first.stats["forward_calls"], first.stats["tokens_computed"]) == (made.calls, made.tokens)
    shared = self_evaluator(lm, cfg.judge_template, cfg.eval_mode)
    shared.forget_queries()                 # the query's KV as new again: only the header is shared
    second = rain_generate(lm, "hello", cfg, embedder=letter_embedder)
    assert second.tokens == first.tokens
    header = len(shared._header[0])
    assert first.stats["forward_calls"] - second.stats["forward_calls"] == 1
    assert first.stats["tokens_computed"] - second.stats["tokens_computed"] == header
    assert first.stats["tokens_needed"] - second.stats["tokens_needed"] == header


@pytest.mark.parametrize("k,engine", [(1, "fast"), (4, "fast"), (1, "reference")])
def test_searches_on_one_model_count_only_their_own_passes(k, engine):
    """Two searches made on one model (whose counters `lm.stats` every search on it moves), then
    run in the opposite order, or a commit step each in turn: each one's stats (forward passes,
    tokens computed and needed, every counter) equal those of the same search run alone. The
    fast engine's searches share one self-evaluator (its header encoded before, as a batch
    does): at K = 1 its passes are the model's, at K = 4 each search's fork runs them; the
    reference engine makes each search its own (uncached) self-evaluator."""
    cfg = SMALL.replace(max_new_tokens=10, parallel_simulations=k)
    prompts = ["hello", "tell me a story"]

    def searches(which=prompts):
        """A fresh model, the shared judge (its header encoded, in no search), the counters of
        both then, and the searches."""
        lm = tiny_model(seed=0)
        ev = None
        if engine == "fast":
            ev = SelfEvaluator(lm, "harm")
            ev.fork()
        before = lm.stats.snapshot(), (ev.stats.tokens_needed if ev is not None else 0)
        return lm, ev, before, [RainSearch(lm, p, cfg, evaluator=ev, embedder=letter_embedder,
                                           engine=engine) for p in which]

    def counters(result):
        return {key: v for key, v in result.stats.items()
                if not (key.startswith("time_") or key == "wall_time_s")}

    alone = []
    for p in prompts:       # alone, a search counts every pass of the model, its judge's too
        lm, ev, (passes, judged), (s,) = searches([p])
        alone.append(counters(s.run()))
        made = lm.stats.since(passes)
        assert (alone[-1]["forward_calls"], alone[-1]["tokens_computed"]) == (made.calls, made.tokens)
        judge = s.evaluator.stats.tokens_needed - (judged if s.evaluator is ev else 0)
        assert alone[-1]["tokens_needed"] == s.counts["tokens_needed"] + judge > s.counts["tokens_needed"]
    *_, (first, second) = searches()
    backwards = [second.run(), first.run()][::-1]
    assert [counters(r) for r in backwards] == alone
    *_, (first, second) = searches()
    while not (first.finished and second.finished):
        first.commit_step()
        second.commit_step()
    assert [counters(s.result()) for s in (first, second)] == alone
