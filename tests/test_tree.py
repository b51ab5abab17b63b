"""The tree rules, checked with numbers alone (no model)."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch

from raintools.config import RainConfig
from raintools.sampling import TIE, keyed_rng
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


# ------------------------------------------------------------------ each rule at its edges
# (added for `make mutation`: every assertion below kills mutants that survived the tests above)

def chain(*token_sets):
    """root -> a -> b ...: nodes with the given token sets, each the only child of the last."""
    root = Node(tokens=(), uid=0)
    node = root
    for i, ts in enumerate(token_sets, start=1):
        ch = Node(tokens=tuple(ts), parent=node, uid=i, step=i)
        node.children.append(ch)
        node = ch
    return root, node


def test_paths_tokens_and_walk_order():
    root, leaf = chain((1,), (2, 3), (4, 5, 6))
    a, b = root.children[0], root.children[0].children[0]
    assert leaf.path_from_root() == [root, a, b, leaf]
    assert root.path_from_root() == [root]
    assert leaf.response_tokens() == [1, 2, 3, 4, 5, 6]           # the root's own tokens excluded
    assert b.response_tokens() == [1, 2, 3] and root.response_tokens() == []
    sib = Node(tokens=(9,), parent=root, uid=9)
    root.children.append(sib)
    assert [n.uid for n in root.walk()] == [0, 1, 2, 3, 9]           # depth first, children in order
    assert [n.uid for n in a.walk()] == [1, 2, 3]
    assert root.child_with_tokens([9]) is sib and root.child_with_tokens((1,)) is a
    assert root.child_with_tokens((2,)) is None and leaf.child_with_tokens(()) is None
    assert root.is_root and not a.is_root


def test_virtual_loss_in_the_score_by_hand():
    from raintools.tree import VIRTUAL_LOSS

    assert VIRTUAL_LOSS == -1.0
    b = Bounds(-1.0, 1.0)
    ch = Node(tokens=(1,), n=3, q=0.5, p=0.2, virtual=2)
    q = (0.5 * 3 - 1.0 * 2) / 5                                      # two visits of value -1
    expect = (q + 1) / (2 + 1e-5) + 2 * 0.2 * math.sqrt(9) / (1 + 5)
    assert selection_score(ch, 9.0, b, 2.0) == pytest.approx(expect, abs=1e-12)
    fresh = Node(tokens=(2,), n=0, q=0.0, p=0.5, virtual=1)          # in flight, never visited
    assert selection_score(fresh, 4.0, b, 2.0) == pytest.approx(0.0 + 2 * 0.5 * 2 / 2, abs=1e-12)

    class Record:                                                     # a trace record: no `virtual`
        n, q, p = 3, 0.5, 0.2
    assert selection_score(Record(), 9.0, b, 2.0) == pytest.approx(
        1.5 / (2 + 1e-5) + 2 * 0.2 * 3 / 4, abs=1e-12)


def test_select_child_counts_the_parents_flights_and_takes_the_first_on_ties():
    parent = make_parent([0.5, 0.5], ns=[1, 1], qs=[0.0, 0.0], n_parent=2)
    assert select_child(parent, Bounds(), 2.0) is parent.children[0]  # equal scores: the first
    assert select_child(Node(tokens=()), Bounds(), 2.0) is None
    # the parent's in-flight simulations count in sqrt(parent n): with n = 0 and 3 in flight the
    # prior bonus is c p sqrt(3) / (1 + n), enough for the unvisited child to beat a visited one
    parent = make_parent([0.1, 0.9], ns=[1, 0], qs=[1.0, 0.0], n_parent=0)
    parent.children[0].fn = 0
    assert select_child(parent, Bounds(), 1.0) is parent.children[0]   # sqrt(0): value only
    parent.virtual = 3
    assert select_child(parent, Bounds(), 1.0) is parent.children[1]   # 0.9 sqrt(3) > 1 + 0.05 sqrt 3


def test_add_virtual_loss_marks_and_unmarks():
    from raintools.tree import add_virtual_loss

    root, leaf = chain((1,), (2,))
    path = leaf.path_from_root()
    add_virtual_loss(path)
    add_virtual_loss(path, 2)
    assert [n.virtual for n in path] == [3, 3, 3]
    add_virtual_loss(path, -3)
    assert [n.virtual for n in path] == [0, 0, 0]
    with pytest.raises(ValueError, match="^virtual loss removed more often than added$"):
        add_virtual_loss(path, -1)


def test_set_priors_edge_cases():
    inner = make_parent([0, 0, 0, 0])
    inner.parent = Node(tokens=())                                   # not the root
    for ch in inner.children:
        ch.raw_p = 0.0
    set_priors(inner, 0.25)
    assert [c.p for c in inner.children] == [0.25] * 4               # no mass: uniform
    for ch, r in zip(inner.children, [1.0, -2.0, 3.0, 0.0]):
        ch.raw_p = r                                                 # negatives count as 0
    set_priors(inner, 0.25)
    assert [c.p for c in inner.children] == pytest.approx([0.25, 0.0, 0.75, 0.0])
    root = make_parent([0, 0])
    root.children[0].raw_p, root.children[1].raw_p = 1.0, 3.0
    set_priors(root, 0.0)                                            # no mix asked
    assert [c.p for c in root.children] == pytest.approx([0.25, 0.75])
    set_priors(root, 1.0)                                            # all mix: uniform
    assert [c.p for c in root.children] == pytest.approx([0.5, 0.5])
    leaf = Node(tokens=(1,))
    set_priors(leaf, 0.25)                                           # no children: nothing
    assert leaf.children == []


def test_mix_root_priors_by_hand():
    from raintools.tree import mix_root_priors

    root = make_parent([0.2, 0.2])                                   # priors not summing to 1
    mix_root_priors(root, 0.0)
    assert [c.p for c in root.children] == [0.2, 0.2]                # no mix: untouched
    mix_root_priors(root, 0.5)                                       # 0.5 p + 0.25, renormalised
    assert [c.p for c in root.children] == pytest.approx([0.5, 0.5])
    root = make_parent([0.6, 0.2])
    mix_root_priors(root, 0.25)                                      # [0.45+0.125, 0.15+0.125] / 0.85
    assert [c.p for c in root.children] == pytest.approx([0.575 / 0.85, 0.275 / 0.85])
    one = make_parent([0.4])
    mix_root_priors(one, 0.25)
    assert one.children[0].p == pytest.approx(1.0)
    mix_root_priors(Node(tokens=()), 0.25)                           # no children: no error


def test_backup_widens_the_bounds_with_non_root_values_only():
    root = Node(tokens=(), n=1, fn=1, q=-0.9)
    a = Node(tokens=(1,), parent=root)
    root.children = [a]
    bounds = Bounds(-0.1, 0.1)
    backup([root, a], 0.05, bounds)
    assert root.q == pytest.approx(-0.425) and a.q == pytest.approx(0.05)
    assert (bounds.qmin, bounds.qmax) == (-0.1, 0.1)                 # the root's -0.425 not counted
    bounds.widen(-0.5)
    assert bounds.qmin == -0.5 and bounds.qmax == 0.1


def test_update_embedding_replaces_at_the_first_visit():
    node = Node(tokens=(1,), fn=1, embedding=torch.tensor([4.0, 4.0]))
    update_embedding(node, torch.tensor([2.0, 0.0]))
    assert node.embedding.tolist() == [2.0, 0.0]                     # divided by max(fn, 1) = 1
    node.fn = 0
    update_embedding(node, torch.tensor([0.0, 2.0]))
    assert node.embedding.tolist() == [0.0, 2.0]
    node.fn = 4
    update_embedding(node, torch.tensor([4.0, 2.0]))
    assert node.embedding.tolist() == [1.0, 2.0]
    src = torch.tensor([1.0, 1.0], dtype=torch.float64, requires_grad=True)
    fresh = Node(tokens=(2,), fn=1)
    update_embedding(fresh, src)
    assert fresh.embedding.dtype == torch.float32 and not fresh.embedding.requires_grad


def test_similarity_update_edges():
    parent = make_parent([0.25] * 4, ns=[1, 2, 2, 2], qs=[0.0, 0.0, 0.0, 0.0])
    a, b, c, d = parent.children
    a.embedding = torch.tensor([1.0, 0.0])
    b.embedding = torch.tensor([0.0, 1.0])            # cos 0: skipped, and the loop goes on
    c.embedding = torch.tensor([1.0, 0.0])            # cos exactly 1 = threshold: updated
    d.embedding = None                                # no embedding yet: not a candidate
    updated = similarity_update(a, v=0.5, gamma=0.2, threshold=1.0)
    assert [u[0] for u in updated] == [c] and updated[0][1] == pytest.approx(0.2)
    assert c.q == pytest.approx(0.2 * 0.5 / 2.2) and c.n == pytest.approx(2.2)
    assert (b.q, b.n, d.q, d.n) == (0.0, 2, 0.0, 2)
    lone = Node(tokens=(), embedding=torch.tensor([1.0, 0.0]))       # the root: no siblings
    assert similarity_update(lone, 1.0, 0.2, 0.5) == []
    bare = make_parent([0.5, 0.5])
    bare.children[1].embedding = torch.tensor([1.0])
    assert similarity_update(bare.children[0], 1.0, 0.2, 0.5) == []  # itself without embedding
    alone = make_parent([1.0])
    alone.children[0].embedding = torch.tensor([1.0])
    assert similarity_update(alone.children[0], 1.0, 0.2, 0.5) == []


def test_node_addition_edges():
    parent = make_parent([0.5, 0.5], ns=[1, 1], qs=[-0.5, 0.0])
    for ch in parent.children:
        ch.embedding = torch.tensor([1.0, 2.0])
    assert not needs_node_addition(parent, 20, 0.03, 1)              # a child at q = 0 is not bad
    parent.children[1].q = -0.01
    assert needs_node_addition(parent, 20, 0.03, 1)
    assert not needs_node_addition(parent, 20, 0.0, 1)               # norm 0 is not below 0
    assert not needs_node_addition(parent, 2, 0.03, 1) and needs_node_addition(parent, 3, 0.03, 1)
    assert needs_node_addition(Node(tokens=()), 20, 0.03, 1) is False   # no children (a bool)
    one = make_parent([1.0], ns=[1], qs=[-1.0])
    one.children[0].embedding = torch.tensor([1.0])
    assert embedding_variance_norm(one) is None and needs_node_addition(one, 20, 0.03, 1) is False


def test_sample_by_visits_edges():
    root = make_parent([0.25] * 3, ns=[1, 1, 2])
    assert [sample_by_visits(root, u).uid for u in (0.0, 0.2499, 0.25, 0.4999, 0.5, 0.9999)] == \
        [1, 1, 2, 2, 3, 3]                                           # [0, .25) [.25, .5) [.5, 1)
    frac = make_parent([0.5, 0.5], ns=[0.3, 0.5])                    # fractional visits, total < 1
    frac.children[0].n, frac.children[1].n = 0.3, 0.5
    assert sample_by_visits(frac, 0.1).uid == 1 and sample_by_visits(frac, 0.5).uid == 2
    none = make_parent([0.5, 0.5], qs=[0.1, 0.4])                    # no visits: most visited
    assert sample_by_visits(none, 0.0).uid == 2
    ten = make_parent([0.1] * 10, ns=[1] * 10)                       # the fractions sum below 1
    assert sample_by_visits(ten, 1 - 2 ** -53).uid == 10             # the last child, not past it
    assert sample_by_visits(Node(tokens=()), 0.5) is None and most_visited(Node(tokens=())) is None


def test_reroot_edges():
    root = make_parent([0.5, 0.5])
    keep = root.children[1]
    assert reroot(keep, 0.0) is keep
    assert root.children == [keep] and keep.parent is None           # the old root lets go of the rest
    lone = Node(tokens=(1,))
    assert reroot(lone, 0.25) is lone and lone.parent is None        # already a root


# ------------------------------------------------------------------ ties and the commit's root mix
# (added by the AST mutation audit: these rules were only reached through the model-backed
# tests of test_fidelity.py; here each is checked with numbers alone)

def test_select_child_hands_exactly_the_tied_best_children_to_the_tie_rule():
    # unvisited children score c p sqrt(N): the first and the last tie for the best, the middle one
    # scores lower and must not be among the tied
    parent = make_parent([0.4, 0.2, 0.4], n_parent=4)
    first, low, last = parent.children
    seen = []

    def tie(tied):
        seen.append(list(tied))
        return tied[-1]

    assert select_child(parent, Bounds(), 2.0, tie) is last            # the rule's pick is taken
    assert seen == [[first, last]]
    parent.children = [low, last, first]                                # a lower child first
    seen.clear()
    assert select_child(parent, Bounds(), 2.0, tie) is first
    assert seen == [[last, first]]
    parent.children = [low, first]                                      # one best: no tie to break
    seen.clear()
    assert select_child(parent, Bounds(), 2.0, tie) is first and seen == []


def tied_children(*token_sets):
    parent = Node(tokens=(), uid=7, n=3.0, fn=3)
    parent.children = [Node(tokens=ts, parent=parent, uid=10 + i) for i, ts in enumerate(token_sets)]
    return parent


def test_tie_rule_public_is_the_lowest_token_id_at_the_1_token_level_else_the_first():
    from raintools.tree import tie_rule

    parent = tied_children((5,), (2,), (9,), (3,))
    lowest = parent.children[1]
    for seed in range(16):                                              # no draw: the same pick
        assert tie_rule("public", seed, parent, True)(parent.children) is lowest
    assert tie_rule("public", 0, parent, False) is None                 # longer level: the first
    assert select_child(parent, Bounds(), 0.0, tie_rule("public", 0, parent, False)) is parent.children[0]
    assert select_child(parent, Bounds(), 0.0, tie_rule("public", 0, parent, True)) is lowest


def test_tie_rule_random_is_a_draw_keyed_by_seed_node_visits_and_flights():
    from raintools.tree import tie_rule

    parent = tied_children((5,), (2,), (9,), (3,))
    tied = parent.children
    for one_token_level in (True, False):                               # the same rule at every level
        picks = [tie_rule("random", seed, parent, one_token_level)(tied) for seed in range(32)]
        assert all(p in tied for p in picks)
        assert set(picks) == set(tied)                                  # every tied child can win
        twin = tied_children((5,), (2,), (9,), (3,))                     # same key, same draw
        assert [tie_rule("random", seed, twin, one_token_level)(twin.children).uid
                for seed in range(32)] == [p.uid for p in picks]
    by_visits, by_flights = set(), set()
    for k in range(32):                                                 # the key moves with visits and
        parent.fn, parent.virtual = k, 0                                # with the paths in flight
        by_visits.add(tie_rule("random", 0, parent, True)(tied))
        parent.fn, parent.virtual = 3, k
        by_flights.add(tie_rule("random", 0, parent, True)(tied))
    assert len(by_visits) > 1 and len(by_flights) > 1
    by_node = set()                                                     # and with the node: two nodes
    for uid in range(32):                                               # with the same counts draw
        parent.uid, parent.fn, parent.virtual = uid, 3, 0               # apart
        by_node.add(tie_rule("random", 0, parent, True)(tied))
    assert len(by_node) > 1
    # its own keyed stream (the purpose tag TIE keeps it apart from the other draws, test_sampling)
    for seed in range(8):
        n = keyed_rng(seed, TIE, parent.uid, parent.fn, parent.virtual).integers(len(tied))
        assert tie_rule("random", seed, parent, False)(tied) is tied[int(n)]


def test_reroot_mixes_the_new_roots_priors_with_uniform():
    root = make_parent([0.5, 0.5])
    keep = root.children[0]
    keep.children = [Node(tokens=(7,), parent=keep, p=0.2), Node(tokens=(8,), parent=keep, p=0.8)]
    reroot(keep, 0.25)
    assert [c.p for c in keep.children] == pytest.approx([0.75 * 0.2 + 0.25 / 2, 0.75 * 0.8 + 0.25 / 2])


def test_response_tokens_exclude_the_committed_roots_own_tokens():
    root, leaf = chain((1,), (2, 3), (4, 5, 6))
    a = root.children[0]
    reroot(a, 0.25)                              # (1,) is committed: a is the root, with its tokens
    assert a.tokens == (1,) and a.response_tokens() == []
    assert leaf.response_tokens() == [2, 3, 4, 5, 6]
