"""Parallel simulations (RainConfig.parallel_simulations = K): simulations in flight without a round
barrier, virtual-loss bookkeeping, packed passes equal to one-by-one ones, batches, traces."""

from __future__ import annotations

import copy

import pytest
import torch

from raintools import RainConfig, RainSearch, SelfEvaluator, rain_generate_batch
from raintools.testing import tiny_model
from raintools.trace import Trace
from raintools.observe import Observer
from raintools.search import Simulation, round_size
from raintools.tree import Bounds, backup, select_child

from test_search import SMALL, assert_replay_matches_commits, check_invariants, letter_embedder, vowel_judge

BIG = RainConfig(max_new_tokens=40, max_simulations=24, extra_simulations=8, min_visits=2,
                 clause_max_tokens=6, max_commits=3)


def search(lm, cfg, **kw):
    kw.setdefault("evaluator", vowel_judge)
    kw.setdefault("embedder", letter_embedder)
    return RainSearch(lm, "hello", cfg, **kw)


def snapshot(root):
    return {id(n): (n, n.n, n.fn, n.q) for n in root.walk()}


def commit_trees(result):
    return [sorted((n.uid, tuple(n.tokens), n.fn, round(n.n, 9), round(n.q, 9)) for n in c.tree)
            for c in result.trace.commits]


# ------------------------------------------------------------------ selection with virtual loss

def test_virtual_loss_counts_as_a_pessimistic_visit_and_is_undone():
    from raintools.tree import Node, add_virtual_loss, selection_score

    root = Node(tokens=(), n=4, fn=4)
    a = Node(tokens=(1,), parent=root, p=0.6, n=2, fn=2, q=0.5)
    b = Node(tokens=(2,), parent=root, p=0.4, n=2, fn=2, q=0.5)
    root.children = [a, b]
    before = selection_score(a, root.n, Bounds(), 2.0)
    assert select_child(root, Bounds(), 2.0) is a
    add_virtual_loss([root, a])
    # one more visit of value -1: q = (0.5 * 2 - 1) / 3 = 0, n = 3, parent n = 5
    qh = (0.0 + 1) / (2 + 1e-5)
    assert selection_score(a, root.n + root.virtual, Bounds(), 2.0) == pytest.approx(
        qh + 2.0 * 0.6 * 5 ** 0.5 / 4)
    assert select_child(root, Bounds(), 2.0) is b          # the path in flight looks worse
    add_virtual_loss([root, a], -1)
    assert (a.n, a.fn, a.q, a.virtual, root.virtual) == (2, 2, 0.5, 0, 0)
    assert selection_score(a, root.n, Bounds(), 2.0) == before
    with pytest.raises(ValueError):
        add_virtual_loss([a], -1)


class FlowLog(Observer):
    """Per event: ("start" | "end", walk, forward passes so far, the paths in flight), and the
    virtual loss of every node checked against the paths in flight at each event."""

    def __init__(self):
        self.events, self.open = [], {}

    def _check(self, search):
        for node in search.root.walk():
            assert node.virtual == sum(node in path for path in self.open.values())

    def selected(self, search, sim):
        self.open[sim.walk] = sim.path
        self._check(search)
        self.events.append(("start", sim.walk, search.lm.stats.calls, len(self.open)))

    def backed_up(self, search, sim, similarity):
        del self.open[sim.walk]
        self._check(search)
        self.events.append(("end", sim.walk, search.lm.stats.calls, len(self.open)))


def test_a_freed_slot_starts_a_new_walk_before_the_others_finish(tiny_lm):
    """No round barrier: right after a back-up (no forward pass between), the freed slot starts a
    new walk while walks started before it are still in flight; never more than K in flight; the
    virtual loss on every node equals the paths in flight through it, and is zero at the end."""
    for k in (2, 4):
        log = FlowLog()
        s = search(tiny_lm, BIG.replace(parallel_simulations=k), observers=[log])
        r = s.run()
        ev = log.events
        assert max(e[3] for e in ev) == k
        freed = [(a, b) for a, b in zip(ev, ev[1:]) if a[0] == "end" and b[0] == "start"
                 and b[2] == a[2] and b[3] >= 2]
        assert freed                               # a new walk beside others still in flight
        assert all(n.virtual == 0 for n in s.root.walk()) and not log.open
        assert r.stats["simulations"] == sum(e[0] == "end" for e in ev)


