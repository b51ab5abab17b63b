"""The sampling helpers with hand-computed numbers: keyed generators, the top-k tempered
distribution, the inverse-CDF draw. Model-free and fast: part of `make mutation`'s selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from raintools.sampling import (ADD, COMMIT, COMPLETE, EXPAND, TIE, VANILLA, keyed_rng, pick, sample_full,
                                truncated)


def test_purposes_are_fixed_keys():
    # the purposes key every stream of the search: renumbering them changes every draw, and two
    # purposes sharing a number would draw from the same stream
    purposes = (EXPAND, COMPLETE, COMMIT, ADD, VANILLA, TIE)
    assert purposes == (1, 2, 3, 4, 5, 6)
    assert len(set(purposes)) == len(purposes)


def test_keyed_rng_is_numpys_generator_keyed_by_32_bit_words():
    draw = lambda rng: rng.random(4).tolist()
    assert draw(keyed_rng(3, 1, 7)) == draw(np.random.default_rng([3, 1, 7]))
    assert draw(keyed_rng(3)) == draw(np.random.default_rng([3]))
    assert draw(keyed_rng(2**32 + 3, 2**32 + 1)) == draw(keyed_rng(3, 1))     # words, mod 2^32
    assert draw(keyed_rng(-1, -2)) == draw(np.random.default_rng([2**32 - 1, 2**32 - 2]))
    assert draw(keyed_rng(3, 1, 7)) != draw(keyed_rng(3, 7, 1))               # order matters
    assert draw(keyed_rng(3, 1)) != draw(keyed_rng(2, 1))
    assert draw(keyed_rng(np.int64(3), 1.0)) == draw(keyed_rng(3, 1))          # ints of any kind


def test_truncated_is_the_tempered_softmax_of_the_top_k():
    logits = torch.tensor([1.0, 3.0, 2.0, 0.0])
    probs, ids = truncated(logits, 2)
    e = math.e
    assert ids.tolist() == [1, 2]
    assert probs.tolist() == pytest.approx([e / (e + 1), 1 / (e + 1)], abs=1e-6)
    probs, ids = truncated(logits, 2, temperature=2.0)            # softmax([1.5, 1.0])
    assert probs.tolist() == pytest.approx([1 / (1 + math.exp(-0.5)), 1 / (1 + math.exp(0.5))], abs=1e-6)
    probs, ids = truncated(logits, 10)                             # k above the vocabulary
    assert ids.tolist() == [1, 2, 0, 3]
    z = sum(math.exp(x) for x in (3, 2, 1, 0))
    assert probs.tolist() == pytest.approx([math.exp(x) / z for x in (3, 2, 1, 0)], abs=1e-6)
    batch = torch.tensor([[1.0, 3.0, 2.0], [0.0, -1.0, 5.0]], dtype=torch.float16)
    probs, ids = truncated(batch, 1)
    assert ids.tolist() == [[1], [2]] and probs.tolist() == [[1.0], [1.0]]
    assert probs.dtype == torch.float32
    wide = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, -1.0, 5.0, 4.0]])   # 2 rows, k above the rows:
    probs, ids = truncated(wide, 3)                                   # k counts tokens, not rows
    assert ids.tolist() == [[1, 2, 0], [2, 3, 0]] and probs.shape == (2, 3)
    assert probs.sum(-1).tolist() == pytest.approx([1.0, 1.0])
    assert truncated(logits, 1.9)[1].tolist() == [1]               # k is an integer


@pytest.mark.parametrize("probs", [[0.25, 0.5, 0.25], [1.0, 2.0, 1.0]])   # normalised or not
def test_pick_is_the_inverse_cdf(probs):
    p = torch.tensor(probs)
    got = [pick(p, u) for u in (0.0, 0.2499, 0.25, 0.7499, 0.75, 0.9999)]
    assert got == [0, 0, 1, 1, 2, 2]
    assert pick(p, 1.0) == 2                                       # never past the last index
    assert isinstance(pick(p, 0.5), int)
    assert pick(torch.tensor([0.0, 1.0, 0.0]), 0.0) == 1           # a zero-probability token never


def test_sample_full_draws_from_the_tempered_full_softmax():
    logits = torch.tensor([0.0, math.log(3.0)])                    # probabilities 1/4, 3/4
    assert [sample_full(logits, u) for u in (0.0, 0.24, 0.26, 0.99)] == [0, 0, 1, 1]
    # temperature 2: probabilities 1 / (1 + sqrt 3) = 0.366 and 0.634
    assert [sample_full(logits, u, temperature=2.0) for u in (0.3, 0.36, 0.37)] == [0, 0, 1]
    assert sample_full(logits.half(), 0.3) == 1
