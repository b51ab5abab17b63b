"""Instrumentation of a search as observers: the stats counters, the phase timers and the trace
subscribe to the events `RainSearch` emits (the methods of `Observer`), so the search itself holds
only the paper's phases.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from .trace import CommitRecord, NodeRecord, SimulationRecord, Trace

PHASES = ("select", "add", "ensure", "judge", "expand", "embed", "commit")
"""Phases timed. Clause completions have no phase of their own: the engine grows them in the same
forward passes as the rollouts of their expansion (`expand`), so their time cannot be told apart."""


class Observer:
    """The search's events, each called with the search first; no-op handlers that subclasses
    override as they need."""

    def started(self, search, prompt_ids): pass           # the root exists
    def nodes_created(self, search, sim, parent, nodes, rolled_out, added): pass
    # ^ children of `parent`, priors set, from an expansion or (`added`) a node addition;
    #   `rolled_out`: a rollout computed their tokens; `sim`: the simulation they belong to
    def dropped(self, search, sim, into): pass
    # ^ the walk of `sim` reached the leaf that `into` is expanding: its work goes to `into`
    def selected(self, search, sim): pass                 # the walk of `sim` is over
    def ensured(self, search, node): pass                 # `node` got its caches
    def completed(self, search, request): pass            # a clause completion (`CompletionRequest`) is done
    def judged(self, search, sim): pass                   # `sim.value` from the evaluator or the memo
    def embedded(self, search, texts): pass               # one embedder call
    def backed_up(self, search, sim, similarity): pass    # (node, sibling, weight) updates made too
    def step_done(self, search, first, early): pass       # an outer step's simulations are over
    def committing(self, search, child, first, early): pass   # before the rewind
    def committed(self, search, child): pass              # after it
    def phase_started(self, search, name): pass           # the search enters a phase (`PHASES`)
    def phase_ended(self, search, name): pass             # ... and leaves it


class Stats(Observer):
    """The counters of a result's stats. `tokens_needed` counts what must be computed: each tree
    node's tokens once, each completion's fed tokens, the prompt (see bench/README). Forward
    passes and wall time count from its creation."""

    def __init__(self, engine):
        self.counts = dict(simulations=0, evaluations=0, evaluator_calls=0, memo_hits=0,
                           nodes_created=0, nodes_added=0, tokens_needed=0, completion_tokens=0,
                           embed_calls=0, embedded_texts=0, early_stops=0, max_live_nodes=0)
        self.sims_per_step: list[int] = []
        self._counted: set[int] = {0}
        self.judge_tokens = 0        # tokens needed by the judge calls of a judge others may share
        self._judging = threading.Lock()
        self._forward0, self._t0 = engine.stats.snapshot(), time.perf_counter()

    @contextmanager
    def judging(self, search):
        """Count a judge call's forward passes and tokens needed as `search`'s. The judge's own fork
        (`own_judge`: K > 1, its passes through the flow) counts them itself; a judge other searches
        may share (the model's self-evaluator at K = 1, one the caller passes) is measured around the
        call, one call at a time."""
        if search.own_judge:
            yield
            return
        stats = getattr(search.evaluator, "stats", None)
        with self._judging, search.flow.counting():
            before = getattr(stats, "tokens_needed", 0)
            try:
                yield
            finally:
                self.judge_tokens += getattr(stats, "tokens_needed", 0) - before

    def summary(self, search) -> dict:
        """A result's stats: the counters, this search's forward passes and tokens, the judge's
        tokens needed, the phase times."""
        name, now = search.engine.name, search.engine.stats.since(self._forward0)
        judge = getattr(search.evaluator, "stats", None)        # a server's judge counts none
        judged = self.judge_tokens + (getattr(judge, "tokens_needed", 0) if search.own_judge else 0)
        route = ("reference" if name == "reference" else "server" if name.startswith("vllm")
                 else search.lm.route.kind)
        return dict(self.counts, engine=name, engine_route=route,
                    committed_tokens=len(search.response), commits=len(search.token_sets),
                    simulations_per_step=list(self.sims_per_step), forward_calls=now.calls,
                    tokens_computed=now.tokens, tokens_needed=self.counts["tokens_needed"] + judged,
                    wall_time_s=time.perf_counter() - self._t0, stop_reason=search.stop_reason,
                    prompt_tokens=len(search.engine.prefix_ids) - len(search.response),
                    **{f"time_{k}_s": v for k, v in search.timer.timings.items()})

    def _needed(self, nodes):
        for node in nodes:
            if node.uid not in self._counted:
                self._counted.add(node.uid)
                self.counts["tokens_needed"] += len(node.tokens)

    def started(self, search, prompt_ids):
        self.counts["tokens_needed"] += len(prompt_ids)

    def nodes_created(self, search, sim, parent, nodes, rolled_out, added):
        self.counts["nodes_created"] += len(nodes)
        self.counts["nodes_added"] += len(nodes) if added else 0
        if rolled_out:        # a rollout had to compute these tokens to propose them
            self._needed(nodes)

    def ensured(self, search, node):
        self._needed([node])

    def completed(self, search, request):
        self.counts["tokens_needed"] += request.fed
        self.counts["completion_tokens"] += len(request.out)

    def judged(self, search, sim):
        self.counts["evaluations"] += 1
        self.counts["memo_hits" if sim.memo_hit else "evaluator_calls"] += 1

    def embedded(self, search, texts):
        self.counts["embed_calls"] += 1
        self.counts["embedded_texts"] += len(texts)

    def backed_up(self, search, sim, similarity):
        self.counts["simulations"] += 1

    def step_done(self, search, first, early):
        self.counts["early_stops"] += int(early)
        self.sims_per_step.append(search.sim_index - first)
        self.counts["max_live_nodes"] = max(self.counts["max_live_nodes"],
                                            sum(1 for _ in search.root.walk()))


class PhaseTimer(Observer):
    """Wall seconds per phase (perf_counter), exclusive: a phase inside another (node addition
    inside selection) pauses the outer one. On CUDA kernels are asynchronous, so a phase's time
    can show up in the next phase that waits for a result. With K > 1 each slot times its own
    phases, its waits for the other slots' passes included, so the phases of the simulations in
    flight together overlap and their sum exceeds the wall time."""

    def __init__(self):
        self.timings = dict.fromkeys(PHASES, 0.0)
        self._stacks: dict[int, list[list]] = {}     # per thread (the slots of K > 1)

    @property
    def _stack(self) -> list[list]:
        return self._stacks.setdefault(threading.get_ident(), [])

    def phase_started(self, search, name):
        now = time.perf_counter()
        if self._stack:
            outer = self._stack[-1]
            self.timings[outer[0]] += now - outer[1]
        self._stack.append([name, now])

    def phase_ended(self, search, name):
        now = time.perf_counter()
        _, t0 = self._stack.pop()
        self.timings[name] += now - t0
        if self._stack:
            self._stack[-1][1] = now


class TraceRecorder(Observer):
    """Writes the search into a `Trace` (`raintools.trace` says what it holds); a simulation's new
    nodes include those of a walk dropped into its leaf."""

    def __init__(self, trace: Trace):
        self.trace = trace
        self._new: dict[int, list] = {}        # id(sim) -> [new nodes, added uids, parents]
        self._carry: list = []                 # the new root after a commit: priors re-mixed

    def _record(self, search, node) -> NodeRecord:
        return NodeRecord(uid=node.uid, parent=node.parent.uid if node.parent else None,
                          tokens=list(node.tokens), text=search.lm.decode(node.tokens),
                          step=node.step, p=node.p, n=node.n, fn=node.fn, q=node.q)

    def _bucket(self, sim) -> list:
        return self._new.setdefault(id(sim), [[], [], []])

    def started(self, search, prompt_ids):
        self.trace.root = self._record(search, search.root)

    def nodes_created(self, search, sim, parent, nodes, rolled_out, added):
        new, uids, parents = self._bucket(sim)
        new.extend(self._record(search, n) for n in nodes)
        if added:
            uids.extend(n.uid for n in nodes)
        parents.append(parent)

    def dropped(self, search, sim, into):
        extra = self._new.pop(id(sim), None)
        if extra is not None:
            for mine, more in zip(self._bucket(into), extra):
                mine.extend(more)

    def selected(self, search, sim):
        self._bucket(sim)[2][:0] = self._carry
        self._carry = []

    def backed_up(self, search, sim, similarity):
        new, added, parents = self._new.pop(id(sim), ([], [], []))
        touched = {n.uid: n for n in sim.path} | {sib.uid: sib for _, sib, _ in similarity}
        for other in self._new.values():    # nodes of a simulation still in flight that it reached
            if any(r.uid in touched for r in other[0]):
                new += other[0]
                other[0].clear()
        for parent in parents:      # priors renormalised (none below a dropped root)
            if parent.parent is not None or parent is search.root:
                touched.update((ch.uid, ch) for ch in parent.children)
        for rec in new:
            rec.p = touched[rec.uid].p if rec.uid in touched else rec.p
        self.trace.simulations.append(SimulationRecord(
            index=search.sim_index, outer_step=search.outer_step, root=search.root.uid,
            path=[n.uid for n in sim.path], leaf=sim.leaf.uid,
            completion=search.lm.decode(sim.completion), evaluated_text=sim.text, value=sim.value,
            memo_hit=sim.memo_hit, expanded=sim.expanded, new_nodes=list(new),
            updates={u: [n.n, n.fn, n.q, n.p] for u, n in touched.items()},
            similarity=[[a.uid, b.uid, w] for a, b, w in similarity], added=list(added),
            round=sim.walk))

    def committing(self, search, child, first, early):
        self.trace.commits.append(CommitRecord(
            outer_step=search.outer_step, simulations=search.sim_index - first, first_simulation=first,
            root=search.root.uid, chosen=child.uid, tokens=list(child.tokens),
            text=search.lm.decode(child.tokens), early_stop=early,
            tree=[self._record(search, n) for n in search.root.walk()]))

    def committed(self, search, child):
        self._carry = [search.root]
