"""The tree rules, checked with numbers alone (no model)."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch

from raintools.config import RainConfig
from raintools.tree import (Bounds, Node, backup, embedding_variance_norm, most_visited,
                            needs_node_addition, reroot, sample_by_visits, select_child,
                            selection_score, set_priors, similarity_update, update_embedding)


def make_parent(priors, ns=None, qs=None, n_parent=4.0):
    parent = Node(tokens=(), uid=0, n=n_parent)
    for i, p in enumerate(priors):
        ch = Node(tokens=(i,), parent=parent, uid=i + 1, p=p)
        if ns:
            ch.n = ns[i]
            ch.fn = int(ns[i])
        if qs:
            ch.q = qs[i]
        parent.children.append(ch)
    return parent


def test_selection_score_matches_hand_computation():
    b = Bounds(-1.0, 1.0)
    ch = Node(tokens=(1,), n=3, q=0.5, p=0.2)
    # qh = (0.5 + 1) / (2 + 1e-5); u = 2 * 0.2 * sqrt(9) / 4
    expect = 1.5 / (2 + 1e-5) + 2 * 0.2 * 3 / 4
    assert selection_score(ch, 9.0, b, 2.0) == pytest.approx(expect, abs=1e-12)
    unvisited = Node(tokens=(2,), n=0, q=0.9, p=0.5)   # pessimistic first play: qh = 0
    assert selection_score(unvisited, 9.0, b, 2.0) == pytest.approx(2 * 0.5 * 3 / 1)
    b2 = Bounds(-0.5, 0.25)                              # widened bounds normalise q
    assert selection_score(ch, 0.0, b2, 2.0) == pytest.approx((0.5 + 0.5) / (0.75 + 1e-5))


def test_select_child_trades_value_for_exploration():
    parent = make_parent([0.1, 0.9], ns=[5, 0], qs=[0.8, 0.0], n_parent=5)
    assert select_child(parent, Bounds(), c=2.0).uid == 2       # big prior, unvisited
    assert select_child(parent, Bounds(), c=0.0).uid == 1       # pure exploitation


def test_backup_is_an_undiscounted_running_mean_and_widens_bounds():
    root = Node(tokens=(), uid=0)
    a = Node(tokens=(1,), parent=root, uid=1)
    b = Node(tokens=(2, 3), parent=a, uid=2)
    root.children, a.children = [a], [b]
    bounds = Bounds()
    for v in (1.0, -1.0, 0.0, 1.0):
        backup([root, a, b], v, bounds)
    for node in (root, a, b):
        assert node.n == 4 and node.fn == 4
        assert node.q == pytest.approx(0.25)
    assert (bounds.qmin, bounds.qmax) == (-1.0, 1.0)
    bounds = Bounds(-0.1, 0.1)
    backup([root, a], 0.5, bounds)
    assert bounds.qmax == pytest.approx(a.q) and bounds.qmin == -0.1


def test_similarity_update_arithmetic():
    parent = make_parent([0.5, 0.3, 0.2], ns=[2, 3, 1], qs=[0.0, 0.5, -0.5])
    a, b, c = parent.children
    a.embedding = torch.tensor([1.0, 0.0])
    b.embedding = torch.tensor([1.0, 0.1])          # cos = 0.995 >= 0.95: updated
    c.embedding = torch.tensor([0.0, 1.0])          # cos = 0: untouched
    s = float(torch.nn.functional.cosine_similarity(a.embedding, b.embedding, dim=0))
    updated = similarity_update(a, v=1.0, gamma=0.2, threshold=0.95)
    w = 0.2 * s
    assert [u[0] for u in updated] == [b]
    assert b.q == pytest.approx((0.5 * 3 + w * 1.0) / (3 + w))
    assert b.n == pytest.approx(3 + w)
    assert c.q == -0.5 and c.n == 1
    assert a.q == 0.0 and a.n == 2                 # the node itself is not touched


def test_embedding_running_mean_over_real_visits():
    node = Node(tokens=(1,), fn=1)
    update_embedding(node, torch.tensor([2.0, 0.0]))
    node.fn = 2
    update_embedding(node, torch.tensor([0.0, 2.0]))
    assert torch.allclose(node.embedding, torch.tensor([1.0, 1.0]))


def test_node_addition_trigger():
    parent = make_parent([0.5, 0.5], ns=[1, 1], qs=[-0.5, -0.2])
    assert not needs_node_addition(parent, 20, 0.03, 1)         # no embeddings yet
    for ch in parent.children:
        ch.embedding = torch.tensor([1.0, 2.0, 3.0])
    assert embedding_variance_norm(parent) == pytest.approx(0.0)
    assert needs_node_addition(parent, 20, 0.03, 1)             # alike and all bad
    parent.children[1].q = 0.1
    assert not needs_node_addition(parent, 20, 0.03, 1)         # one child is good
    parent.children[1].q = -0.1
    parent.children[1].embedding = torch.tensor([1.0, 2.5, 3.0])
    var = torch.var(torch.stack([c.embedding for c in parent.children]), dim=0)
    assert embedding_variance_norm(parent) == pytest.approx(float(var.norm()))
    assert float(var.norm()) > 0.03                             # too diverse at length 1
    assert not needs_node_addition(parent, 20, 0.03, 1)
    # the threshold scales with the level's length (given, not read from the 1-token children)
    assert needs_node_addition(parent, 20, 0.03, 10)
    assert not needs_node_addition(parent, 2, 1.0, 10)          # already max_children


def test_priors_normalise_and_mix_at_the_root():
    root = make_parent([0, 0, 0])
    for ch, r in zip(root.children, [0.6, 0.3, 0.1]):
        ch.raw_p = r
    set_priors(root, 0.25)
    assert [c.p for c in root.children] == pytest.approx([0.75 * 0.6 + 0.25 / 3, 0.75 * 0.3 + 0.25 / 3,
                                                          0.75 * 0.1 + 0.25 / 3])
    inner = root.children[0]
    for i, r in enumerate([2.0, 6.0]):
        inner.children.append(Node(tokens=(i,), parent=inner, raw_p=r))
    set_priors(inner, 0.25)                                      # not the root: no mix
    assert [c.p for c in inner.children] == pytest.approx([0.25, 0.75])


def test_token_set_length_by_absolute_depth():
    cfg = RainConfig()
    assert [cfg.token_set_length(s) for s in range(6)] == [1, 2, 4, 10, 10, 10]


def test_commit_keeps_exactly_the_chosen_subtree():
    root = make_parent([0.2, 0.8], ns=[3, 5], qs=[0.9, 0.1], n_parent=8)
    keep, drop = root.children[1], root.children[0]
    grand = [Node(tokens=(7,), parent=keep, uid=10, p=0.5), Node(tokens=(8,), parent=keep, uid=11, p=0.5)]
    keep.children = grand
    drop.children = [Node(tokens=(9,), parent=drop, uid=12)]
    assert most_visited(root) is keep
    dropped = weakref.ref(drop)
    dropped_child = weakref.ref(drop.children[0])
    stats = (keep.n, keep.fn, keep.q)
    new_root = reroot(keep, 0.25)
    del drop, root
    gc.collect()
    assert new_root is keep and new_root.parent is None
    assert (new_root.n, new_root.fn, new_root.q) == stats           # statistics kept
    assert [c.uid for c in new_root.children] == [10, 11]           # subtree kept
    assert dropped() is None and dropped_child() is None            # the rest is freed
    assert [c.p for c in new_root.children] == pytest.approx([0.5, 0.5])


def test_most_visited_breaks_ties_by_value_and_sampling_follows_visits():
    root = make_parent([0.5, 0.5, 0.0], ns=[4, 4, 0], qs=[0.1, 0.3, 0.9])
    assert most_visited(root).uid == 2
    assert sample_by_visits(root, 0.0).uid == 1
    assert sample_by_visits(root, 0.99).uid == 2
