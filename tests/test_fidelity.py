"""Issue 25, items 1 and 2: an early-ending rollout's prior is length-matched (it is not rewarded
for multiplying fewer factors), and exact ties in selection are broken by a draw keyed by the
seed (or, as an option, in the public code's order), so that c = 0 measures the value alone and
not the children's order. Tiny random models, CPU."""

from __future__ import annotations

import math

import pytest
import torch

from raintools import RainSearch
from raintools import engines
from raintools.sampling import truncated
from raintools.testing import tiny_model

from test_search import SMALL, letter_embedder, vowel_judge

LEVEL = 10         # the token-set length at absolute depth 3


def eos_likely_after_each_token(lm):
    """A forward hook that sets the EOS logit just below the 3rd-largest logit at every position:
    EOS is then among the likeliest tokens after each token (but never the greedy one). The
    root's own logits are set apart by the test, so that a rollout's first token is never EOS."""
    eos = lm.tokenizer.eos_token_id

    def post(module, args, kwargs, out):
        logits = out.logits.clone()
        logits[..., eos] = torch.topk(logits, 3, dim=-1).values[..., 2] - 1e-3
        out.logits = logits
        return out

    return lm.model.register_forward_hook(post, with_kwargs=True)


def expanded_at_a_10_token_level(lm, engine):
    """The root moved to depth 3 (10-token level), EOS removed from its own next-token logits,
    expanded into greedy + sampled rollouts."""
    s = RainSearch(lm, "hello", SMALL.replace(max_new_tokens=40), evaluator=vowel_judge,
                   embedder=letter_embedder, engine=engine)
    s.root.step = 3
    s.root.logits = s.root.logits.clone()
    s.root.logits[lm.tokenizer.eos_token_id] = s.root.logits.min() - 10.0
    assert s.level_length(s.root) == LEVEL
    s.expand(s.root)
    return s


def token_probs(lm, s, tokens) -> list[float]:
    """The truncated probability of each token of a rollout, recomputed from full forward passes."""
    out = []
    for i, tok in enumerate(tokens):
        logits = s.root.logits if i == 0 else lm.forward(
            torch.tensor([s.engine.prefix_ids + list(tokens[:i])]))[0][0]
        tp, ti = truncated(logits, s.cfg.top_k, s.cfg.temperature)
        out.append(float(tp[ti.tolist().index(tok)]))
    return out


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_an_early_ending_rollout_gets_a_length_matched_prior(engine, monkeypatch):
    lm = tiny_model(seed=0)
    eos = lm.tokenizer.eos_token_id
    hook = eos_likely_after_each_token(lm)
    try:
        new = expanded_at_a_10_token_level(lm, engine).root.children
        with monkeypatch.context() as m:             # the plain product (the rule before issue 25)
            m.setattr(engines, "length_matched", lambda p, n, length: p)
            old_s = expanded_at_a_10_token_level(lm, engine)
        old = old_s.root.children
        assert [c.tokens for c in new] == [c.tokens for c in old]      # the same keyed draws
        probs = [token_probs(lm, old_s, c.tokens) for c in old]
    finally:
        hook.remove()
    early = [i for i, c in enumerate(new) if len(c.tokens) < LEVEL]
    full = [i for i, c in enumerate(new) if len(c.tokens) == LEVEL]
    assert all(new[i].tokens[-1] == eos for i in early)
    samples_early, samples_full = [i for i in early if i > 0], [i for i in full if i > 0]
    assert samples_early and samples_full                  # the case the rule is about
    for i in range(1, len(new)):                           # the samples (the greedy one is clamped)
        n, p = len(new[i].tokens), math.prod(probs[i])
        assert old[i].raw_p == pytest.approx(p, rel=1e-4)
        if n == LEVEL:
            assert new[i].raw_p == old[i].raw_p            # full length: exactly unchanged
        else:
            assert new[i].raw_p == pytest.approx(old[i].raw_p ** (LEVEL / n), rel=1e-9)
            assert new[i].raw_p < old[i].raw_p
    assert new[0].raw_p == pytest.approx(engines.clamp_greedy(        # the greedy one: clamped
        engines.length_matched(math.prod(probs[0]), len(new[0].tokens), LEVEL),   # against the
        [c.raw_p for c in new[1:]]), rel=1e-4)                                     # new priors
    # per token: an early-ending sample outranks a full-length one exactly when its per-token
    # (geometric mean) probability is higher; under the plain product, shortness won
    geo = {i: math.prod(probs[i]) ** (1 / len(new[i].tokens)) for i in range(1, len(new))}
    pairs = [(e, f) for e in samples_early for f in samples_full if not math.isclose(geo[e], geo[f])]
    assert pairs
    assert all((new[e].raw_p > new[f].raw_p) == (geo[e] > geo[f]) for e, f in pairs)
    assert any((old[e].raw_p > old[f].raw_p) != (geo[e] > geo[f]) for e, f in pairs)
    # no early-ending sample is above the best full-length sibling with a higher per-token probability
    for e in samples_early:
        better = [f for f in samples_full if geo[f] >= geo[e]]
        if better:
            assert new[e].raw_p <= max(new[f].raw_p for f in better)


