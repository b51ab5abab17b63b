"""Positions after a cached past on the packed and rows routes.

A model's own default positions may ignore its cache: Bamba's restart at 0 after one. Here a tiny
Llama whose default does the same (positions 0, 1, ... for whatever it is fed). Every plain forward
after a past passes the positions after it, as generate() does (`LanguageModel._after`, one path
with the reference route's), so the fast engine's paths (a cached decode step, packed or row
rollouts, the cached judge, a merged pass) give the model's own next-token logits on both routes.
Without them the packed self-check does not notice (its "own cached forward" is then off by as
much as the packed tree, and counts as rounding noise), so this model would run packed, and wrong.
"""

from __future__ import annotations

import pytest
import torch

from model_families import build
from raintools.models import LanguageModel, wrap
from test_families import check_fast_paths


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
