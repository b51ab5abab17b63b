"""The RAIN loops: the inner loop (forward, evaluate, backward) and the outer loop (rewind, commit).

    result = rain_generate(lm, "How do I ...?", config=RainConfig.cpu_demo())
    print(result.text, result.stats)

`RainSearch` exposes each phase (`select`, `expand`, `evaluate`, `backward`, `simulate`,
`commit_step`) so the notebooks can step through a search one phase at a time. `simulate` runs
`evaluate` and `expand` through `evaluate_and_expand`, which lets the fast engine run the clause
completion inside the expansion's rollout batch (same result, fewer forward passes).

    results = rain_generate_batch(lm, prompts, config)     # many prompts, forward passes batched

`RainConfig.parallel_simulations = K > 1` runs the inner loop in rounds (`simulate_round`): up
to K leaves selected one after another with a virtual loss on each path in flight (a round ends
early when walks run into leaves still in flight: the search wants those results first), their
node caches, expansion rollouts and clause completions computed together in shared packed passes
(`raintools.parallel`), their texts judged in one batched pass and embedded in one call, then
backed up one by one in selection order; the early-stop test runs after each round, and no round
takes more than half of what is left of a step's budget (`round_size`). K = 1 is the paper's
sequential search, unchanged.

Each result's stats count forward passes and tokens (`tokens_computed`, and `tokens_needed`: each
tree node's tokens, each completion's fed tokens, each judged response's new tokens and question
endings, the prompt and the judging header once) and the wall time of each phase (`time_*_s`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from .config import RainConfig
from .errors import ConfigError, PromptError
from .evaluate import Evaluator, self_evaluator
from .models import LanguageModel
from .propose import ENGINES, Candidate, Completion, resolve_engine, top_candidates
from .sampling import ADD, COMMIT, COMPLETE, EXPAND, keyed_rng
from .trace import CommitRecord, NodeRecord, SimulationRecord, Trace
from .tree import (Bounds, Node, add_virtual_loss, backup, most_visited,
                   needs_node_addition, reroot, sample_by_visits, select_child, set_priors,
                   similarity_update, update_embedding)


ROUND_COLLISIONS = 2
"""A parallel round ends at this many walks into a non-terminal leaf already in flight (each
such walk is dropped; its virtual loss stays on for the round, so the next walk goes elsewhere).
1 ends a round at the first: the closest to the sequential order, more rounds. Measured with
notebook 11's study (simulated judges, 40 sum questions, runs at p = 1 and 0.8, seeds 0-1, outside
the notebook): 1 and 2 gave the same share of good answers within noise, 2 about 7% fewer
sequential passes; the first rules (leaves in flight skipped, rounds always full) lost 0.06-0.16
in the notebook itself."""

PHASES = ("select", "add", "ensure", "complete", "judge", "expand", "embed", "commit")


def cut_at_last_stop(text: str) -> str:
    """`text` up to and including its last full stop; unchanged when it has none (the judged
    answer of the public code's TruthfulQA script)."""
    i = text.rfind(".")
    return text[: i + 1] if i >= 0 else text


class _Timer:
    __slots__ = ("timings", "key", "t0")

    def __init__(self, timings: dict, key: str):
        self.timings, self.key = timings, key

    def __enter__(self):
        self.t0 = time.perf_counter()

    def __exit__(self, *exc):
        self.timings[self.key] += time.perf_counter() - self.t0


@dataclass
class RainResult:
    text: str
    prompt: str
    method: str = "rain"
    tokens: list[int] = field(default_factory=list)
    token_sets: list[list[int]] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    trace: Trace | None = None
    config: dict = field(default_factory=dict)

    def to_dict(self, trace: bool = False) -> dict:
        d = {"text": self.text, "prompt": self.prompt, "method": self.method, "tokens": self.tokens,
             "token_sets": self.token_sets, "stats": self.stats, "config": self.config}
        if trace and self.trace is not None:
            d["trace"] = self.trace.to_dict()
        return d


@dataclass
class SimulationOutcome:
    path: list[Node]
    leaf: Node
    completion: list[int]
    text: str
    value: float
    memo_hit: bool
    expanded: bool


class RainSearch:
    """One RAIN search for one prompt. `run()` does everything; the phase methods are public."""

    def __init__(self, lm: LanguageModel, prompt: str, config: RainConfig | None = None,
                 evaluator: Evaluator | None = None, embedder: Callable | None = None,
                 engine: str = "auto", prompt_ids: list[int] | None = None):
        self.cfg = (config or RainConfig()).validate()
        self.lm = lm
        self.prompt = prompt
        max_new = self.cfg.max_new_tokens or 1
        if prompt_ids is None:
            prompt_ids = lm.prompt_ids(prompt, max_new_tokens=max_new)
        else:     # already formatted (e.g. by model.generate): `prompt` is the query the judge sees
            prompt_ids = checked_prompt_ids(lm, prompt, prompt_ids, max_new)
        if len(prompt_ids) >= self.cfg.max_length:
            raise PromptError(
                f"The prompt is {len(prompt_ids)} tokens, not below max_length={self.cfg.max_length}: "
                f"shorten it or raise RainConfig.max_length.")
        engine = resolve_engine(lm, engine)
        self.engine_name = engine
        self.engine = ENGINES[engine](lm, top_k=self.cfg.top_k, temperature=self.cfg.temperature)
        self.engine.complete_until = self.cfg.complete_until
        if evaluator is None:
            evaluator = self_evaluator(lm, self.cfg.judge_template, self.cfg.eval_mode)
            if engine == "reference":
                from .evaluate import SelfEvaluator
                evaluator = SelfEvaluator(lm, self.cfg.judge_template, self.cfg.eval_mode,
                                          cached=False)
        self.evaluator = evaluator
        self.needs_embeddings = self.cfg.similarity_update or self.cfg.node_addition
        if embedder is None and self.needs_embeddings:
            from .embed import load_embedder
            embedder = load_embedder()
        self.embedder = embedder
        self.bounds = Bounds()
        self.memo: dict[str, float] = {}
        self._next_uid = 1
        self._counted: set[int] = {0}
        self._add_counter = 0
        self.sim_index = 0
        self.round_index = 0
        self.outer_step = 0
        self.response: list[int] = []
        self.token_sets: list[list[int]] = []
        self.finished = False
        self.stop_reason = ""
        self.counts = dict(simulations=0, rounds=0, evaluations=0, evaluator_calls=0, memo_hits=0,
                           nodes_created=0, nodes_added=0, tokens_needed=0, completion_tokens=0,
                           embed_calls=0, embedded_texts=0, early_stops=0, max_live_nodes=0)
        self.sims_per_step: list[int] = []
        # wall seconds per phase (perf_counter; on CUDA kernels are asynchronous, so a phase's time
        # can show up in the next phase that waits for a result)
        self.timings = dict.fromkeys(PHASES, 0.0)
        self.trace = Trace(prompt=prompt, config=self.cfg.to_dict()) if self.cfg.record_trace else None
        # inside a batch run (raintools.batch) the model's counters are shared by every search:
        # count this search's own requests instead
        from .batch import ForwardBatcher
        self._own_stats = ForwardBatcher.worker_stats()
        self._stats0 = (self._own_stats or lm.stats).snapshot()
        self._eval_needed0 = getattr(getattr(evaluator, "stats", None), "tokens_needed", 0)
        self._t0 = time.perf_counter()
        self.root = self.engine.start(prompt_ids)
        self.counts["tokens_needed"] += len(prompt_ids)
        if self.trace is not None:
            self.trace.root = self._record(self.root)
        self._pending_new: list[NodeRecord] = []
        self._pending_added: list[int] = []
        self._pending_parents: list[Node] = []
        self._carry_parents: list[Node] = []

    # ------------------------------------------------------------------ helpers
    @property
    def prefix_len(self) -> int:
        return len(self.engine.prefix_ids)

    def _new_node(self, parent: Node, cand: Candidate, rolled_out: bool) -> Node:
        node = Node(tokens=tuple(cand.tokens), parent=parent, step=parent.step + 1, uid=self._next_uid,
                    raw_p=cand.raw_p, kv=cand.kv, logits=cand.logits)
        self._next_uid += 1
        node.terminal = self._is_terminal(node)
        parent.children.append(node)
        self.counts["nodes_created"] += 1
        if rolled_out:   # a rollout had to compute these tokens to propose them
            self._count_needed(node)
        return node

    def _count_needed(self, node: Node) -> None:
        """Tokens that must be computed: each tree node's tokens once (see bench/README)."""
        if node.uid not in self._counted:
            self._counted.add(node.uid)
            self.counts["tokens_needed"] += len(node.tokens)

    def _record(self, node: Node) -> NodeRecord:
        return NodeRecord(uid=node.uid, parent=node.parent.uid if node.parent else None,
                          tokens=list(node.tokens), text=self.lm.decode(node.tokens), step=node.step,
                          p=node.p, n=node.n, fn=node.fn, q=node.q)

    def remaining(self, node: Node) -> int:
        """How many more tokens a response may grow below `node`."""
        used = len(node.response_tokens())
        left = self.cfg.max_length - self.prefix_len - used
        if self.cfg.max_new_tokens is not None:
            left = min(left, self.cfg.max_new_tokens - len(self.response) - used)
        return left

    def level_length(self, node: Node) -> int:
        """Token-set length of the candidates below `node`: the configured length for its depth,
        capped by the remaining budget (at least 1). Never read from a child: the greedy child
        stops early at an end-of-turn token."""
        return max(1, min(self.cfg.token_set_length(node.step), self.remaining(node)))

    def _is_terminal(self, node: Node) -> bool:
        if any(self.lm.is_stop_token(t) for t in node.tokens):
            return True
        if self.remaining(node) <= 0:
            return True
        return self.lm.has_user_turn(self.response + node.response_tokens())

    def response_text(self, tokens: list[int]) -> str:
        return self.lm.response_text(tokens)

    def _ensure(self, node: Node) -> None:
        if node.logits is None:
            with _Timer(self.timings, "ensure"):
                self.engine.ensure(node)
            self._count_needed(node)

    # ------------------------------------------------------------------ phases
    def select(self) -> list[Node]:
        """Forward: walk down from the root by the selection score (with the virtual loss of
        the paths in flight, in a parallel round), adding nodes where the dynamic-node-addition
        test fires. Returns the path, root first."""
        t0 = time.perf_counter()
        t_add = self.timings["add"]
        node, path = self.root, [self.root]
        while node.children:
            if self.cfg.node_addition and needs_node_addition(
                    node, self.cfg.max_children, self.cfg.add_variance_factor, self.level_length(node)):
                self.add_nodes(node)
            node = select_child(node, self.bounds, self.cfg.c)
            path.append(node)
        self.timings["select"] += time.perf_counter() - t0 - (self.timings["add"] - t_add)
        return path

    def add_nodes(self, node: Node) -> list[Node]:
        """Dynamic node addition: the next-ranked token (1-token level) or one greedy rollout and
        the first sampled one that differs from it, out of `add_attempts` (longer levels), each of
        the level's length (`level_length`); new candidates only, never more than
        `max_children` children; priors renormalised."""
        room = self.cfg.max_children - len(node.children)
        if room <= 0:
            return []
        self._add_counter += 1
        self._ensure(node)
        with _Timer(self.timings, "add"):
            if self.cfg.token_set_length(node.step) == 1:
                length = 1
                cands = top_candidates(node.logits, len(node.children) + 1, self.cfg.token_temperature)
            else:
                length = self.level_length(node)
                u = keyed_rng(self.cfg.seed, ADD, node.uid, self._add_counter).random(
                    (self.cfg.add_attempts, length))
                cands = self.engine.rollouts(node, length, u, keep=2)
        added = []
        for cand in cands:
            if len(added) < room and node.child_with_tokens(cand.tokens) is None:
                added.append(self._new_node(node, cand, rolled_out=length > 1))
        if added:
            set_priors(node, self.cfg.root_prior_mix)
            self.counts["nodes_added"] += len(added)
            if self.trace is not None:
                self._pending_new.extend(self._record(a) for a in added)
                self._pending_added.extend(a.uid for a in added)
                self._pending_parents.append(node)
        return added

    def expand(self, leaf: Node, completion: Completion | None = None) -> list[Node]:
        """Expansion into candidate token sets (top-k tokens at the 1-token level; greedy + sampled
        rollouts at longer levels), with priors (root children mixed with uniform).

        `completion`: a clause completion of the same leaf to run inside the rollout batch
        (engines with `fuses_completion`; see `simulate`)."""
        self._ensure(leaf)
        cfg = self.cfg
        length = cfg.token_set_length(leaf.step)
        with _Timer(self.timings, "expand"):
            if length == 1:
                cands = top_candidates(leaf.logits, cfg.num_candidates, cfg.token_temperature)
            else:
                length = self.level_length(leaf)
                u = keyed_rng(cfg.seed, EXPAND, leaf.uid).random((cfg.sample_attempts, length))
                if completion is not None:
                    cands = self.engine.rollouts(leaf, length, u, keep=cfg.num_candidates,
                                                 completion=completion)
                else:
                    cands = self.engine.rollouts(leaf, length, u, keep=cfg.num_candidates)
        children = [self._new_node(leaf, c, rolled_out=length > 1) for c in cands]
        set_priors(leaf, cfg.root_prior_mix)
        if self.trace is not None:
            self._pending_new.extend(self._record(ch) for ch in children)
            self._pending_parents.append(leaf)
        return children

    def _completion_budget(self, leaf: Node) -> int:
        if not self.cfg.complete_clause or leaf.terminal:
            return 0
        budget = self.remaining(leaf)
        if self.cfg.clause_max_tokens is not None:
            budget = min(budget, self.cfg.clause_max_tokens)
        return max(budget, 0)

    def _completion_rng(self, leaf: Node) -> np.random.Generator:
        return keyed_rng(self.cfg.seed, COMPLETE, leaf.uid, leaf.fn)

    def evaluate(self, leaf: Node) -> tuple[float, list[int], str, bool]:
        """Evaluation: complete the clause, then ask the evaluator (memoised by text)."""
        response = self.response + leaf.response_tokens()
        completion: list[int] = []
        budget = self._completion_budget(leaf)
        if budget > 0:
            self._ensure(leaf)
            with _Timer(self.timings, "complete"):
                completion, fed = self.engine.complete(leaf, response, self._completion_rng(leaf), budget)
            self.counts["tokens_needed"] += fed
            self.counts["completion_tokens"] += len(completion)
        return self._judge(response, completion)

    def _judge(self, response: list[int], completion: list[int]) -> tuple[float, list[int], str, bool]:
        text = self.response_text(response + completion)
        if self.cfg.cut_at_last_stop:
            text = cut_at_last_stop(text)
        self.counts["evaluations"] += 1
        if text in self.memo:
            self.counts["memo_hits"] += 1
            return self.memo[text], completion, text, True
        with _Timer(self.timings, "judge"):
            v = float(self.evaluator(self.prompt, text))
        if not -1.0 <= v <= 1.0:
            raise ConfigError(f"The evaluator returned {v}, outside [-1, 1].")
        self.counts["evaluator_calls"] += 1
        self.memo[text] = v
        return v, completion, text, False

    def evaluate_and_expand(self, leaf: Node) -> tuple[float, list[int], str, bool]:
        """`evaluate(leaf)` then `expand(leaf)`, with the clause completion run as one more row of
        the expansion's rollout batch (the two only share the leaf's cache and draw from
        different keyed generators, so the result is the same; the completion's steps cost no
        forward pass of their own). Falls back to the two phases where nothing is to be shared."""
        cfg = self.cfg
        budget = self._completion_budget(leaf)
        fuse = (getattr(self.engine, "fuses_completion", False) and budget > 0 and not leaf.terminal
                and cfg.token_set_length(leaf.step) > 1 and self.remaining(leaf) > 0)
        if not fuse:
            out = self.evaluate(leaf)
            if not leaf.terminal:
                self.expand(leaf)
            return out
        response = self.response + leaf.response_tokens()
        self._ensure(leaf)
        comp = Completion(self.engine, response, self._completion_rng(leaf), budget, leaf.logits)
        self.expand(leaf, completion=comp)
        self.counts["tokens_needed"] += comp.fed
        self.counts["completion_tokens"] += len(comp.out)
        return self._judge(response, list(comp.out))

    def _embedding_texts(self, path: list[Node], completion: list[int]) -> list[str]:
        """The text from each non-root node of the path down to the evaluated end."""
        texts = []
        tail = list(completion)
        for node in reversed(path[1:]):
            tail = list(node.tokens) + tail
            texts.append(self.lm.decode(tail))
        texts.reverse()
        return texts

    def _embed(self, texts: list[str]) -> torch.Tensor:
        with _Timer(self.timings, "embed"):
            if getattr(self.engine, "embed_one_by_one", False):     # as the public code does
                emb = torch.cat([self.embedder([t]) for t in texts])
            else:
                emb = self.embedder(texts)
        self.counts["embed_calls"] += 1
        self.counts["embedded_texts"] += len(texts)
        return emb

    def backward(self, path: list[Node], v: float, completion: list[int],
                 embeddings: torch.Tensor | None = None) -> list[tuple[Node, Node, float]]:
        """Back-up of v along the path, embedding updates and the similarity update. Returns the
        similarity updates as (node, sibling, weight). `embeddings`: those of
        `_embedding_texts(path, completion)` when already computed (parallel rounds)."""
        backup(path, v, self.bounds)
        sims = []
        if not self.needs_embeddings or len(path) < 2:
            return sims
        nodes = path[1:]
        emb = embeddings if embeddings is not None else self._embed(self._embedding_texts(path, completion))
        for node, e in zip(nodes, emb):
            update_embedding(node, e)
            if self.cfg.similarity_update:
                for sib, w in similarity_update(node, v, self.cfg.sim_gamma, self.cfg.sim_threshold):
                    sims.append((node, sib, w))
        return sims

    def simulate(self) -> SimulationOutcome:
        """One simulation of the inner loop."""
        self._pending_new, self._pending_added = [], []
        self._pending_parents, self._carry_parents = self._carry_parents, []
        path = self.select()
        leaf = path[-1]
        v, completion, text, memo_hit = self.evaluate_and_expand(leaf)
        expanded = not leaf.terminal
        sims = self.backward(path, v, completion)
        self.counts["simulations"] += 1
        self.counts["rounds"] += 1
        self._record_simulation(path, completion, text, v, memo_hit, expanded, sims,
                                self._pending_new, self._pending_added, self._pending_parents)
        self.sim_index += 1
        self.round_index += 1
        return SimulationOutcome(path, leaf, completion, text, v, memo_hit, expanded)

    def _record_simulation(self, path, completion, text, v, memo_hit, expanded, sims, new, added,
                           parents) -> None:
        if self.trace is None:
            return
        touched = {n.uid: n for n in path}
        for _, sib, _ in sims:
            touched[sib.uid] = sib
        for parent in parents:      # priors renormalised among siblings
            if parent.parent is None and parent is not self.root:
                continue
            for ch in parent.children:
                touched[ch.uid] = ch
        for rec in new:
            rec.p = touched[rec.uid].p if rec.uid in touched else rec.p
        self.trace.simulations.append(SimulationRecord(
            index=self.sim_index, outer_step=self.outer_step, root=self.root.uid,
            path=[n.uid for n in path], leaf=path[-1].uid,
            completion=self.lm.decode(completion), evaluated_text=text, value=v,
            memo_hit=memo_hit, expanded=expanded, new_nodes=list(new),
            updates={u: [n.n, n.fn, n.q, n.p] for u, n in touched.items()},
            similarity=[[a.uid, b.uid, w] for a, b, w in sims], added=list(added),
            round=self.round_index))

    # ------------------------------------------------------------------ parallel rounds
    def simulate_round(self, k: int | None = None) -> list[SimulationOutcome]:
        """One parallel round of up to `k` simulations (default `parallel_simulations`).

        Selection: up to k walks from the root, one after another; each path in flight carries a
        virtual loss (`tree.VIRTUAL_LOSS`: one more visit of value -1 until its real value is
        backed up). So each walk picks the leaf the sequential search would pick next if every
        simulation in flight came back with the worst value. A walk that reaches a non-terminal
        leaf already in flight is dropped: the sequential search would go on from that leaf's
        result (its value, its new children), which the round cannot give it. Its virtual loss
        stays on, so the next walk goes elsewhere, and the round ends at the
        `ROUND_COLLISIONS`-th such walk (the nodes a dropped walk added stay, recorded with the
        round's last simulation). Evaluation and expansion: the leaves' caches,
        rollouts and clause completions in shared packed passes, the new texts judged together
        (a text is judged once: repeats are memo hits, as in a sequential search), the paths'
        texts embedded in one call. Back-up: one simulation after the other, in selection order,
        each exactly as a sequential simulation backs up. k = 1 is `simulate()`."""
        k = self.cfg.parallel_simulations if k is None else k
        if k <= 1:
            return [self.simulate()]
        carry, self._carry_parents = self._carry_parents, []
        sels: list[dict] = []
        paths: list[list[Node]] = []       # every walk's path, the dropped one too
        in_flight: set[Node] = set()
        collisions = 0
        try:
            while len(sels) < k:
                self._pending_new, self._pending_added, self._pending_parents = [], [], []
                path = self.select()
                add_virtual_loss(path)
                paths.append(path)
                leaf = path[-1]
                if leaf in in_flight and not leaf.terminal:
                    last = sels[-1]                 # what the dropped walk added is recorded
                    last["new"] += self._pending_new
                    last["added"] += self._pending_added
                    last["parents"] += self._pending_parents
                    collisions += 1
                    if collisions >= ROUND_COLLISIONS:
                        break
                    continue                        # dropped; its virtual loss stays on
                in_flight.add(leaf)
                sels.append(dict(path=path, new=self._pending_new, added=self._pending_added,
                                 parents=self._pending_parents))
            sels[0]["parents"] = carry + sels[0]["parents"]
            self._expand_round(sels)
        finally:
            for path in paths:
                add_virtual_loss(path, -1)
        self._judge_round(sels)
        embeddings = self._embed_round(sels)
        outcomes = []
        for sel, emb in zip(sels, embeddings):
            path, leaf = sel["path"], sel["path"][-1]
            sims = self.backward(path, sel["value"], sel["completion"], embeddings=emb)
            self.counts["simulations"] += 1
            expanded = sel["expanded"]
            self._record_simulation(path, sel["completion"], sel["text"], sel["value"], sel["memo_hit"],
                                    expanded, sims, sel["new"], sel["added"], sel["parents"])
            self.sim_index += 1
            outcomes.append(SimulationOutcome(path, leaf, sel["completion"], sel["text"], sel["value"],
                                              sel["memo_hit"], expanded))
        self.counts["rounds"] += 1
        self.round_index += 1
        return outcomes

    def _expand_round(self, sels: list[dict]) -> None:
        """Clause completions and expansions of the round's leaves (each leaf once, in selection
        order): packed together on an engine whose model takes packed token trees (`engine.packed`),
        else one leaf after another."""
        cfg = self.cfg
        first: dict[Node, dict] = {}
        for sel in sels:
            leaf = sel["path"][-1]
            sel["expanded"] = False
            if leaf in first:                   # a terminal leaf selected again
                continue
            first[leaf] = sel
            sel["expanded"] = not leaf.terminal
        leaves = list(first)
        if not getattr(self.engine, "packed", False):
            for leaf, sel in first.items():
                self._pending_new, self._pending_parents = sel["new"], sel["parents"]
                completion: list[int] = []
                budget = self._completion_budget(leaf)
                if budget > 0:
                    self._ensure(leaf)
                    response = self.response + leaf.response_tokens()
                    with _Timer(self.timings, "complete"):
                        completion, fed = self.engine.complete(leaf, response, self._completion_rng(leaf),
                                                               budget)
                    self.counts["tokens_needed"] += fed
                    self.counts["completion_tokens"] += len(completion)
                sel["completion"] = completion
                if not leaf.terminal:
                    self.expand(leaf)
            for sel in sels:
                sel["completion"] = first[sel["path"][-1]]["completion"]
            return
        from .parallel import RolloutJob, ensure_many, rollouts_many

        need = [leaf for leaf in leaves if not leaf.terminal or self._completion_budget(leaf) > 0]
        with _Timer(self.timings, "ensure"):
            ensure_many(self.engine, need)
        for leaf in need:
            self._count_needed(leaf)
        jobs, lengths = [], {}
        for leaf in need:
            budget = self._completion_budget(leaf)
            comp = None
            if budget > 0:
                comp = Completion(self.engine, self.response + leaf.response_tokens(),
                                  self._completion_rng(leaf), budget, leaf.logits)
                first[leaf]["comp"] = comp
            length = 0
            if not leaf.terminal:
                # the 1-token level (0 here): the top tokens of the leaf's logits, no rollout
                length = self.level_length(leaf) if cfg.token_set_length(leaf.step) > 1 else 0
                lengths[leaf] = length
            u = keyed_rng(cfg.seed, EXPAND, leaf.uid).random((cfg.sample_attempts, length)) if length else \
                np.zeros((0, 0))
            if length or comp is not None:
                jobs.append(RolloutJob(leaf, length, u, cfg.num_candidates, comp))
        with _Timer(self.timings, "expand"):
            found = dict(zip([j.node for j in jobs], rollouts_many(self.engine, jobs))) if jobs else {}
        for leaf, sel in first.items():
            comp = sel.pop("comp", None)
            sel["completion"] = list(comp.out) if comp is not None else []
            if comp is not None:
                self.counts["tokens_needed"] += comp.fed
                self.counts["completion_tokens"] += len(comp.out)
            if leaf.terminal:
                continue
            length = lengths[leaf]
            cands = found[leaf] if length else top_candidates(leaf.logits, cfg.num_candidates,
                                                              cfg.token_temperature)
            children = [self._new_node(leaf, c, rolled_out=length > 1) for c in cands]
            set_priors(leaf, cfg.root_prior_mix)
            if self.trace is not None:
                sel["new"].extend(self._record(ch) for ch in children)
                sel["parents"].append(leaf)
        for sel in sels:
            sel["completion"] = first[sel["path"][-1]]["completion"]

    def _judge_round(self, sels: list[dict]) -> None:
        """The round's texts, each new one judged once (together when the evaluator has
        `evaluate_many`), counted and memoised as a sequential search would in this order."""
        for sel in sels:
            response = self.response + sel["path"][-1].response_tokens()
            sel["text"] = self.response_text(response + sel["completion"])
        new = list(dict.fromkeys(sel["text"] for sel in sels if sel["text"] not in self.memo))
        if new:
            with _Timer(self.timings, "judge"):
                many = getattr(self.evaluator, "evaluate_many", None)
                if many is not None and len(new) > 1:
                    values = [float(v) for v in many(self.prompt, new)]
                else:
                    values = [float(self.evaluator(self.prompt, t)) for t in new]
            for t, v in zip(new, values):
                if not -1.0 <= v <= 1.0:
                    raise ConfigError(f"The evaluator returned {v}, outside [-1, 1].")
        fresh = dict(zip(new, values)) if new else {}
        for sel in sels:
            text = sel["text"]
            self.counts["evaluations"] += 1
            if text in fresh:
                v = fresh.pop(text)
                self.counts["evaluator_calls"] += 1
                self.memo[text] = v
                sel["value"], sel["memo_hit"] = v, False
            else:
                self.counts["memo_hits"] += 1
                sel["value"], sel["memo_hit"] = self.memo[text], True

    def _embed_round(self, sels: list[dict]) -> list[torch.Tensor | None]:
        """The embeddings of every path's texts (`_embedding_texts`), from one embedder call."""
        if not self.needs_embeddings:
            return [None] * len(sels)
        per = [self._embedding_texts(sel["path"], sel["completion"]) for sel in sels]
        unique = list(dict.fromkeys(t for texts in per for t in texts))
        if not unique:
            return [None] * len(sels)
        emb = self._embed(unique)
        row = {t: i for i, t in enumerate(unique)}
        return [emb[[row[t] for t in texts]] if texts else None for texts in per]

    def should_stop_early(self) -> bool:
        best = most_visited(self.root)
        return best is not None and best.fn > self.cfg.min_visits and best.q > self.cfg.value_threshold

    def commit_step(self) -> Node | None:
        """One outer step: simulations until the early-stop test passes or the budget is spent,
        then commit a child (the rewind: every other branch is dropped). Returns the committed
        node, or None when the search has finished."""
        if self.finished:
            return None
        cfg = self.cfg
        start = int(self.root.fn)
        first = self.sim_index
        early = False
        budget = max(cfg.max_simulations, start + cfg.extra_simulations) - start
        done = 0
        while done < budget:
            if cfg.parallel_simulations == 1:
                self.simulate()
                done += 1
            else:
                done += len(self.simulate_round(round_size(cfg.parallel_simulations, budget - done)))
            if self.should_stop_early():
                early = True
                break
        self.counts["early_stops"] += int(early)
        self.sims_per_step.append(self.sim_index - first)
        self.counts["max_live_nodes"] = max(self.counts["max_live_nodes"],
                                            sum(1 for _ in self.root.walk()))
        if cfg.commit_rule == "argmax":
            child = most_visited(self.root)
        else:
            child = sample_by_visits(self.root, float(keyed_rng(cfg.seed, COMMIT, self.outer_step).random()))
        if child is None:
            self.finished, self.stop_reason = True, "no candidates"
            return None
        if self.trace is not None:
            self.trace.commits.append(CommitRecord(
                outer_step=self.outer_step, simulations=self.sim_index - first, first_simulation=first,
                root=self.root.uid, chosen=child.uid, tokens=list(child.tokens),
                text=self.lm.decode(child.tokens), early_stop=early,
                tree=[self._record(n) for n in self.root.walk()]))
        if child.logits is None and not child.terminal:
            self._ensure(child)
        with _Timer(self.timings, "commit"):
            self.engine.commit(self.root, child)
        self.response += list(child.tokens)
        self.token_sets.append(list(child.tokens))
        self.root = reroot(child, cfg.root_prior_mix)
        self._carry_parents = [self.root]     # its children's priors were re-mixed: record them
        self.outer_step += 1
        if not child.terminal and cfg.max_commits is not None and self.outer_step >= cfg.max_commits:
            self.finished, self.stop_reason = True, "max commits"
            return child
        if child.terminal:
            self.finished = True
            if any(self.lm.is_stop_token(t) for t in child.tokens):
                self.stop_reason = "eos"
            elif self.lm.has_user_turn(self.response):
                self.stop_reason = "user turn"
            else:
                self.stop_reason = "length"
        return child

    def run(self, progress: bool = False) -> RainResult:
        bar = tqdm(total=self.cfg.max_new_tokens, desc="RAIN", unit="tok", disable=not progress,
                   leave=False)
        while not self.finished:
            child = self.commit_step()
            if child is not None:
                bar.update(len(child.tokens))
                bar.set_postfix(sims=self.sim_index)
        bar.close()
        return self.result()

    def result(self) -> RainResult:
        now = (self._own_stats or self.lm.stats).since(self._stats0)
        ev_stats = getattr(self.evaluator, "stats", None)
        eval_needed = getattr(ev_stats, "tokens_needed", 0) - self._eval_needed0
        stats = dict(self.counts)
        stats.update(
            engine=self.engine_name,
            engine_route="reference" if self.engine_name == "reference" else self.lm.route.kind,
            committed_tokens=len(self.response),
            commits=len(self.token_sets),
            simulations_per_step=list(self.sims_per_step),
            forward_calls=now.calls,
            tokens_computed=now.tokens,
            tokens_needed=self.counts["tokens_needed"] + eval_needed,
            wall_time_s=time.perf_counter() - self._t0,
            stop_reason=self.stop_reason,
            prompt_tokens=len(self.engine.prefix_ids) - len(self.response),
        )
        stats.update({f"time_{k}_s": v for k, v in self.timings.items()})
        return RainResult(text=self.response_text(self.response), prompt=self.prompt, method="rain",
                          tokens=list(self.response), token_sets=[list(t) for t in self.token_sets],
                          stats=stats, trace=self.trace, config=self.cfg.to_dict())


def round_size(k: int, remaining: int) -> int:
    """The most simulations the next parallel round may hold: K, but never more than half of
    what is left of the step's budget (rounded up), so that the step's last simulations see the
    results before them and the last one runs alone, as in the sequential search (a round's
    results cannot steer its own walks). Measured with notebook 11's study (p = 1, seed 0, outside
    the notebook): without this, rounds of 4 committed good answers less often than the sequential
    search at the CPU budget of 8 (0.575 vs 0.65; with it 0.65-0.675)."""
    return max(1, min(k, (remaining + 1) // 2))


def checked_prompt_ids(lm: LanguageModel, query: str, ids, max_new_tokens: int) -> list[int]:
    """Prompt token ids given as they are (no chat template applied), checked: a non-empty list of
    ids in the vocabulary that leaves room for `max_new_tokens` in the model's context."""
    if not isinstance(query, str):
        raise PromptError(f"The query must be a string, got {type(query).__name__}.")
    try:
        ids = [int(t) for t in ids]
    except (TypeError, ValueError):
        raise PromptError("prompt_ids must be a list of token ids (ints).") from None
    if not ids:
        raise PromptError("prompt_ids is empty: give at least one prompt token.")
    bad = [t for t in ids if not 0 <= t < lm.vocab_size]
    if bad:
        raise PromptError(f"prompt_ids holds ids outside the vocabulary (0..{lm.vocab_size - 1}): {bad[:5]}.")
    if len(ids) + max_new_tokens > lm.max_context:
        raise PromptError(
            f"The prompt is {len(ids)} tokens; with {max_new_tokens} new tokens it exceeds the "
            f"model's context of {lm.max_context} tokens. Shorten the prompt or lower max_new_tokens.")
    return ids


def rain_generate(lm: LanguageModel, prompt: str, config: RainConfig | None = None,
                  evaluator: Evaluator | None = None, embedder: Callable | None = None,
                  engine: str = "auto", progress: bool = False, prompt_ids: list[int] | None = None,
                  **overrides) -> RainResult:
    """Generate a response to `prompt` with RAIN.

    `config` defaults to the paper's HH setting; keyword overrides change single fields
    (e.g. `max_new_tokens=32`). `evaluator` defaults to the model's own self-evaluator;
    `embedder` to all-MiniLM-L6-v2. `engine="auto"` runs the fast engine on every model with a
    per-token KV cache and the reference engine on the others (`lm.route`, logged once; the
    route is in `stats["engine_route"]`); `engine="reference"` runs the slow straightforward
    execution. `prompt_ids`: the model's input as token ids, already formatted (no chat template
    is applied to them); `prompt` is then only the query the evaluator judges responses against.
    """
    cfg = (config or RainConfig())
    if overrides:
        cfg = cfg.replace(**overrides)
    search = RainSearch(lm, prompt, cfg, evaluator=evaluator, embedder=embedder, engine=engine,
                        prompt_ids=prompt_ids)
    return search.run(progress=progress)


def rain_generate_batch(lm: LanguageModel, prompts: list[str], config: RainConfig | None = None,
                        evaluator: Evaluator | None = None, embedder: Callable | None = None,
                        engine: str = "auto", progress: bool = False, concurrency: int | None = None,
                        batcher=None, prompt_ids: list[list[int]] | None = None,
                        **overrides) -> list[RainResult]:
    """RAIN on many prompts, the searches run side by side so that their forward passes (and
    embedder calls) batch together: the throughput path for evaluating many prompts, above all
    on a GPU. Results equal running `rain_generate` on each prompt with the same config, up to
    float ties (all draws are keyed per prompt's search; a batched pass rounds differently).

    `concurrency`: searches in flight at once (default: all prompts, at most 64); each holds its
    own tree and caches. `batcher`: a `raintools.batch.ForwardBatcher` to tune the grouping (its
    `stats` tell how many passes were merged). `engine="reference"` runs the prompts one by one.
    Each result's stats count that search's own forward requests and tokens. `prompt_ids`: one
    already formatted token-id list per prompt (see `rain_generate`).
    """
    from .batch import BatchedCall, ForwardBatcher
    from .evaluate import SelfEvaluator

    prompts = list(prompts)
    cfg = (config or RainConfig())
    if overrides:
        cfg = cfg.replace(**overrides)
    cfg.validate()
    engine = resolve_engine(lm, engine)
    if prompt_ids is not None and len(prompt_ids) != len(prompts):
        raise PromptError(f"prompt_ids has {len(prompt_ids)} rows for {len(prompts)} prompts.")
    ids_of = list(prompt_ids) if prompt_ids is not None else [None] * len(prompts)
    if engine == "reference" or len(prompts) <= 1:
        return [rain_generate(lm, p, cfg, evaluator=evaluator, embedder=embedder, engine=engine,
                              prompt_ids=ids)
                for p, ids in tqdm(list(zip(prompts, ids_of)), desc="RAIN prompts",
                                   disable=not progress)]
    batcher = batcher or ForwardBatcher(lm)
    base_eval = (evaluator if evaluator is not None
                 else self_evaluator(lm, cfg.judge_template, cfg.eval_mode))
    if (cfg.similarity_update or cfg.node_addition) and embedder is None:
        from .embed import load_embedder
        embedder = load_embedder()
    shared_embed = BatchedCall(batcher, embedder) if embedder is not None else None
    bar = tqdm(total=len(prompts), desc="RAIN prompts", disable=not progress)
    lock = threading.Lock()

    def job(prompt, ids):
        def run():
            # each search gets its own view of a self-evaluator (shared encoded header, own stats)
            ev = base_eval.fork() if isinstance(base_eval, SelfEvaluator) else base_eval
            search = RainSearch(lm, prompt, cfg, evaluator=ev, embedder=shared_embed, engine=engine,
                                prompt_ids=ids)
            return search.run()
        return run

    def done(i, result):
        with lock:
            bar.update(1)

    if isinstance(base_eval, SelfEvaluator) and base_eval.cached:
        base_eval.fork()          # encodes the judging header once, before the workers start
    try:
        return batcher.run([job(p, ids) for p, ids in zip(prompts, ids_of)],
                           workers=concurrency or min(len(prompts), 64),
                           on_done=done)
    finally:
        bar.close()
