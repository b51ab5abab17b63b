"""Keyed randomness and truncated distributions.

Every random draw of the search comes from a generator keyed by (seed, purpose, node id, ...),
not from one global stream. So a draw does not depend on the order in which the engine makes it:
the batched fast engine, the one-by-one reference engine and a multi-prompt batch all sample the
same tokens for the same node (up to floating-point ties), which is what makes their equivalence
testable.
"""

from __future__ import annotations

import numpy as np
import torch

EXPAND, COMPLETE, COMMIT, ADD, VANILLA, TIE = 1, 2, 3, 4, 5, 6


def keyed_rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in key]])


def truncated(logits: torch.Tensor, top_k: int, temperature: float = 1.0):
    """Top-k truncated, temperature-scaled distribution: (probs [.., k], token ids [.., k]),
    sorted by decreasing probability."""
    k = min(int(top_k), logits.shape[-1])
    vals, idx = torch.topk(logits.float() / temperature, k, dim=-1)
    return torch.softmax(vals, dim=-1), idx


def pick(probs: torch.Tensor, u: float) -> int:
    """Inverse-CDF draw from a 1-D distribution with uniform `u` in [0, 1). Runs where `probs`
    lives; one transfer (the chosen index) to the host."""
    cdf = torch.cumsum(probs.float(), dim=0)
    target = (cdf[-1:].double() * u).float()
    i = int(torch.searchsorted(cdf, target, right=True)[0])
    return min(i, probs.shape[0] - 1)


def sample_full(logits: torch.Tensor, u: float, temperature: float = 1.0) -> int:
    """Draw from the full-vocabulary softmax (used by clause completion and sampled vanilla)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    return pick(probs, u)
