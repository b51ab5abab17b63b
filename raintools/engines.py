"""The transformers engines (`raintools.engine.Engine`): candidate token sets, clause completions
and the KV caches behind them.

Both engines make the same keyed random draws, so they propose the same candidates:

* `CachedEngine` (the default, fast): every node keeps the KV of its own tokens; a node's cache
  extends its parent's, so each token of the tree is computed once. The requests of one call
  (one leaf, or several leaves) grow together in one `Forest`: one forward pass
  per step serves every greedy and sampled rollout and every clause completion of every leaf
  (rollouts that drew the same tokens share them; at the last step only the kept candidates are
  fed, and their KV and logits become the new nodes'). A completion left alone continues over its
  own compact cache. Committed prefixes are merged into the root. On a model whose route is
  "rows" (`raintools.routes`: ALiBi and others that a packed token tree cannot serve exactly)
  each line is its own batch row instead (`Rows`, one leaf at a time), with the same draws.
* `ReferenceEngine`: the straightforward execution of the authors' public code (batch 1, each
  rollout and each clause completion recomputing the whole prefix once, no KV kept across nodes,
  the last rollout token never fed, embeddings one string at a time). For recurrent models, the
  equivalence tests and the speed benchmark.
"""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch

from .engine import Candidate, CompletionRequest, Expansion, Forward
from .errors import ConfigError, ModelSupportError
from .models import KV, ForwardStats, LanguageModel, kv_cat, kv_gather, kv_len, kv_slice
from .sampling import pick, sample_full, truncated
from .tree import Node

CLAUSE_END = (",", ".", "?", ":", ";", "\n")
TAIL_TOKENS = 32   # tokens decoded for the clause-end and user-turn tests (markers are shorter)


def ends_clause(text: str) -> bool:
    return bool(text) and text[-1] in CLAUSE_END


def clamp_greedy(p_greedy: float, p_samples: list[float]) -> float:
    """The code's clamp of the greedy candidate's probability against the sampled ones."""
    if not p_samples:
        return p_greedy
    return max(min(p_greedy, sum(p_samples)), max(p_samples) + min(p_samples))


def length_matched(p: float, n: int, length: int) -> float:
    """A rollout's prior on a level of `length` tokens (README, "Choices where the spec leaves
    room"): `p` is the product of its `n` truncated token probabilities. A rollout that stopped
    early at an end-of-turn token (n < length) scores its missing positions by its own per-token
    geometric mean, so its prior is p ** (length / n): it is compared with its siblings per token,
    not rewarded for multiplying fewer factors. A full-length rollout keeps its product exactly."""
    if n >= length or n <= 0 or p <= 0.0:
        return p
    return p ** (length / n)


