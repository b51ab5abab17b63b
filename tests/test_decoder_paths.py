"""Decoder paths a branch-coverage audit found untested: a dropped walk's added nodes in the trace
(K > 1), a node addition that finds nothing new, a step that leaves the root without a child, a
judge that keeps no judged response, and `Trace.tree_at` at its edges and across a commit."""

from __future__ import annotations

import pytest
import torch

from raintools import RainSearch, SelfEvaluator
from raintools.engines import CachedEngine
from raintools.observe import Observer
from raintools.testing import tiny_model

from test_search import SMALL, assert_replay_matches_commits, letter_embedder, vowel_judge

const = lambda texts: torch.ones(len(texts), 4)      # every candidate alike: node addition fires
bad = lambda q, x: -1.0                              # ... and every candidate looks bad


class AddedLog(Observer):
    """The nodes each walk added by node addition, and the dropped walks that had added some."""

    def __init__(self):
        self.added: dict[int, list[int]] = {}
        self.dropped_after_adding: list[tuple[list[int], int]] = []    # (uids, walk of `into`)
        self.events: list[tuple] = []

    def nodes_created(self, search, sim, parent, nodes, rolled_out, added):
        self.events.append((parent.uid, [n.uid for n in nodes], added))
        if added and sim is not None:
            self.added.setdefault(id(sim), []).extend(n.uid for n in nodes)

    def dropped(self, search, sim, into):          # ids of finished walks are reused: pop them
        if self.added.get(id(sim)):
            self.dropped_after_adding.append((self.added[id(sim)], into.walk))
        self.added.pop(id(sim), None)

    def backed_up(self, search, sim, similarity):
        self.added.pop(id(sim), None)


# ------------------------------------------------------------------ 1. a dropped walk that added nodes

def test_a_dropped_walk_that_added_nodes_is_recorded_and_the_trace_replays(tiny_lm):
    """K > 1: a walk that added nodes during its selection and then reached a leaf another slot is
    expanding is dropped; the nodes it added stay in the tree, so the trace records them with the
    simulation it was dropped into (its `added` list), each node once, and replays to the tree the
    search held at every commit. The judge makes it happen: the branch of the most likely first
    token looks a little bad, every other one very bad, so once the root's children are all
    visited node addition fires at the root and a walk then goes down that branch, to the leaf
    another slot is expanding (its greedy rollout)."""
    from raintools.engines import top_candidates

    cfg = SMALL.replace(max_new_tokens=24, num_candidates=3, max_children=5, max_simulations=12,
                        parallel_simulations=3, max_commits=2, c=0.3)
    log = AddedLog()
    s = RainSearch(tiny_lm, "hello", cfg, evaluator=lambda q, x: -0.05 if x.startswith(top) else -1.0,
                   embedder=const, observers=[log])
    top = tiny_lm.decode(top_candidates(s.root.logits, 1)[0].tokens)     # the judge reads it
    r = s.run()
    assert log.dropped_after_adding, "no dropped walk had added nodes: the path is not reached"
    trace = r.trace
    assert_replay_matches_commits(trace)
    recorded = [rec.uid for s in trace.simulations for rec in s.new_nodes]
    assert len(recorded) == len(set(recorded))                 # each node recorded once
    by_walk = {s.round: s for s in trace.simulations}
    committed = {n.uid for c in trace.commits for n in c.tree}
    for uids, into in log.dropped_after_adding:
        assert set(uids) <= set(by_walk[into].added)           # credited to the walk it went to
        assert set(uids) <= set(recorded)
    # the dropped walk's nodes were live at a commit: the replay above had to rebuild them
    assert any(set(uids) & committed for uids, _ in log.dropped_after_adding)


# ------------------------------------------------------------------ 2. node addition finding nothing new

@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_node_addition_that_finds_only_existing_children_adds_nothing(tiny_lm, engine):
    """With `add_attempts=0` a node addition at a longer level proposes only the greedy rollout,
    which the expansion already made a child: it returns [], adds no child, leaves every prior
    and the uid counter as they were, and emits no `nodes_created` (the stats count nothing)."""
    cfg = SMALL.replace(add_attempts=0, num_candidates=3, max_children=6)
    log = AddedLog()
    s = RainSearch(tiny_lm, "hello", cfg, evaluator=vowel_judge, embedder=letter_embedder,
                   engine=engine, observers=[log])
    s.root.step = 2                               # a 4-token level: candidates are rollouts
    s.expand(s.root)
    kids = list(s.root.children)
    for ch in kids:                               # alike and bad: the node-addition test fires
        ch.n, ch.fn, ch.q, ch.embedding = 1.0, 1, -1.0, torch.ones(4)
    s.root.n = s.root.fn = len(kids)
    from raintools.tree import needs_node_addition
    assert 1 < len(kids) < cfg.max_children
    assert needs_node_addition(s.root, cfg.max_children, cfg.add_variance_factor, s.level_length(s.root))
    priors, uid, events = [ch.p for ch in kids], s._next_uid, len(log.events)
    assert s.add_nodes(s.root) == []
    assert s.root.children == kids and [ch.p for ch in kids] == priors
    assert s._next_uid == uid and len(log.events) == events
    assert s.counts["nodes_added"] == 0


# ------------------------------------------------------------------ 3. a step that leaves the root childless

