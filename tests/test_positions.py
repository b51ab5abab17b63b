"""Positions after a cached past on the packed and rows routes.

A model's own default positions may ignore its cache: Bamba's restart at 0 after one. Here a tiny
Llama whose default does the same (positions 0, 1, ... for whatever it is fed). Every plain forward
after a past passes the positions after it, as generate() does (`LanguageModel._after`, one path
with the reference route's), so the fast engine's paths (a cached decode step, packed or row
rollouts, the cached judge, a merged pass) give the model's own next-token logits on both routes.
Without them its cached decoding is not its forward, on every route: the packed self-check says so
(it holds the packed tree to a forward from scratch, and a float32 cached forward to 1e-3; it once
held the tree to the cached forward, within twice their difference, and was silent here).
"""

from __future__ import annotations

import logging

import pytest
import torch

from model_families import build
from raintools.models import LanguageModel, wrap
from test_families import TOL, check_fast_paths


def forgetful():
    """A tiny random Llama whose default positions ignore the cache."""
    from transformers import LlamaForCausalLM

    class Forgetful(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, **kw):
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
            return super().forward(input_ids=input_ids, attention_mask=attention_mask,
                                   position_ids=position_ids, cache=cache, **kw)

    lm = build("llama")
    return wrap(Forgetful(lm.model.config).eval(), lm.tokenizer, name="tiny-forgetful")


@pytest.mark.parametrize("route", ["packed", "rows"])
def test_a_model_whose_default_positions_ignore_the_cache_is_exact(route, monkeypatch):
    if route == "rows":        # a model the self-check sends to one row per candidate
        monkeypatch.setattr(LanguageModel, "packed_check", lambda self, seed=0: (1.0, 0.0))
    lm = forgetful()
    assert lm.route.kind == route
    check_fast_paths(lm)


def test_the_self_check_says_when_the_cached_forward_is_not_the_models_forward(monkeypatch, caplog):
    """Positions after a past switched off: the packed tree (explicit positions) equals the model's
    forward from scratch, its cached forward does not, and the route says so, naming the size."""
    monkeypatch.setattr(LanguageModel, "_after", lambda self, p, input_ids: {})
    lm = forgetful()
    with caplog.at_level(logging.WARNING, logger="raintools"):
        route = lm.route
    dev, noise = lm.packed_check()
    assert route.packed and dev < TOL and noise > 1e-3
    [said] = [r.getMessage() for r in caplog.records]
    assert f"{lm.name}: its cached forward" in said and f"by {noise:.3g} logit" in said