def top_candidates(logits: torch.Tensor, k: int, temperature: float = 1.0) -> list[Candidate]:
    """The k most likely next tokens; raw_p is the full-softmax probability (at `temperature`),
    so normalising over any set of children equals the softmax truncated to that set (top-10 at
    expansion, top-(k+1) after node addition)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    vals, idx = torch.topk(probs, min(k, probs.shape[-1]))
    return [Candidate((int(i),), float(v)) for v, i in zip(vals.tolist(), idx.tolist())]


def kept_rows(rows: list[list[int]], keep: int) -> list[int]:
    """Greedy first, then the first unique samples (at most keep - 1); returns row indices."""
    seen, chosen = {tuple(rows[0])}, [0]
    for r in range(1, len(rows)):
        if tuple(rows[r]) in seen:
            continue
        seen.add(tuple(rows[r]))
        chosen.append(r)
        if len(chosen) >= keep:
            break
    return chosen


def kept_candidates(rows: list[list[int]], probs: list[float], length: int,
                    keep: int) -> dict[int, Candidate]:
    """Every engine's candidates of a request, by row index: the kept rows (`kept_rows`) with
    length-matched priors, the greedy one clamped against the samples."""
    cands = {r: Candidate(tuple(rows[r]), length_matched(probs[r], len(rows[r]), length))
             for r in kept_rows(rows, keep)}
    cands[0].raw_p = clamp_greedy(cands[0].raw_p, [c.raw_p for r, c in cands.items() if r > 0])
    return cands


def clause_done(lm: LanguageModel, response: list[int], out: list[int], until: str = "clause") -> bool:
    """RAIN's stopping rule of a completion, for every engine: it stops at EOS, at a clause end
    (unless `until == "turn"`), or when a user turn starts. Only the tail is decoded: the text
    before it was checked when it was generated (the leaf is not terminal, so it holds no user
    turn), and a clause end is the last character."""
    if out and lm.is_stop_token(out[-1]):
        return True
    tail = (response + out)[-TAIL_TOKENS:]
    if until == "clause" and ends_clause(lm.decode(tail)):
        return True
    return lm.has_user_turn(tail)


class Completion:
    """A clause completion in progress (the sampler of a `CompletionRequest`): `step()` draws the
    next token from `logits` and returns the token to feed next, or None when the completion is
    finished (its last token is never fed). Writes `out` and `fed` into the request."""

    def __init__(self, lm: LanguageModel, req: CompletionRequest, logits: torch.Tensor | None):
        self.lm, self.req, self.logits = lm, req, logits
        req.out, req.fed = [], 0
        self.done = req.max_tokens <= 0 or bool(req.response) and clause_done(lm, req.response, [], req.until)

    def step(self) -> int | None:
        req = self.req
        tok = sample_full(self.logits, float(req.rng.random()))
        req.out.append(tok)
        if clause_done(self.lm, req.response, req.out, req.until) or len(req.out) >= req.max_tokens:
            self.done = True
            return None
        req.fed += 1
        return tok

    def finish(self, state, advance) -> None:
        """Go on alone: `advance(token, state) -> (logits, state)` per fed token."""
        while not self.done:
            tok = self.step()
            if tok is None:
                break
            self.logits, state = advance(tok, state)


class TransformersEngine:
    """Shared logic of the transformers engines (`raintools.engine.Engine`); subclasses say how
    logits and caches are obtained."""

    name = "engine"
    embed_one_by_one = False
    concurrent = False          # one call at a time; K > 1 packs the slots' passes (raintools.flow)

    def __init__(self, lm: LanguageModel, top_k: int = 15, temperature: float = 1.0,
                 forward: Forward | None = None):
        self.lm, self.top_k, self.temperature = lm, top_k, temperature
        self.forward = forward or lm.forward
        self.stats: ForwardStats = getattr(forward, "stats", None) or lm.stats
        self.prefix_ids: list[int] = []     # prompt + committed tokens

    def commit(self, root: Node, child: Node) -> None:
        self.prefix_ids = self.prefix_ids + list(child.tokens)

    def judge(self, evaluator):
        """In-process engines judge with the evaluator as it is (a `SelfEvaluator` runs its own
        cached passes on the same model)."""
        return evaluator

    def rollouts(self, node: Node, length: int, uniforms: np.ndarray, keep: int,
                 completion: CompletionRequest | None = None) -> list[Candidate]:
        """One request: `expand([Expansion(node, length, uniforms, keep, completion)])[0]`."""
        return self.expand([Expansion(node, length, uniforms, keep, completion)])[0]

    def complete(self, leaf: Node, response: list[int], rng: np.random.Generator, max_tokens: int,
                 until: str = "clause") -> tuple[list[int], int]:
        """One clause completion alone: (tokens drawn, tokens fed)."""
        req = CompletionRequest(response, rng, max_tokens, until)
        self.ensure([leaf])
        self.expand([Expansion(leaf, completion=req)])
        return req.out, req.fed


class Forest:
    """Token lines grown from several anchors in one packed sequence after one past.

    The past is the KV `chunks` (by key) in order, each once; anchor j sees the first n positions
    of each chunk (key, n) of `views[j]`, and its first new token takes the position after all it
    sees. Packed tokens are numbered in feeding order; a token's `prev` is the packed token before
    it on its line, or `-1 - j` for a line that starts at anchor j. A 4D mask lets each new token
    see exactly its anchor's visible past and its own line, at the position it would have alone,
    so each token computes what it would compute alone (up to float rounding)."""

    def __init__(self, forward: Forward, chunks: Mapping[Hashable, KV],
                 views: Sequence[Sequence[tuple[Hashable, int]]]):
        self.forward = forward
        self.kv = kv_cat(list(chunks.values()))
        self.start = kv_len(self.kv)
        offset, at = {}, 0
        for key, kv in chunks.items():
            offset[key], at = at, at + kv_len(kv)
        self.visible = torch.zeros(len(views), self.start, dtype=torch.bool)   # per anchor
        for j, view in enumerate(views):
            for key, n in view:
                self.visible[j, offset[key]:offset[key] + n] = True
        self.base = [sum(n for _, n in view) for view in views]
        self.anchor: list[int] = []      # per packed token: its anchor
        self.depth: list[int] = []       # per packed token: its depth below its anchor (0 = first)
        self.line: list[list[int]] = []  # per packed token: its line, first token first
        self.tokens: list[int] = []

    @classmethod
    def from_nodes(cls, forward: Forward, nodes: Sequence[Node]) -> "Forest":
        """Anchors at tree nodes (all with caches): the past is the union of their cached paths."""
        paths = [n.path_from_root() for n in nodes]
        chunks = {n: n.kv for path in paths for n in path}
        return cls(forward, chunks, [[(n, kv_len(n.kv)) for n in path] for path in paths])

    def feed(self, items: Sequence[tuple[int, int]], logits_at: Sequence[int] | None = None):
        """One forward pass over new tokens `items` = [(prev, token)]; a prev may be a token of
        this same feed (earlier in the list). Returns the logits of every new token [S, vocab]
        (or of the new tokens at the indices `logits_at` of this feed) and the packed index of
        the first new token."""
        first = len(self.tokens)
        for prev, tok in items:
            self.anchor.append(-1 - prev if prev < 0 else self.anchor[prev])
            self.depth.append(0 if prev < 0 else self.depth[prev] + 1)
            self.line.append(([] if prev < 0 else self.line[prev]) + [len(self.tokens)])
            self.tokens.append(int(tok))
        s = len(items)
        new = range(first, first + s)
        mask = torch.zeros(s, self.start + first + s, dtype=torch.bool)
        mask[:, :self.start] = self.visible[[self.anchor[g] for g in new]]
        rows = [i for i, g in enumerate(new) for _ in self.line[g]]
        cols = [self.start + a for g in new for a in self.line[g]]
        mask[rows, cols] = True
        ids = torch.tensor([[self.tokens[g] for g in new]])
        pos = torch.tensor([[self.base[self.anchor[g]] + self.depth[g] for g in new]])
        kw = dict(all_logits=True) if logits_at is None else dict(logits_at=torch.tensor([list(logits_at)]))
        logits, self.kv = self.forward(ids, past=self.kv, attention_mask=mask[None, None],
                                       position_ids=pos, **kw)
        return logits[0], first

    def line_positions(self, g: int) -> list[int]:
        return [self.start + a for a in self.line[g]]

    def line_kv(self, g: int) -> KV:
        """The KV of packed token g's line (its anchor's past excluded), copied."""
        return kv_gather(self.kv, self.line_positions(g))

    def seen(self, anchor: int) -> list[int]:
        """The positions of the past that `anchor` sees."""
        return self.visible[anchor].nonzero().flatten().tolist()

    def context_kv(self, g: int) -> KV:
        """The KV of packed token g's anchor's past and its line: a compact cache to go on alone."""
        return kv_gather(self.kv, self.seen(self.anchor[g]) + self.line_positions(g))


class Rows:
    """`Forest` for one anchor on the "rows" route: each line is a batch row whose past is the
    row of the line it continues (plain decoding steps, the model's own masks)."""

    def __init__(self, forward: Forward, past: KV):
        self.forward, self.kv, self.start = forward, past, kv_len(past)
        self.depth: list[int] = []
        self.base = 0

    def feed(self, items: Sequence[tuple[int, int]]):
        first = len(self.depth)
        self.depth += [0 if p < 0 else self.depth[p] + 1 for p, _ in items]
        src = torch.tensor([0 if p < 0 else p - self.base for p, _ in items])
        rows_kv = [(k.index_select(0, src.to(k.device)), v.index_select(0, src.to(v.device)))
                   for k, v in self.kv]
        logits, self.kv = self.forward(torch.tensor([t for _, t in items]).unsqueeze(1), past=rows_kv)
        self.base = first
        return logits, first

    def line_kv(self, g: int) -> KV:
        return kv_slice(self.kv, self.start, row=g - self.base)

    def context_kv(self, g: int) -> KV:
        r = g - self.base
        return [(k[r:r + 1], v[r:r + 1]) for k, v in self.kv]


class _Job:
    """One request's state in the step loop of `CachedEngine.expand`."""

    def __init__(self, lm: LanguageModel, req: Expansion, anchor: int):
        n = 1 + req.uniforms.shape[0] if req.length > 0 else 0
        self.req = req
        self.rows: list[list[int]] = [[] for _ in range(n)]
        self.probs, self.done, self.at = [1.0] * n, [False] * n, [-1 - anchor] * n
        self.finished = req.length <= 0
        self.cands: list[Candidate] = []
        self.comp = None
        self.comp_at = -1 - anchor
        if req.completion is not None:
            c = Completion(lm, req.completion, req.node.logits)
            self.comp = None if c.done else c


class CachedEngine(TransformersEngine):
    """Each token computed once: per-node KV chunks, the requests of a call grown together
    (module docstring)."""

    name = "fast"

    def __init__(self, lm: LanguageModel, top_k: int = 15, temperature: float = 1.0,
                 forward: Forward | None = None):
        super().__init__(lm, top_k, temperature, forward)
        route = lm.route
        if route.kind not in ("packed", "rows"):
            raise ModelSupportError(
                f"The fast engine needs a per-token KV cache, and {lm.name} has none: {route.reason}. "
                f"Use engine='reference' (or engine='auto', which picks it).")
        self.packed = route.packed      # False: one batch row per rollout line

    def start(self, prompt_ids):
        self.prefix_ids = list(prompt_ids)
        logits, kv = self.forward(torch.tensor([prompt_ids]))
        return Node(tokens=(), step=0, uid=0, kv=kv, logits=logits[0])

    def path_kv(self, node: Node) -> KV:
        return kv_cat([n.kv for n in node.path_from_root()])

    def ensure(self, nodes):
        """Node caches (KV of the node's own tokens, logits after it); several nodes whose
        parents have theirs in one packed pass."""
        todo = [n for n in dict.fromkeys(nodes) if n.logits is None]
        if not self.packed or len(todo) <= 1:
            for n in todo:
                self._ensure_one(n)
            return
        for n in todo:                       # parents first (rarely needed)
            if n.parent is not None and n.parent.logits is None:
                self._ensure_one(n.parent)
        forest = Forest.from_nodes(self.forward, [n.parent for n in todo])
        items, ends = [], []
        for j, n in enumerate(todo):
            prev = -1 - j
            for tok in n.tokens:
                items.append((prev, tok))
                prev = len(items) - 1
            ends.append(prev)
        logits, first = forest.feed(items)
        for n, g in zip(todo, ends):
            n.kv = forest.line_kv(first + g)
            n.logits = logits[g].clone()

    def _ensure_one(self, node: Node) -> None:
        if node.logits is not None:
            return
        self._ensure_one(node.parent)
        past = self.path_kv(node.parent)
        logits, kv = self.forward(torch.tensor([list(node.tokens)]), past=past)
        node.kv = kv_slice(kv, kv_len(past))
        node.logits = logits[0]

    def expand(self, requests):
        """The requests grown together (module docstring). On the rows route several requests
        go one after another, each completion before its rollouts."""
        if self.packed or len(requests) <= 1:
            return self._grow(requests)
        out = []
        for req in requests:
            if req.completion is not None:
                self._grow([Expansion(req.node, completion=req.completion)])
            out.append(self._grow([replace(req, completion=None)])[0] if req.length > 0 else [])
        return out

    def _grow(self, requests: Sequence[Expansion]) -> list[list[Candidate]]:
        """The one step loop: all rollouts and completions advance together, one forward pass per
        step; per step one top-k over every distribution a rollout draws from and one host
        transfer. A lone request's completion finishes alone once its rollouts are done."""
        if not requests:
            return []
        jobs = [_Job(self.lm, r, i) for i, r in enumerate(requests)]
        lone = len(jobs) == 1
        if lone and jobs[0].finished:              # a completion with no rollout to ride with
            if jobs[0].comp is not None:
                self._finish_alone(jobs[0].comp, None, requests[0].node)
            return [[]]
        if self.packed:
            forest = Forest.from_nodes(self.forward, [r.node for r in requests])
        else:
            forest = Rows(self.forward, self.path_kv(requests[0].node))
        logits, base, t = None, 0, 0
        while True:
            active = [j for j in jobs if not j.finished]
            sources: dict[int, int] = {}
            for job in active:
                for r in range(len(job.rows)):
                    if not job.done[r] and job.at[r] is not None:
                        sources.setdefault(job.at[r], len(sources))
            if sources:
                stack = torch.stack([jobs[-1 - g].req.node.logits if g < 0 else logits[g - base]
                                     for g in sources])
                tp, ti = truncated(stack, self.top_k, self.temperature)
                tp, ti = tp.cpu(), ti.cpu()
            items: list[tuple[int, int]] = []
            finishing = []
            for job in active:
                toks = self._draw(job, t, sources, tp, ti)
                kept = kept_rows(job.rows, job.req.keep)
                # rows after `keep` distinct ones can no longer be kept (rows that differ now differ
                # at the end): they are fed no more, as the public code draws no more rows then
                cut = kept[-1] + 1 if len(kept) >= job.req.keep else len(job.rows)
                last = t == job.req.length - 1 or all(job.done[:cut])
                feed_rows = [r for r in toks if r < cut and not job.done[r]]
                if last:       # only the kept candidates need their last token's KV and logits
                    feed_rows = [r for r in feed_rows if r in kept]
                groups: dict[tuple[int, int], int] = {}
                new_at: list[int | None] = [None] * len(job.rows)
                for r in feed_rows:
                    key = (job.at[r], toks[r])
                    if key not in groups:
                        groups[key] = len(items)
                        items.append(key)
                    new_at[r] = groups[key]         # index in this feed, made packed below
                job.at = new_at
                if last:
                    job.finished = True
                    finishing.append(job)
            riding = []
            for job in jobs:
                if job.comp is not None:
                    tok = job.comp.step()
                    if tok is None:
                        job.comp = None
                    else:
                        riding.append(job)
                        items.append((job.comp_at, tok))
            if items:
                logits, base = forest.feed(items)
                for job in active:              # in-feed indices -> packed indices
                    job.at = [None if a is None else base + a for a in job.at]
                n_roll = len(items) - len(riding)
                for k, job in enumerate(riding):
                    job.comp_at = base + n_roll + k
                    job.comp.logits = logits[n_roll + k]
            for job in finishing:               # (nothing fed: no row has a line to keep)
                job.cands = self._candidates(job, forest, logits, base)
            if lone and jobs[0].finished:
                if jobs[0].comp is not None:     # the completion goes on alone
                    self._finish_alone(jobs[0].comp, forest.context_kv(jobs[0].comp_at), None)
                break
            if all(j.finished for j in jobs) and all(j.comp is None for j in jobs):
                break
            t += 1
        return [job.cands for job in jobs]

    def _draw(self, job: _Job, t: int, sources, tp, ti) -> dict[int, int]:
        """Step t of a job's rollouts: row 0 greedy, the others by their keyed uniforms."""
        toks: dict[int, int] = {}
        for r in range(len(job.rows)):
            if job.done[r] or job.at[r] is None:
                continue
            b = sources[job.at[r]]
            j = 0 if r == 0 else pick(tp[b], float(job.req.uniforms[r - 1, t]))
            tok = int(ti[b, j])
            job.rows[r].append(tok)
            job.probs[r] *= float(tp[b, j])
            job.done[r] = self.lm.is_stop_token(tok)
            toks[r] = tok
        return toks

    def _finish_alone(self, comp: Completion, state: KV | None, node: Node | None) -> None:
        def advance(tok, state):
            lg, state = self.forward(torch.tensor([[tok]]), past=state if state is not None
                                     else self.path_kv(node))
            return lg[0], state
        comp.finish(state, advance)

    def _candidates(self, job: _Job, forest, logits, base: int) -> list[Candidate]:
        """A finished job's kept candidates; those whose last token was fed in the pass just run
        get their line's KV and logits (they become nodes with caches)."""
        length = job.req.length
        cands = kept_candidates(job.rows, job.probs, length, job.req.keep)
        for r, c in cands.items():
            g = job.at[r]
            if (forest is not None and g is not None and g >= base and not job.done[r]
                    and len(job.rows[r]) == length and forest.depth[g] == length - 1):
                c.kv = forest.line_kv(g)
                c.logits = logits[g - base].clone()
        return list(cands.values())

    def commit(self, root, child):
        super().commit(root, child)
        if child.terminal and child.kv is None:
            return
        self._ensure_one(child)
        child.kv = kv_cat([root.kv, child.kv])
        root.kv = None
        root.logits = None


class ReferenceEngine(TransformersEngine):
    """Batch 1, no KV kept across nodes, each request alone (module docstring)."""

    name = "reference"
    embed_one_by_one = True     # the public code encodes the path's texts one string at a time

    def _logits(self, ids: list[int]) -> torch.Tensor:
        return self.forward(torch.tensor([list(ids)], dtype=torch.long))[0][0]

    def start(self, prompt_ids):
        self.prefix_ids = list(prompt_ids)
        return Node(tokens=(), step=0, uid=0, logits=self._logits(prompt_ids))

    def ensure(self, nodes):
        for node in nodes:
            if node.logits is None:
                node.logits = self._logits(self.prefix_ids + node.response_tokens())

    def expand(self, requests):
        out = []
        for req in requests:
            if req.completion is not None:
                self._complete(req.node, req.completion)
            out.append(self._rollouts(req) if req.length > 0 else [])
        return out

    def _rollouts(self, req: Expansion) -> list[Candidate]:
        node, length, uniforms, keep = req.node, req.length, req.uniforms, req.keep
        base = self.prefix_ids + node.response_tokens()
        rows, probs = [], []
        for r in range(1 + uniforms.shape[0]):
            if len({tuple(x) for x in rows}) >= keep:
                break       # as the public code: no more attempts once enough are unique
            toks, pr, logits, kv = [], 1.0, node.logits, None
            for t in range(length):
                tp, ti = truncated(logits, self.top_k, self.temperature)
                j = 0 if r == 0 else pick(tp, float(uniforms[r - 1, t]))
                toks.append(int(ti[j]))
                pr *= float(tp[j])
                if self.lm.is_stop_token(toks[-1]) or t == length - 1:
                    break
                if kv is None:   # the public code's logits memo drops the cache: full prefix again
                    lg, kv = self.forward(torch.tensor([base + toks]))
                else:
                    lg, kv = self.forward(torch.tensor([[toks[-1]]]), past=kv)
                logits = lg[0]
            rows.append(toks)
            probs.append(pr)
        return list(kept_candidates(rows, probs, length, keep).values())

    def _complete(self, leaf: Node, req: CompletionRequest) -> None:
        base = self.prefix_ids + req.response

        def advance(tok, state):
            if state is None:
                logits, kv = self.forward(torch.tensor([base + req.out]))
            else:
                logits, kv = self.forward(torch.tensor([[tok]]), past=state)
            return logits[0], kv

        Completion(self.lm, req, leaf.logits).finish(None, advance)


ENGINES = MappingProxyType({"fast": CachedEngine, "cached": CachedEngine, "reference": ReferenceEngine})


def resolve_engine(lm: LanguageModel, engine: str) -> str:
    """The engine that runs. "auto" (the default) is the fast engine on every model with a
    per-token KV cache (its route, `lm.route`, is "packed" or "rows") and the reference engine on
    the others (state-space, recurrent, hybrid models); asking for "fast" on those is an error."""
    if engine != "auto" and engine not in ENGINES:
        raise ConfigError(f"Unknown engine {engine!r}; choose from {sorted(ENGINES) + ['auto']}.")
    if engine == "reference":
        return engine
    route = lm.route
    if route.kind == "reference":
        if engine == "auto":
            return "reference"
        raise ModelSupportError(
            f"engine={engine!r} needs a per-token KV cache, and {lm.name} has none: {route.reason}. "
            f"Use engine='auto' (or 'reference'): RAIN then runs through the reference-style engine.")
    return "fast" if engine == "auto" else engine