def test_no_round_takes_more_than_half_of_the_budget_left():
    assert [round_size(4, r) for r in (12, 8, 7, 6, 5, 4, 3, 2, 1)] == [4, 4, 4, 3, 3, 2, 2, 1, 1]
    assert [round_size(1, r) for r in (8, 1)] == [1, 1]


def test_a_step_ends_with_a_simulation_alone(tiny_lm):
    """With the budget spent (no early stop), no more walks are in flight than half of the
    step's budget not yet backed up (rounded up): the last simulation of every step runs alone."""
    cfg = BIG.replace(parallel_simulations=4, max_simulations=10, extra_simulations=1)
    log = FlowLog()
    r = search(tiny_lm, cfg, evaluator=lambda q, x: -1.0, observers=[log]).run()
    done, started, budget = 0, 0, r.stats["simulations_per_step"]
    step = 0
    for kind, _, _, in_flight in log.events:
        if kind == "start":
            started += 1
            assert in_flight <= max(1, (budget[step] - done + 1) // 2)
            if started == budget[step]:
                assert in_flight == 1                 # the step's last walk starts alone
        else:
            done += 1
            if done == budget[step]:
                assert in_flight == 0
                step, done, started = step + 1, 0, 0
    assert max(e[3] for e in log.events) == 4
    assert not any(c.early_stop for c in r.trace.commits)


def test_step_bookkeeping_equals_the_sum_of_its_simulations(tiny_lm):
    """After an outer step's simulations, every node's real visits grew by the number of the
    step's simulations through it, and n and q equal backing up their values one by one in the
    order of back-ups (plus the similarity updates the trace records); the memo holds exactly the
    texts judged; no virtual loss is left."""
    for similarity in (False, True):
        s = search(tiny_lm, BIG.replace(parallel_simulations=4, similarity_update=similarity),
                   evaluator=lambda q, x: float(len(x) % 3 - 1))      # values that differ
        s.commit_step()
        before = snapshot(s.root)
        memo_before = dict(s.memo)
        first = s.sim_index
        s.simulate_step(12)
        recs = s.trace.simulations[first:]
        assert len(recs) == s.sim_index - first >= 4 and len({rec.value for rec in recs}) > 1
        stats = {k: [n, fn, q] for k, (_, n, fn, q) in before.items()}
        by_uid = {node.uid: key for key, (node, *_) in before.items()}
        for rec in recs:
            for uid in rec.path:
                if uid in by_uid:
                    st = stats[by_uid[uid]]
                    st[0] += 1
                    st[1] += 1
                    st[2] += (rec.value - st[2]) / st[0]
            for a_uid, b_uid, w in rec.similarity:
                if b_uid in by_uid:
                    st = stats[by_uid[b_uid]]
                    st[2] = (st[2] * st[0] + w * rec.value) / (st[0] + w)
                    st[0] += w
        for key, (node, n0, fn0, q0) in before.items():
            through = sum(node.uid in rec.path for rec in recs)
            assert node.fn == fn0 + through
            assert node.n == pytest.approx(stats[key][0], abs=1e-12)
            assert node.q == pytest.approx(stats[key][2], abs=1e-12)
            assert node.virtual == 0
        texts = {rec.evaluated_text: rec.value for rec in recs}
        assert set(s.memo) == set(memo_before) | set(texts)
        assert all(s.memo[t] == v for t, v in texts.items())
        assert s.root.fn == before[id(s.root)][2] + len(recs)
        check_invariants(s.root, similarity=similarity)


def sequential_step(s, budget):
    """The paper's inner loop written out phase by phase: one simulation after another."""
    for _ in range(budget):
        sim = Simulation()
        sim.path = s.select(sim)
        s.evaluate_and_expand(sim)
        s.evaluate(sim)
        s.backward(sim, s.embed(sim))
        if s.should_stop_early():
            return True
    return False


def test_k1_is_the_sequential_search(tiny_lm):
    """K = 1 set explicitly equals the sequential search written out phase by phase (same
    commits, trees and forward passes) and run through another code path (the one-by-one
    reference engine); K = 2 does not."""
    one = BIG.replace(parallel_simulations=1)
    a = search(tiny_lm, one).run()
    manual = search(tiny_lm, one)
    manual.simulate_step = lambda budget: sequential_step(manual, budget)
    m = manual.run()
    assert a.token_sets == m.token_sets and commit_trees(a) == commit_trees(m)
    assert (a.stats["forward_calls"], a.stats["tokens_computed"]) == (m.stats["forward_calls"],
                                                                      m.stats["tokens_computed"])
    ref = search(tiny_lm, one, engine="reference").run()
    assert a.token_sets == ref.token_sets and commit_trees(a) == commit_trees(ref)
    assert a.stats["simulations"] == ref.stats["simulations"]
    assert [r.round for r in a.trace.simulations] == [r.index for r in a.trace.simulations]
    two = search(tiny_lm, BIG.replace(parallel_simulations=2)).run()
    assert [r.round for r in two.trace.simulations] != [r.index for r in two.trace.simulations]
    assert commit_trees(two) != commit_trees(a)        # the comparison can tell K apart


def test_an_error_in_a_packed_pass_reaches_the_caller_and_leaves_no_walk_in_flight():
    """A forward pass that fails while K = 2 slots are in flight: its error goes to the slots whose
    calls it carried, and the search's caller gets that error (not another slot's unwinding);
    every walk is unwound (no virtual loss left on the tree, no leaf in flight)."""
    lm = tiny_model(seed=0)
    assert lm.route.packed                    # (its self-check runs passes of its own)
    forward, calls = lm.forward, []

    def failing(*a, **kw):
        calls.append(1)
        if len(calls) == 6:
            raise ValueError("the pass failed")
        return forward(*a, **kw)

    lm.forward = failing
    s = search(lm, BIG.replace(parallel_simulations=2))
    with pytest.raises(ValueError, match="the pass failed"):
        s.run()
    assert len(calls) == 6 and s.flow.slot is None
    assert not s.in_flight and all(n.virtual == 0 for n in s.root.walk())


def test_a_packed_pass_answers_each_request_as_its_own_pass(tiny_lm):
    """`packed_pass`: requests after pasts of different lengths, most without explicit positions
    (each token then sits right after its own past), one with positions and one asking for all
    its logits, packed into one forward pass: each gets the logits and KV of its own pass."""
    from raintools.batch import ForwardArgs
    from raintools.flow import packed_pass
    from raintools.models import kv_len

    lm = tiny_lm
    pasts = [lm.forward(torch.tensor([list(range(3, 3 + n))]))[1] for n in (2, 7, 5, 11)]
    reqs = [ForwardArgs(torch.tensor([[40, 41, 42]]), pasts[0]),
            ForwardArgs(torch.tensor([[50]]), pasts[1]),
            ForwardArgs(torch.tensor([[60, 61]]), pasts[2], all_logits=True),
            ForwardArgs(torch.tensor([[70, 71]]), pasts[3], position_ids=torch.tensor([[11, 12]]))]
    packed = packed_pass(lm.forward, reqs)
    for (ids, past, _, all_logits, pos, _), (logits, kv) in zip(reqs, packed):
        alone_logits, alone_kv = lm.forward(ids, past=past, all_logits=all_logits)
        assert logits.shape == alone_logits.shape
        assert torch.allclose(logits, alone_logits, atol=1e-5)      # measured: within 1e-7
        assert kv_len(kv) == kv_len(past) + ids.shape[1]
        for (k1, v1), (k2, v2) in zip(kv, alone_kv):
            assert torch.allclose(k1, k2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-5)
    # positions show in the keys (rotary embeddings; the tiny model's logits move by ~1e-3 only):
    # the same tokens one place later give keys that differ by ~0.25
    shifted = lm.forward(reqs[0][0], past=pasts[0], position_ids=torch.tensor([[3, 4, 5]]))[1]
    assert not torch.allclose(shifted[0][0], packed[0][1][0][0], atol=1e-2)


def test_packed_passes_of_the_slots_equal_one_by_one(tiny_lm):
    """The slots' forward requests packed into one pass build exactly the tree that the same
    schedule builds with each request its own pass: same candidates, visits, values and commits,
    in fewer passes. (Which walk starts when depends on the passes an engine takes, so with K > 1
    the reference engine runs its own schedule: its search keeps the invariants and replays.)"""
    for k in (2, 4):
        cfg = SMALL.replace(max_new_tokens=24, parallel_simulations=k)
        fast = search(tiny_lm, cfg).run()
        apart = search(tiny_lm, cfg)
        apart.flow.merge = False
        one_by_one = apart.run()
        assert fast.token_sets == one_by_one.token_sets
        assert fast.stats["simulations_per_step"] == one_by_one.stats["simulations_per_step"]
        assert commit_trees(fast) == commit_trees(one_by_one)
        assert fast.stats["forward_calls"] < one_by_one.stats["forward_calls"]
        ref = search(tiny_lm, cfg, engine="reference")
        r = ref.run()
        check_invariants(ref.root, similarity=cfg.similarity_update)
        assert_replay_matches_commits(r.trace)


def test_parallel_search_is_the_same_on_both_engines(tiny_lm):
    """The slots run on a logical clock that no engine changes (`raintools.flow`): the fast
    engine's packed passes and the reference engine's one-by-one passes build exactly the same
    tree at K = 4 and 8: same walks in the same order, candidates, visits, values, commits and
    counters; only the forward passes and tokens computed differ."""
    for k in (4, 8):
        cfg = BIG.replace(parallel_simulations=k, max_commits=2)
        fast = search(tiny_lm, cfg).run()
        ref = search(tiny_lm, cfg, engine="reference").run()
        assert fast.token_sets == ref.token_sets
        assert commit_trees(fast) == commit_trees(ref)
        walks = [s.round for s in fast.trace.simulations]
        assert walks == [s.round for s in ref.trace.simulations] and walks != sorted(walks)   # in flight together
        assert [s.evaluated_text for s in fast.trace.simulations] == [s.evaluated_text for s in ref.trace.simulations]
        engine_bound = {"engine", "engine_route", "forward_calls", "tokens_computed", "wall_time_s"}
        same = {key: v for key, v in fast.stats.items() if key not in engine_bound and not key.startswith("time_")}
        assert same == {key: ref.stats[key] for key in same}
        assert fast.stats["simulations"] >= 30 and fast.stats["forward_calls"] < ref.stats["forward_calls"]


def test_cached_paths_of_a_parallel_search_match_a_full_forward(tiny_lm):
    s = search(tiny_lm, BIG.replace(parallel_simulations=4))
    s.commit_step()
    assert not s.finished
    s.simulate_step(12)
    checked = 0
    for node in s.root.walk():
        if node.logits is None or any(n.kv is None for n in node.path_from_root()):
            continue
        ids = s.engine.prefix_ids + node.response_tokens()
        assert torch.allclose(node.logits, tiny_lm.full_logits(ids), atol=1e-4)
        _, full_kv = tiny_lm.forward(torch.tensor([ids]))
        for (k, v), (fk, fv) in zip(s.engine.path_kv(node), full_kv):
            assert torch.allclose(k, fk, atol=1e-4) and torch.allclose(v, fv, atol=1e-4)
        checked += 1
    assert checked >= 8


def test_slots_take_fewer_sequential_passes_per_simulation(tiny_lm):
    """Passes per simulation fall with K (walks into a leaf in flight wait, and no more walks are
    in flight than half of the budget left, so the fall is below 1/K; a budget of 48 simulations
    a step leaves room for 8 in flight)."""
    per_sim = {}
    for k in (1, 2, 4, 8):
        r = search(tiny_lm, BIG.replace(parallel_simulations=k, max_simulations=48)).run()
        per_sim[k] = r.stats["forward_calls"] / r.stats["simulations"]
    assert per_sim[8] < per_sim[4] < per_sim[2] < per_sim[1]
    assert per_sim[4] < 0.8 * per_sim[1]


# ------------------------------------------------------------------ judge, early stop, batch, trace

class StopLog(Observer):
    """Per outer step, the events in order: "start" (a walk), True/False (a back-up, and whether
    the early-stop test passes right after it)."""

    def __init__(self):
        self.steps = [[]]

    def selected(self, search, sim):
        self.steps[-1].append("start")

    def backed_up(self, search, sim, similarity):
        self.steps[-1].append(search.should_stop_early())

    def step_done(self, search, first, early):
        self.steps[-1].append(("done", early))
        self.steps.append([])


def test_early_stop_is_checked_after_each_back_up(tiny_lm):
    """The early-stop test is checked after every back-up: no walk starts after a back-up at which
    it passes (K = 1: the step ends there; K = 4: the walks in flight finish, and when their
    back-ups make the test fail again, the step goes on); a step stopped early ends on a back-up
    at which it passes."""
    for k in (1, 4):
        cfg = SMALL.replace(max_simulations=30, extra_simulations=5, min_visits=3, parallel_simulations=k)
        log = StopLog()
        r = search(tiny_lm, cfg, evaluator=lambda q, x: float(len(x) % 4 > 0), observers=[log]).run()
        stopped = 0
        for ev in log.steps[:-1]:
            backups = [e for e in ev if isinstance(e, bool)]
            assert ev[-1] == ("done", backups[-1]) and len(backups) == ev.count("start")
            stopped += backups[-1]
            for i, e in enumerate(ev[:-1]):
                if e is True:
                    assert ev[i + 1] != "start"
                    if k == 1:
                        assert ev[i + 1] == ("done", True)
        assert stopped == r.stats["early_stops"] >= 2
        assert len({len(ev) for ev in log.steps[:-1]}) > 1      # steps stopped after different numbers
    cfg = SMALL.replace(max_simulations=30, extra_simulations=5, min_visits=3, parallel_simulations=4)
    r = search(tiny_lm, cfg, evaluator=lambda q, x: 1.0).run()
    assert r.stats["early_stops"] == r.stats["commits"]
    assert r.stats["simulations_per_step"][0] < 30
    bad = search(tiny_lm, cfg, evaluator=lambda q, x: -1.0).run()
    assert bad.stats["early_stops"] == 0
    assert bad.stats["simulations_per_step"][0] == 30        # the whole budget, not more


def test_a_step_goes_on_with_every_slot_when_the_early_stop_test_fails_again(tiny_lm):
    """The early-stop test passes at a back-up while other walks are in flight (forced here at the
    5th back-up) and fails again at the next: the step goes on with all K slots, not only with
    those whose walks were in flight (a slot that saw the test pass waits for them instead of
    leaving the step), and spends its whole budget; no walk starts while the test passes."""
    k, log = 4, FlowLog()
    s = search(tiny_lm, BIG.replace(parallel_simulations=k), observers=[log])
    tests = []

    def passes_once():
        tests.append(s.sim_index)
        return len(tests) == 5
    s.should_stop_early = passes_once
    assert s.simulate_step(40) is False and s.sim_index == 40
    ends = [i for i, e in enumerate(log.events) if e[0] == "end"]
    assert log.events[ends[4]][3] >= 1                   # walks in flight when the test passed
    assert all(e[0] == "end" for e in log.events[ends[4]:ends[5]])
    assert max(e[3] for e in log.events[ends[5]:] if e[0] == "start") == k


def test_an_error_in_one_slot_ends_the_search_with_that_error(tiny_lm):
    """A judge that fails in the middle of a step with 4 slots in flight: the search raises that
    error (not a hang, not another slot's unwinding), and no slot's thread is left behind."""
    import threading

    calls = []

    def judge(q, x):
        calls.append(x)
        if len(calls) == 7:
            raise ValueError("the judge broke")
        return 0.5
    with pytest.raises(ValueError, match="the judge broke"):
        search(tiny_lm, BIG.replace(parallel_simulations=4), evaluator=judge).run()
    assert len(calls) == 7
    assert not [t for t in threading.enumerate() if t.name.startswith("rain-search")]   # the slots' pool


@pytest.mark.timeout(120)
def test_an_interrupt_while_the_slots_run_ends_the_search(tiny_lm):
    """Ctrl-C (SIGINT to the calling thread, which schedules the slots) while a slot judges: the
    search raises KeyboardInterrupt instead of hanging, no slot's thread is left behind and no
    virtual loss stays on."""
    import signal
    import threading
    import time

    if not hasattr(signal, "pthread_kill"):
        pytest.skip("no signal.pthread_kill on this platform")
    main, calls = threading.main_thread().ident, []

    def judge(q, x):
        calls.append(x)
        if len(calls) == 7:
            signal.pthread_kill(main, signal.SIGINT)
            time.sleep(0.2)       # the calling thread takes it while it waits for this slot
        return 0.5
    assert threading.get_ident() == main
    s = search(tiny_lm, BIG.replace(parallel_simulations=4), evaluator=judge)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)   # a background job ignores it
    try:
        with pytest.raises(KeyboardInterrupt):
            s.run()
    finally:
        signal.signal(signal.SIGINT, handler)
    assert not [t for t in threading.enumerate() if t.name.startswith("rain-search")]
    assert all(n.virtual == 0 for n in s.root.walk()) and not s.in_flight