def test_length_matched_is_the_identity_at_full_length():
    assert engines.length_matched(0.3, 4, 4) == 0.3
    assert engines.length_matched(0.3, 10, 10) == 0.3
    assert engines.length_matched(0.25, 2, 4) == pytest.approx(0.0625)
    assert engines.length_matched(0.0, 2, 4) == 0.0


# ------------------------------------------------------------------ ties in selection (item 2)

def root_with_tied_children(seed=0, lm=None, **cfg):
    """A search whose root is expanded (1-token level, 10 children) and visited once; with c = 0
    every unvisited child scores 0: all ten tie."""
    lm = lm or tiny_model(seed=0)
    s = RainSearch(lm, "hello", SMALL.replace(c=0.0, seed=seed, **cfg), evaluator=vowel_judge,
                   embedder=letter_embedder)
    s.expand(s.root)
    s.root.n, s.root.fn = 1.0, 1
    assert len(s.root.children) == 10
    return s


def test_ties_are_broken_by_a_draw_keyed_by_the_seed():
    lm, picks = tiny_model(seed=0), {}
    for seed in range(8):
        s = root_with_tied_children(seed, lm)
        first = s.select()[1].tokens
        assert s.select()[1].tokens == first                                   # same state, same draw
        assert root_with_tied_children(seed, lm).select()[1].tokens == first   # same seed, same pick
        picks[seed] = first
    assert len(set(picks.values())) >= 3                                       # seeds differ


def test_public_tie_break_takes_the_lowest_token_id_at_the_1_token_level():
    s = root_with_tied_children(0, tie_break="public")
    lowest = min(s.root.children, key=lambda ch: ch.tokens)
    assert lowest is not s.root.children[0]        # children come by falling probability
    assert s.select()[1] is lowest
    # at a longer level the public code listed greedy first, then the samples: the first wins
    s.root.step = 3
    assert s.select()[1] is s.root.children[0]


@pytest.mark.parametrize("tie_break", ["random", "public"])
def test_c0_does_not_give_every_visit_to_the_first_child(tie_break):
    """With c = 0 and a judge that finds every text bad, every child's normalised value is 0:
    all tie at every selection. Visits spread (random), or go to the lowest token id (public),
    not to the first child of the list."""
    lm = tiny_model(seed=0)
    s = RainSearch(lm, "hello", SMALL.replace(c=0.0, tie_break=tie_break), evaluator=lambda q, r: -1.0,
                   embedder=letter_embedder)
    for _ in range(8):
        s.simulate()
    visited = [ch for ch in s.root.children if ch.fn > 0]
    if tie_break == "random":
        assert len(visited) >= 3
    else:
        assert visited == [min(s.root.children, key=lambda ch: ch.tokens)]
        assert visited[0] is not s.root.children[0]
