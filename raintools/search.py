"""The RAIN loops: the inner loop (select, expand, evaluate, backward) and the outer loop
(rewind, commit).

    result = rain_generate(lm, "How do I ...?", config=RainConfig.cpu_demo())
    print(result.text, result.stats)
    results = rain_generate_batch(lm, prompts, config)     # many prompts, forward passes batched

`RainSearch` reads as the paper's phases, each a public method, so the notebooks can step through
a search one phase at a time. With K = `RainConfig.parallel_simulations` > 1, up to K simulations
are in flight at once, each in its own *slot* with a virtual loss (`tree.VIRTUAL_LOSS`) on its path
until its value is backed up; their requests are served together on a logical clock, so every
engine builds the same tree (`raintools.flow`). A walk into a non-terminal leaf another slot is
expanding is dropped (the slot waits for the next back-up), and no more walks are in flight than
`round_size` allows. K = 1 is the paper's sequential search.

The stats counters, the phase timers and the trace are observers of the search's events
(`raintools.observe`).
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import torch
from tqdm.auto import tqdm

from .batch import BatchedCall, ForwardBatcher, Locked, side_by_side
from .config import RainConfig
from .embed import load_embedder
from .engine import CompletionRequest, Engine, Expansion, Forward
from .engines import ENGINES, resolve_engine as resolve_transformers_engine, top_candidates
from .errors import PromptError
from .evaluate import Evaluator, SelfEvaluator, judge_text, self_evaluator
from .flow import Flow
from .models import LanguageModel
from .observe import PHASES, Observer, PhaseTimer, Stats, TraceRecorder
from .sampling import ADD, COMMIT, COMPLETE, EXPAND, keyed_rng
from .trace import RainResult, Trace
from .tree import (Bounds, Node, add_virtual_loss, backup, most_visited, needs_node_addition, reroot,
                   sample_by_visits, select_child, set_priors, similarity_update, tie_rule, update_embedding)
from .vllm_engine import ENGINE_MODES as VLLM_ENGINES, shared_client, vllm_engine_factory

__all__ = ["PHASES", "RainResult", "RainSearch", "Simulation", "rain_generate", "rain_generate_batch",
           "round_size"]


@dataclass(eq=False)
class Simulation:
    """One simulation of the inner loop (its index in the search is the order of back-ups)."""
    path: list[Node] = field(default_factory=list)          # root first
    completion: list[int] = field(default_factory=list)     # the leaf's clause completion
    text: str = ""                                          # the judged text
    value: float = 0.0
    memo_hit: bool = False                                  # the value came from the memo
    expanded: bool = False                                  # the leaf was expanded
    walk: int = -1                                          # the order in which its walk started

    @property
    def leaf(self) -> Node:
        return self.path[-1]


class RainSearch:
    """One RAIN search for one prompt. `run()` does everything; the phases are public methods.
    `engine`: a name ("auto", "fast", "reference") or any `raintools.engine.Engine`; `forward`:
    the forward pass a named engine runs (default the model's own; a batch of searches gives each
    one its share of merged passes); `observers`: more `raintools.observe.Observer`s."""

    def __init__(self, lm: LanguageModel, prompt: str, config: RainConfig | None = None,
                 evaluator: Evaluator | None = None, embedder: Callable | None = None,
                 engine: str | Engine = "auto", prompt_ids: list[int] | None = None,
                 forward: Forward | None = None, observers: Sequence[Observer] = ()):
        self.cfg = cfg = (config or RainConfig()).validate()
        self.lm, self.prompt = lm, prompt
        prompt_ids = search_prompt_ids(lm, prompt, prompt_ids, cfg)
        # the flow is the engine's forward at every K: its `stats` count this search's passes only
        self.flow = Flow(forward or lm.forward, getattr(forward, "stats", None) or lm.stats,
                         merge=lm.route.packed)
        self.engine = make_engine(lm, engine, cfg, self.flow)
        self.flow.concurrent = bool(self.engine.concurrent)
        # made before the judge is chosen: the passes of a judge forked for this search count as its
        self.stats, self.timer = Stats(self.engine), PhaseTimer()
        self.counts = self.stats.counts
        self.evaluator, self.own_judge = search_judge(lm, evaluator, cfg, self.engine, self.flow)
        self.embedder = load_embedder() if embedder is None and cfg.needs_embeddings else embedder
        self.bounds, self.memo, self._emitting = Bounds(), {}, threading.RLock()
        self._next_uid, self._add_counter, self.in_flight = 1, 0, {}   # leaf -> its expanding simulation
        self.sim_index = self.walks = self.outer_step = 0
        self.response, self.token_sets = [], []      # committed tokens, and per commit
        self.finished, self.stop_reason = False, ""
        self.trace = Trace(prompt=prompt, config=cfg.to_dict()) if cfg.record_trace else None
        self.observers = [self.stats, self.timer, *([TraceRecorder(self.trace)] if self.trace else []),
                          *observers]
        self.root = self.engine.start(prompt_ids)
        self._emit("started", prompt_ids)

    def _emit(self, event: str, *args) -> None:
        with self._emitting:     # a slot's request on its own thread (a server) may emit meanwhile
            for obs in self.observers:
                getattr(obs, event)(self, *args)

    @contextmanager
    def phase(self, name: str):
        self._emit("phase_started", name)
        try:
            yield
        finally:
            self._emit("phase_ended", name)

    def remaining(self, node: Node) -> int:
        """How many more tokens a response may grow below `node`."""
        used = len(node.response_tokens())
        left = self.cfg.max_length - len(self.engine.prefix_ids) - used
        if self.cfg.max_new_tokens is not None:
            left = min(left, self.cfg.max_new_tokens - len(self.response) - used)
        return left

    def level_length(self, node: Node) -> int:
        """Token-set length of the candidates below `node`: the configured length for its depth,
        capped by the remaining budget (at least 1). Never read from a child: the greedy child
        stops early at an end-of-turn token."""
        return max(1, min(self.cfg.token_set_length(node.step), self.remaining(node)))

    def _is_terminal(self, node: Node) -> bool:
        return (any(self.lm.is_stop_token(t) for t in node.tokens) or self.remaining(node) <= 0
                or self.lm.has_user_turn(self.response + node.response_tokens()))

    def _ensure(self, node: Node) -> None:
        with self.phase("ensure"):
            self.engine.ensure(node)
        self._emit("ensured", node)

    def _add_children(self, parent: Node, cands, sim: Simulation | None, rolled_out: bool,
                      added: bool = False) -> list[Node]:
        """New children from candidates, priors set (a node addition that found none changes nothing)."""
        new = [Node(tokens=tuple(c.tokens), parent=parent, step=parent.step + 1, uid=self._next_uid + i,
                    raw_p=c.raw_p, kv=c.kv, logits=c.logits) for i, c in enumerate(cands)]
        self._next_uid += len(new)
        for node in new:
            node.terminal = self._is_terminal(node)
            parent.children.append(node)
        if new or not added:
            set_priors(parent, self.cfg.root_prior_mix)
            self._emit("nodes_created", sim, parent, new, rolled_out, added)
        return new

    # ------------------------------------------------------------------ the phases
    def select(self, sim: Simulation | None = None) -> list[Node]:
        """Forward: walk down from the root by the selection score (with the virtual loss of the
        paths in flight), adding nodes where the dynamic-node-addition test fires. Returns the
        path, root first."""
        cfg = self.cfg
        with self.phase("select"):
            node, path = self.root, [self.root]
            while node.children:
                if cfg.node_addition and needs_node_addition(
                        node, cfg.max_children, cfg.add_variance_factor, self.level_length(node)):
                    self.add_nodes(node, sim)
                tie = tie_rule(cfg.tie_break, cfg.seed, node, cfg.token_set_length(node.step) == 1)
                node = select_child(node, self.bounds, cfg.c, tie)
                path.append(node)
        return path

    def add_nodes(self, node: Node, sim: Simulation | None = None) -> list[Node]:
        """Dynamic node addition: the next-ranked token (1-token level) or the greedy rollout and the
        first differing sample of `add_attempts` (longer levels, the level's length); new
        candidates only, at most `max_children` children; priors renormalised."""
        cfg = self.cfg
        if len(node.children) >= cfg.max_children:
            return []
        self._add_counter += 1
        rolls, top = cfg.token_set_length(node.step) > 1, len(node.children) + 1
        length = self.level_length(node) if rolls else 1
        u = (keyed_rng(cfg.seed, ADD, node.uid, self._add_counter).random((cfg.add_attempts, length))
             if rolls else None)
        with self.flow.request(lambda: 1 + (length if rolls else 0)):
            if node.logits is None:
                self._ensure(node)
            with self.phase("add"):
                if not rolls:
                    cands = top_candidates(node.logits, top, cfg.token_temperature)
                else:
                    cands = self.engine.expand(Expansion(node, length, u, keep=2))
        room = cfg.max_children - len(node.children)        # another slot may have added meanwhile
        cands = [c for c in cands if node.child_with_tokens(c.tokens) is None][:room]
        return self._add_children(node, cands, sim, rolled_out=length > 1, added=True)

    def expand(self, leaf: Node) -> list[Node]:
        self.evaluate_and_expand(Simulation([leaf]), complete=False)    # one leaf, no completion
        return leaf.children

    def evaluate_and_expand(self, sim: Simulation, complete: bool = True) -> None:
        """Expansion of the leaf into candidate token sets (top-k tokens at the 1-token level;
        greedy + sampled rollouts at longer levels) with priors (root children mixed with
        uniform), and the clause completion the evaluation judges, in one engine call."""
        cfg, leaf = self.cfg, sim.leaf
        sim.expanded = not leaf.terminal     # a terminal leaf: no expansion, no completion, no forward
        budget = cfg.completion_budget(self.remaining(leaf)) if complete and sim.expanded else 0
        comp = (CompletionRequest(self.response + leaf.response_tokens(),
                                  keyed_rng(cfg.seed, COMPLETE, leaf.uid, leaf.fn), budget,
                                  cfg.complete_until) if budget > 0 else None)
        length = self.level_length(leaf) if not leaf.terminal and cfg.token_set_length(leaf.step) > 1 else 0
        u = keyed_rng(cfg.seed, EXPAND, leaf.uid).random((cfg.sample_attempts, length)) if length else None
        req = Expansion(leaf, length, u, cfg.num_candidates, comp) if length or comp is not None else None
        with self.flow.request(lambda: 1 + max(length, len(comp.out or ()) if comp else 0), sim.expanded):
            if sim.expanded:      # ticks: `raintools.flow`
                self._ensure(leaf)
            with self.phase("expand"):
                found = self.engine.expand(req) if req else []
        if comp is not None:
            sim.completion = list(comp.out)
            self._emit("completed", comp)
        if sim.expanded:
            cands = (found if length else
                     top_candidates(leaf.logits, cfg.num_candidates, cfg.token_temperature))
            self._add_children(leaf, cands, sim, rolled_out=length > 1)

    def evaluate(self, sim: Simulation) -> None:
        """Evaluation: the simulation's response and completion (cut at its last full stop where
        configured) judged, each text once (a repeat is a memo hit)."""
        sim.text = self.lm.response_text(self.response + sim.leaf.response_tokens() + sim.completion)
        if self.cfg.cut_at_last_stop:    # up to and including its last ".", whole without one
            sim.text = sim.text[: sim.text.rfind(".") + 1] or sim.text
        sim.memo_hit = sim.text in self.memo
        with self.flow.request(lambda: 1, not sim.memo_hit), self.phase("judge"), self.stats.judging(self):
            if not sim.memo_hit:
                self.memo[sim.text] = judge_text(self.evaluator, self.prompt, sim.text)
        sim.value = self.memo[sim.text]
        self._emit("judged", sim)

    def embed(self, sim: Simulation) -> torch.Tensor | None:
        """The embeddings of the text from each non-root node of the path down to its evaluated
        end, from one embedder call (each text once)."""
        path = sim.path if self.cfg.needs_embeddings else []
        texts = [self.lm.decode([t for node in path[i:] for t in node.tokens] + sim.completion)
                 for i in range(1, len(path))]
        unique = list(dict.fromkeys(texts))
        if not unique:
            return None
        with self.phase("embed"):
            emb = (torch.cat([self.embedder([t]) for t in unique]) if self.engine.embed_one_by_one
                   else self.embedder(unique))
        self._emit("embedded", unique)
        return emb[[unique.index(t) for t in texts]]

    def backward(self, sim: Simulation, embeddings: torch.Tensor | None) -> list:
        """Backward: the value backed up along the path, the path's embeddings updated, and the
        similarity update of their siblings. Returns the (node, sibling, weight) updates."""
        backup(sim.path, sim.value, self.bounds)
        updates = []
        for node, e in zip(sim.path[1:], embeddings if embeddings is not None else []):
            update_embedding(node, e)
            if self.cfg.similarity_update:
                updates += [(node, sib, w) for sib, w in similarity_update(
                    node, sim.value, self.cfg.sim_gamma, self.cfg.sim_threshold)]
        self._emit("backed_up", sim, updates)
        self.sim_index += 1
        return updates

    def simulate(self, sim: Simulation | None = None) -> Simulation:
        """One simulation of the inner loop: the walk (`select`, unless `sim` holds one), the leaf's
        expansion and completion, the judgement and the back-up, under a virtual loss until then."""
        if sim is None:
            sim = Simulation()
            sim.path = self.select(sim)
        sim.walk, self.walks = self.walks, self.walks + 1
        add_virtual_loss(sim.path)
        if not sim.leaf.terminal:
            self.in_flight[sim.leaf] = sim
        try:
            self._emit("selected", sim)
            self.evaluate_and_expand(sim)
            self.in_flight.pop(sim.leaf, None)
            self.evaluate(sim)
            emb = self.embed(sim)
        finally:
            self.in_flight.pop(sim.leaf, None)
            add_virtual_loss(sim.path, -1)
        self.backward(sim, emb)
        return sim

    def simulate_step(self, budget: int) -> bool:
        """The inner loop of an outer step on K slots (module docstring): `budget` simulations, or
        fewer when the early-stop test (after each back-up) passes. Returns whether it did. While
        it passes no walk starts; the step ends when no walk is in flight then, else every slot
        waits for the walks in flight, and goes on if their back-ups make the test fail again."""
        k, flow = self.cfg.parallel_simulations, self.flow
        started, done, early = 0, 0, False      # walks started, simulations backed up, early stop

        def slot():
            nonlocal started, done, early
            while started < budget and not (early and started == done):
                if early or started - done >= round_size(k, budget - done):
                    flow.idle()
                    continue
                sim = Simulation()
                sim.path = self.select(sim)
                if sim.leaf in self.in_flight:         # another slot expands it: wait for a result
                    self._emit("dropped", sim, self.in_flight[sim.leaf])
                    flow.idle()
                    continue
                started += 1
                self.simulate(sim)
                done += 1
                early = self.should_stop_early()
                flow.wake()

        flow.run([slot] * k)
        return early

    def should_stop_early(self) -> bool:
        best = most_visited(self.root)
        return best is not None and best.fn > self.cfg.min_visits and best.q > self.cfg.value_threshold

    def commit_step(self) -> Node | None:
        """One outer step: simulations until the early-stop test passes or the budget is spent,
        then commit a child (the rewind: every other branch is dropped). Returns the committed
        node, or None when the search has finished."""
        if self.finished:
            return None
        cfg, first = self.cfg, self.sim_index
        early = self.simulate_step(max(cfg.max_simulations - int(self.root.fn), cfg.extra_simulations))
        self._emit("step_done", first, early)
        child = (most_visited(self.root) if cfg.commit_rule == "argmax" else
                 sample_by_visits(self.root, float(keyed_rng(cfg.seed, COMMIT, self.outer_step).random())))
        if child is None:
            self.finished, self.stop_reason = True, "no candidates"
            return None
        self._emit("committing", child, first, early)
        if child.logits is None and not child.terminal:
            self._ensure(child)
        with self.phase("commit"):
            self.engine.commit(self.root, child)
        self.response += list(child.tokens)
        self.token_sets.append(list(child.tokens))
        self.root = reroot(child, cfg.root_prior_mix)
        self.outer_step += 1
        self._emit("committed", child)
        if child.terminal:
            self.finished = True
            self.stop_reason = ("eos" if any(self.lm.is_stop_token(t) for t in child.tokens) else
                                "user turn" if self.lm.has_user_turn(self.response) else "length")
        elif cfg.max_commits is not None and self.outer_step >= cfg.max_commits:
            self.finished, self.stop_reason = True, "max commits"
        return child

    def run(self, progress: bool = False) -> RainResult:
        with tqdm(total=self.cfg.max_new_tokens, desc="RAIN", unit="tok", disable=not progress,
                  leave=False) as bar:
            while not self.finished:
                child = self.commit_step()
                if child is not None:
                    bar.update(len(child.tokens))
                    bar.set_postfix(sims=self.sim_index)
        return self.result()

    def result(self) -> RainResult:
        return RainResult(text=self.lm.response_text(self.response), prompt=self.prompt, method="rain",
                          tokens=list(self.response), token_sets=[list(t) for t in self.token_sets],
                          stats=self.stats.summary(self), trace=self.trace, config=self.cfg.to_dict())


def round_size(k: int, remaining: int) -> int:
    """The most simulations in flight at once: K, but never more than half of what is left of the
    step's budget (`remaining`: not yet backed up; rounded up), so that the step's last
    simulations see the results before them and the last one runs alone, as in the sequential
    search. Notebook 11 measures the share of good answers against the sequential search."""
    return max(1, min(k, (remaining + 1) // 2))


def search_prompt_ids(lm: LanguageModel, prompt: str, prompt_ids, cfg: RainConfig) -> list[int]:
    """The prompt's ids (chat-formatted, or `prompt_ids` as given, e.g. by model.generate), checked
    (`LanguageModel.prompt_ids`); below max_length."""
    prompt_ids = lm.prompt_ids(prompt, max_new_tokens=cfg.max_new_tokens or 1, given=prompt_ids)
    if len(prompt_ids) >= cfg.max_length:
        raise PromptError(f"The prompt is {len(prompt_ids)} tokens, not below max_length={cfg.max_length}: "
                          f"shorten it or raise RainConfig.max_length.")
    return prompt_ids


def resolve_engine(lm: LanguageModel, engine: str) -> str:
    """The engine that runs: "auto" is RAINTOOLS_ENGINE when set, else the transformers engine
    for the model (`raintools.engines.resolve_engine`); "vllm" (vLLM samples) and "vllm-keyed"
    (raintools' keyed draws on the server's log-probabilities) run on the vLLM server at
    RAINTOOLS_SERVER (default http://127.0.0.1:8000; `raintools.vllm_engine`)."""
    if engine == "auto":
        engine = os.environ.get("RAINTOOLS_ENGINE") or "auto"
    return engine if engine in VLLM_ENGINES else resolve_transformers_engine(lm, engine)


def make_engine(lm: LanguageModel, engine: str | Engine, cfg: RainConfig, forward: Forward | None = None,
                client=None) -> Engine:
    """The engine a search talks to: an `Engine` instance as given, or one built from its name
    ("auto", "fast", "reference", "vllm", "vllm-keyed"; `resolve_engine`); `client`: a vLLM
    engine's client (`raintools.vllm_engine.shared_client`)."""
    if not isinstance(engine, str):
        return engine
    name = resolve_engine(lm, engine)
    make = ENGINES.get(name) or vllm_engine_factory(name, client=client)
    return make(lm, top_k=cfg.top_k, temperature=cfg.temperature, forward=forward)


def search_judge(lm: LanguageModel, evaluator: Evaluator | None, cfg: RainConfig, engine: Engine,
                 flow: Flow) -> tuple[Evaluator, bool]:
    """The judge a search uses (default: the model's self-evaluator) and whether it is the
    search's own fork. At K > 1 the search model's own self-evaluator is forked onto the flow, so
    its passes ride with the slots'; a judge on another model keeps its own weights; a server
    engine judges on the server (`Engine.judge`)."""
    evaluator = evaluator if evaluator is not None else (
        SelfEvaluator(lm, cfg.judge_template, cfg.eval_mode, cached=False)
        if engine.name == "reference" else self_evaluator(lm, cfg.judge_template, cfg.eval_mode))
    own = cfg.parallel_simulations > 1 and isinstance(evaluator, SelfEvaluator) and evaluator.lm is lm
    return engine.judge(evaluator.fork(forward=flow) if own else evaluator), own


def rain_generate(lm: LanguageModel, prompt: str, config: RainConfig | None = None,
                  evaluator: Evaluator | None = None, embedder: Callable | None = None,
                  engine: str | Engine = "auto", progress: bool = False, prompt_ids: list[int] | None = None,
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
    cfg = (config or RainConfig()).replace(**overrides)      # validated
    return RainSearch(lm, prompt, cfg, evaluator=evaluator, embedder=embedder, engine=engine,
                      prompt_ids=prompt_ids).run(progress=progress)


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
    prompts = list(prompts)
    cfg = (config or RainConfig()).replace(**overrides)      # validated
    engine = resolve_engine(lm, engine)
    if prompt_ids is not None and len(prompt_ids) != len(prompts):
        raise PromptError(f"prompt_ids has {len(prompt_ids)} rows for {len(prompts)} prompts.")
    jobs = list(zip(prompts, prompt_ids if prompt_ids is not None else [None] * len(prompts)))
    for i, (p, ids) in enumerate(jobs):     # bad input: one error before any work
        try:
            search_prompt_ids(lm, p, ids, cfg)
        except PromptError as e:
            raise PromptError(f"Prompt {i} of {len(prompts)}: {e}") from None
    if engine == "reference" or len(prompts) <= 1:
        return [rain_generate(lm, p, cfg, evaluator=evaluator, embedder=embedder, engine=engine,
                              prompt_ids=ids)
                for p, ids in tqdm(jobs, desc="RAIN prompts", disable=not progress)]
    if cfg.needs_embeddings and embedder is None:
        embedder = load_embedder()
    workers = concurrency or min(len(prompts), 64)
    if engine in VLLM_ENGINES:        # the server batches the requests: one thread per search
        emb = Locked(embedder) if embedder is not None else None
        stop = threading.Event()      # set by the first error or Ctrl-C: each search's next request raises
        client = shared_client(lm).stopping(stop)
        return side_by_side([lambda _, p=p, ids=ids: rain_generate(
            lm, p, cfg, evaluator=evaluator, embedder=emb, prompt_ids=ids,
            engine=make_engine(lm, engine, cfg, client=client)) for p, ids in jobs],
            workers, progress, stop=stop.set)
    batcher = batcher or ForwardBatcher(lm)
    base_eval = (evaluator if evaluator is not None
                 else self_evaluator(lm, cfg.judge_template, cfg.eval_mode))
    forks = isinstance(base_eval, SelfEvaluator)
    if forks and base_eval.cached:
        base_eval.fork()          # encodes the judging header once, before the searches start
    # a judge on another model: its own weights, one call at a time
    judge_forward = Locked(base_eval.forward) if forks else None

    def one_search(prompt, ids, client):
        # each search gets its own view of a self-evaluator (shared encoded header, own stats);
        # the search model's own judge runs through the search's batch client
        ev = (base_eval.fork(forward=client if base_eval.lm is lm else judge_forward) if forks
              else base_eval)
        emb = BatchedCall(client, embedder) if embedder is not None else None
        return RainSearch(lm, prompt, cfg, evaluator=ev, embedder=emb, engine=engine,
                          prompt_ids=ids, forward=client).run()

    return batcher.run([partial(one_search, p, ids) for p, ids in jobs], workers, progress)