def test_a_request_failing_on_its_own_thread_unwinds_its_slot_on_its_turn(tiny_lm, monkeypatch):
    """A concurrent engine (`Engine.concurrent`: each slot's requests on its own thread, as on a
    server) whose 6th expansion fails, at K = 4: the failing slot takes its turn before its
    unwinding takes its virtual loss off the tree, so no other slot touches the tree meanwhile.
    Its clean-up is made slow to show it: it reads its path's virtual losses and, off the turn,
    waits until another slot has changed them (that slot then waits for the write) before it
    writes them back less one, losing the other slot's change. After the error no virtual loss is
    left, nothing is in flight, and the next step commits."""
    import itertools
    import threading

    import raintools.search as search_mod
    from raintools.engines import CachedEngine

    calls, failed, add = itertools.count(1), [], search_mod.add_virtual_loss
    reading, touched, written = threading.Event(), threading.Event(), threading.Event()

    class Server(CachedEngine):
        concurrent = True

        def expand(self, requests):
            if next(calls) == 6:
                failed.append(threading.get_ident())
                raise ValueError("the server broke")
            return super().expand(requests)

    def slow_clean_up(path, d=1):
        if d < 0 and threading.get_ident() in failed:        # the failing slot's clean-up
            failed.remove(threading.get_ident())
            before = [n.virtual for n in path]
            if s.flow._turn != s.flow.slot:
                reading.set()
                touched.wait(10)
            for n, v in zip(path, before):
                n.virtual = v + d
            written.set()
            return
        after_read = reading.is_set() and not written.is_set()
        add(path, d)
        if after_read:
            touched.set()
            written.wait(10)
    monkeypatch.setattr(search_mod, "add_virtual_loss", slow_clean_up)
    cfg = BIG.replace(parallel_simulations=4)
    s = search(tiny_lm, cfg, engine=Server(tiny_lm, cfg.top_k, cfg.temperature))
    with pytest.raises(ValueError, match="the server broke"):
        s.run()
    assert not failed and written.is_set() and not s.in_flight
    assert [n.virtual for n in s.root.walk() if n.virtual] == []
    assert s.commit_step() is not None and s.response and not s.in_flight      # it goes on
    assert [n.virtual for n in s.root.walk() if n.virtual] == [] and next(calls) > 7