class ProposesNothing:
    """An engine (the `Engine` interface, any backend) whose expansions propose no candidate: the
    tree never grows below the 1-token level, whose candidates the search draws itself."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def expand(self, req):
        self._inner.expand(req)                  # the clause completion still runs
        return []


@pytest.mark.parametrize("rule", ["argmax", "sample"])
def test_a_step_whose_root_has_no_child_ends_the_search_with_no_candidates(tiny_lm, rule):
    """The first step commits a 1-token child (top-k of the root's logits); its level's
    candidates are rollouts, of which the engine proposes none, so after the next step's
    simulations the root has no child: `commit_step` returns None, the search is finished with
    stop reason "no candidates" and the committed response is what the first step committed."""
    cfg = SMALL.replace(commit_rule=rule)
    eng = ProposesNothing(CachedEngine(tiny_lm, top_k=cfg.top_k, temperature=cfg.temperature))
    s = RainSearch(tiny_lm, "hello", cfg, evaluator=vowel_judge, embedder=letter_embedder, engine=eng)
    first = s.commit_step()
    assert first is not None and len(first.tokens) == 1 and not s.finished
    assert s.root is first and not s.root.children
    sims = s.sim_index
    assert s.commit_step() is None
    assert s.sim_index > sims and not s.root.children       # the step ran; nothing to commit
    assert s.finished and s.stop_reason == "no candidates"
    assert s.response == list(first.tokens) and s.token_sets == [list(first.tokens)]
    r = s.result()
    assert r.stats["stop_reason"] == "no candidates" and r.stats["commits"] == 1
    assert len(r.trace.commits) == 1
    assert all(sim.path == [first.uid] for sim in r.trace.simulations[sims:])  # walks end at the root
    assert s.commit_step() is None and s.sim_index == r.stats["simulations"]   # finished: no more


# ------------------------------------------------------------------ 4. a judge that keeps no judged response

def test_a_judge_keeping_no_judged_response_judges_alike_and_counts_by_the_trie():
    """`response_cache_size=0`: no judged response's KV is kept, so a continuation of a judged
    response computes its whole response again, but the values are the default judge's and the
    tokens needed are counted from the trie of judged ids, as the default judge counts them."""
    lm = tiny_model(seed=1)
    none = SelfEvaluator(lm, mode="soft", response_cache_size=0)
    default = SelfEvaluator(lm, mode="soft")

    def judge(ev, q, r):
        s0, n0 = lm.stats.snapshot(), ev.stats.tokens_needed
        v = ev(q, r)
        return v, lm.stats.since(s0).tokens, ev.stats.tokens_needed - n0

    for q, r in [("hi", "hello there."), ("hi", "hello there. And more"), ("hi", "hello there."),
                 ("how?", "a reply"), ("hi", "hello there. And more, longer")]:
        v0, computed0, needed0 = judge(none, q, r)
        v, computed, needed = judge(default, q, r)
        assert v0 == pytest.approx(v, abs=1e-4)
        assert needed0 == needed                       # the same trie
        if r.startswith("hello there. "):              # a continuation of a judged response
            assert computed == needed                  # the default judge reuses its KV
            assert computed0 > needed0                 # this one computes the judged start again
        assert computed0 >= computed


# ------------------------------------------------------------------ 5. Trace.tree_at at its edges

class LiveTrees(Observer):
    """The live tree (uid -> parent, n, fn, q, p) right after each simulation's back-up."""

    def __init__(self):
        self.trees: list[dict] = []

    def backed_up(self, search, sim, similarity):
        self.trees.append({n.uid: (n.parent.uid if n.parent else None, n.n, n.fn, n.q, n.p)
                           for n in search.root.walk()})


def as_live(tree) -> dict:
    return {u: (nd.parent, nd.n, nd.fn, nd.q, nd.p) for u, nd in tree.items()}


def assert_same_tree(replayed: dict, live: dict):
    assert set(replayed) == set(live)
    for u, (parent, n, fn, q, p) in live.items():
        r_parent, r_n, r_fn, r_q, r_p = replayed[u]
        assert (r_parent, r_fn) == (parent, fn)
        assert (r_n, r_q, r_p) == pytest.approx((n, q, p))


def test_tree_at_its_edges_and_across_a_commit_is_the_live_tree(tiny_lm):
    """Before any simulation the tree is the root alone; `tree_at(i)` is the search's live tree
    right after simulation i, for i = 0, the last, and the simulations after a commit (the rewound
    branches gone, the new root without parent); indices past either end clamp to the ends."""
    live = LiveTrees()
    s = RainSearch(tiny_lm, "hello", SMALL, evaluator=vowel_judge, embedder=letter_embedder,
                   observers=[live])
    assert list(s.trace.tree_at(0)) == [s.root.uid] == list(s.trace.tree_at(5))
    s.commit_step()
    first = len(live.trees)                           # the first simulation after the commit
    s.commit_step()
    t, last = s.trace, len(s.trace.simulations) - 1
    assert last == len(live.trees) - 1 and first <= last
    for i in range(last + 1):
        assert_same_tree(as_live(t.tree_at(i)), live.trees[i])
    assert as_live(t.tree_at(-3)) == as_live(t.tree_at(0))
    assert as_live(t.tree_at(last + 7)) == as_live(t.tree_at(last))
    before, after = t.tree_at(first - 1), t.tree_at(first)
    chosen = t.commits[0].chosen
    assert after[chosen].parent is None and t.simulations[first].root == chosen
    rewound = set(before) - {u for u in before if _below(before, u, chosen)}
    assert rewound and not rewound & set(after)       # the dropped branches are not in the tree


def _below(tree, uid, top) -> bool:
    while uid is not None:
        if uid == top:
            return True
        uid = tree[uid].parent
    return False
