"""Which execution route a loaded model gets, decided from what the model is, not from its name.

The fast engine computes each token of the search tree once. Its fastest form packs a whole token
tree into one sequence: a 4D mask says which earlier tokens each token sees, and explicit
positions say where each token sits on its own line. That is exact only when attention depends on
nothing but the mask and the positions. Each model gets one of three routes:

* ``packed`` - token trees in one sequence (rollouts, the judge's question endings, merged
  searches). Rotary or learned absolute positions, multi-query / grouped-query attention,
  soft-capping, eager or sdpa attention, sliding windows (`layer_masks` builds each layer type's
  window into its mask from each token's true position; every layer keeps its whole KV).
* ``rows`` - the model keeps a per-token KV cache but a packed tree would not reproduce its
  forward (ALiBi biases computed from a 2D mask or from key indices, no ``position_ids``, an
  attention implementation that ignores 4D masks, chunked attention, GPT-Neo's local attention
  (windows by key index, not in its layer types), queries scaled by their index in the cache
  (Llama 4's attention temperature tuning), windows that differ between layers of one type, or a
  failed self-check): the same engine runs one batch row per candidate (plain decoding steps, the
  model's own masks), slower but exact.
* ``reference`` - layers without a per-token KV (state-space, linear-attention, recurrent, hybrid
  models; layers reusing another layer's KV; a sparse-attention indexer's own key cache): a token
  tree cannot share their state, so RAIN runs through the reference-style engine (the model's own
  cache object, copied before it is extended token by token; full recomputation for a model that
  returns no cache), and the judge reads each whole prompt.

``static_route`` reads the model's config (transformers' own per-layer types and windows, the
attention implementation, the forward signature); `LanguageModel.route` then confirms a packed
route with a small self-check against the model's own forward (a token tree longer than the
smallest window, when that window is at most `CHECK_WINDOW_MAX` tokens).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import torch

PACKED, ROWS, REFERENCE = "packed", "rows", "reference"
KV_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention")
MASK_ATTENTION = ("sdpa", "eager")     # implementations that apply an arbitrary 4D mask
CHECK_WINDOW_MAX = 1100                # self-check sequences cover windows up to this many tokens


@dataclass(frozen=True)
class Route:
    """How the engine serves one model (see module docstring)."""

    kind: str
    reason: str = ""                                  # why not packed (empty when packed)
    windows: dict = field(default_factory=dict)       # layer type -> sliding window (None: full)
    by_type: bool = False                             # the forward takes {layer type: mask}

    @property
    def packed(self) -> bool:
        return self.kind == PACKED

    @property
    def windowed(self) -> bool:
        return self.smallest_window is not None

    @property
    def smallest_window(self) -> int | None:
        return min((w for w in self.windows.values() if w is not None), default=None)


def _alibi(cfg) -> bool:
    attn = getattr(cfg, "attn_config", None)        # MPT: an object or a dict
    attn_alibi = attn.get("alibi") if isinstance(attn, dict) else getattr(attn, "alibi", False)
    return (getattr(cfg, "alibi", False) is True or attn_alibi is True
            or str(getattr(cfg, "position_embedding_type", "")).lower() == "alibi")


def static_route(model) -> Route:
    """The route the model's configuration allows (before the self-check)."""
    name = type(model).__name__
    try:                            # per decoder layer: transformers' layer type and sliding window
        from transformers.cache_utils import get_layer_types_and_kwargs

        cfg = model.config.get_text_config(decoder=True)
        types, kwargs = get_layer_types_and_kwargs(cfg)
        windows = [kw.get("sliding_window") for kw in kwargs]
    except Exception as exc:  # noqa: BLE001 - an unknown layout: do not guess
        return Route(REFERENCE, f"{name}: its layer layout cannot be read ({type(exc).__name__}: "
                                f"{str(exc)[:120]})")
    other = sorted(set(types) - set(KV_LAYER_TYPES))
    if other or getattr(model, "_is_stateful", False):
        what = f"layers of type {', '.join(other)}" if other else "a recurrent state"
        if "dummy" in other:        # transformers' type for a layer whose cache holds no KV
            what += (" (layers without a KV of their own: they reuse another layer's keys and "
                     "values, as in KV sharing, or have no attention)")
        if "indexed_attention" in other:
            what += (" (a sparse-attention indexer picks the keys each query sees, from a key "
                     "cache of its own)")
        return Route(REFERENCE, f"{name} has {what}, not a per-token KV cache that a token tree can "
                                f"share")
    impl = getattr(cfg, "_attn_implementation", None) or getattr(model.config, "_attn_implementation", None)
    params = inspect.signature(model.forward).parameters
    nope = getattr(cfg, "no_rope_layers", None) or ()        # per layer, 0: no rotary positions
    per_type: dict[str, set] = {}
    for t, w in zip(types, windows):
        per_type.setdefault(t, set()).add(w if t == "sliding_attention" else None)
    reason = ""
    if _alibi(cfg):
        reason = f"{name} uses ALiBi position biases, computed from a 2D mask or from key indices"
    elif "position_ids" not in params:
        reason = f"{name} takes no position ids (its positions come from the mask or key indices)"
    elif impl not in MASK_ATTENTION:
        reason = (f"{name} runs the {impl!r} attention implementation, not one known to apply a "
                  f"4D token-tree mask (sdpa, eager)")
    elif "chunked_attention" in per_type:
        reason = f"{name} has chunked-attention layers"
    elif "local" in (getattr(cfg, "attention_layers", None) or ()):
        reason = (f"{name} has local-attention layers whose window (window_size) is applied by key "
                  f"index, not by position, and its layer types do not name them")
    elif getattr(cfg, "attn_temperature_tuning", False) and 0 in nope:
        reason = (f"{name} scales the queries of its layers without rotary positions by each token's "
                  f"index in the cache (attention temperature tuning), not by its position")
    elif any(len(ws) > 1 for ws in per_type.values()):
        reason = f"{name} has sliding windows that differ between layers of one type"
    if reason:
        return Route(ROWS, reason)
    wins = {t: next(iter(ws)) for t, ws in per_type.items()}
    return Route(PACKED, windows=wins, by_type=len(wins) > 1)


def layer_masks(mask: torch.Tensor, route: Route):
    """The 4D boolean mask (True = may attend) of a token tree, per layer type.

    Each query of a token tree sees its whole line (the tokens at positions 0 .. its own, in KV
    order), so the distance from a query to a key it sees is the number of keys it sees after that
    key; a sliding layer keeps the keys closer than its window, as transformers' own sliding mask
    does (``kv_idx > q_idx - sliding_window``). Returns one mask, or {layer type: mask} when the
    layer types need different masks."""
    if not route.windowed:
        return mask
    after = mask.flip(-1).cumsum(-1, dtype=torch.int32).flip(-1)    # seen keys at or after each key
    out = {t: mask if w is None else mask & (after <= w) for t, w in route.windows.items()}
    return out if route.by_type else next(iter(out.values()))