@pytest.mark.parametrize("k", [1, 4])
def test_a_search_goes_on_after_an_error_in_a_step(tiny_lm, k):
    """A judge that fails once: the search raises that error; run again, it goes on from where it
    stood (as the sequential search does), not with the old error raised again."""
    calls = []

    def judge(q, x):
        calls.append(x)
        if len(calls) == 7:
            raise ValueError("the judge broke once")
        return float(len(x) % 3 - 1)
    s = search(tiny_lm, BIG.replace(parallel_simulations=k), evaluator=judge)
    with pytest.raises(ValueError, match="broke once"):
        s.run()
    r = s.run()
    assert s.finished and r.stats["commits"] == 3 and len(calls) > 7
    assert all(n.virtual == 0 for n in s.root.walk()) and not s.in_flight


def test_parallel_search_in_a_batch_equals_one_by_one():
    lm = tiny_model(seed=1)
    prompts = ["hello", "how are you today?", "x"]
    cfg = SMALL.replace(parallel_simulations=4)
    ev = SelfEvaluator(lm, "harm")
    alone = [RainSearch(lm, p, cfg, evaluator=ev.fork(), embedder=letter_embedder).run() for p in prompts]
    batch = rain_generate_batch(lm, prompts, cfg, evaluator=SelfEvaluator(lm, "harm"),
                                embedder=letter_embedder)
    for a, b in zip(alone, batch):
        assert a.token_sets == b.token_sets
        assert commit_trees(a) == commit_trees(b)
        assert a.stats["forward_calls"] == b.stats["forward_calls"]


def test_parallel_trace_replays_and_explores(tiny_lm):
    r = search(tiny_lm, BIG.replace(parallel_simulations=4)).run()
    t = Trace.from_json(r.trace.to_json())
    assert t.to_dict() == r.trace.to_dict()
    walks = [s.round for s in t.simulations]
    assert sorted(walks) == list(range(len(walks))) and walks != sorted(walks)   # out of order
    assert_replay_matches_commits(t)
    pytest.importorskip("ipywidgets")
    from raintools.views.widgets import TreeExplorer

    ex = TreeExplorer(t)
    ax = ex.show(len(t.simulations) - 1)
    assert ex.drawn_nodes > 1
    assert f"walk {t.simulations[-1].round} in start order" in ax.get_title()


# ------------------------------------------------------------------ the GPU check, on CPU

def test_gpu_check_runs_on_cpu_with_a_tiny_shape(capsys):
    """bench/gpu_check.py (sized for one H100/H200) keeps working: on CPU it builds the tiny
    shape, its cached logits equal a full forward pass, and K = 4 takes fewer sequential passes
    per simulation than K = 1."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rc = mod.main(["--device", "cpu", "--simulations", "8", "--commits", "1", "--ks", "1,4",
                   "--batch-sizes", "1,3", "--batch-simulations", "3", "--equivalence-steps", "1"])
    out = capsys.readouterr().out
    assert rc == 0 and "tiny shape" in out
    summary = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split()[1:])
    assert summary["equivalence"] == "OK"
    assert float(summary["passes_per_sim_k4"]) < float(summary["passes_per_sim_k1"])
    assert float(summary["batch_ratio_max"]) > 0


@pytest.mark.parametrize("how", ["k4", "batch"])
def test_a_judge_on_another_model_judges_with_its_own_weights(how):
    """A self-evaluator built on a judge model other than the search's must run on the judge's
    weights: the values backed up equal that judge's own evaluation of the same texts (the search
    model's forward is only borrowed when the evaluator is the search model's own)."""
    policy = tiny_model(seed=0, chat=True, initializer_range=0.5)
    judge_lm = tiny_model(seed=7, chat=True, initializer_range=0.5)
    judge = SelfEvaluator(judge_lm, mode="soft")
    alone = SelfEvaluator(judge_lm, mode="soft")          # a separate copy: no shared caches
    cfg = SMALL.replace(parallel_simulations=4 if how == "k4" else 1, max_new_tokens=6)
    if how == "k4":
        traces = [RainSearch(policy, "Hi", cfg, evaluator=judge, embedder=letter_embedder).run().trace]
        prompts = ["Hi"]
    else:
        prompts = ["Hi", "Yo"]
        traces = [r.trace for r in rain_generate_batch(policy, prompts, cfg, evaluator=judge,
                                                        embedder=letter_embedder)]
    checked = 0
    for prompt, trace in zip(prompts, traces):
        for sim in trace.simulations:
            if sim.memo_hit or sim.evaluated_text is None:
                continue
            assert sim.value == pytest.approx(alone(prompt, sim.evaluated_text), abs=1e-6)
            checked += 1
    assert checked >= 3
