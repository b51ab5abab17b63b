"""Several leaves' work in one packed sequence: the engine side of parallel simulations.

A parallel round (`RainConfig.parallel_simulations = K`, see `raintools.search`) selects up to K
leaves and then computes what each needs (its node cache, its expansion rollouts, its clause
completion) together. `Forest` packs *token lines* that grow from several anchors into one
sequence after one past: the past holds the union of the anchors' cached paths (every tree node's
KV chunk once, the root's prefix once), and a 4D mask lets each new token see exactly its
anchor's path and its own line, at the position it would have alone. So one forward pass per
step serves all K leaves, and each token computes what it would compute alone (up to float
rounding): the single-leaf packed rollout of `CachedEngine.rollouts`, for many leaves.

`ensure_many` computes the caches of several nodes in one pass; `rollouts_many` runs several
leaves' greedy + sampled rollouts and clause completions together, with the same keyed draws as
the one-leaf engine, so it proposes the same candidates (tested).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .models import KV, LanguageModel, kv_cat, kv_gather, kv_len
from .propose import Candidate, Completion, clamp_greedy
from .sampling import pick, truncated
from .tree import Node


class Forest:
    """Token lines grown from several anchors in one packed sequence (module docstring).

    `past`: the KV all lines may draw on; each anchor is (visible, base): a bool vector over the
    past's positions it sees, and the position its first new token takes. Packed tokens are
    numbered in feeding order; a token's `prev` is the packed token before it on its line, or
    `-1 - j` for a line that starts at anchor j."""

    def __init__(self, lm: LanguageModel, past: KV, anchors: Sequence[tuple[torch.Tensor, int]]):
        self.lm = lm
        self.kv = past
        self.start = kv_len(past)
        self.visible = (torch.stack([a[0] for a in anchors]) if anchors
                        else torch.zeros(0, self.start, dtype=torch.bool))
        self.base = [int(a[1]) for a in anchors]
        self.anchor: list[int] = []      # per packed token: its anchor
        self.depth: list[int] = []       # per packed token: its depth below its anchor (0 = first)
        self.line: list[list[int]] = []  # per packed token: its line, first token first
        self.tokens: list[int] = []

    @classmethod
    def from_nodes(cls, lm: LanguageModel, nodes: Sequence[Node]) -> "Forest":
        """Anchors at tree nodes (all with caches): the past is the union of their cached paths."""
        offset: dict[Node, int] = {}
        chunks, at = [], 0
        paths = [n.path_from_root() for n in nodes]
        for path in paths:
            for n in path:
                if n not in offset:
                    offset[n] = at
                    chunks.append(n.kv)
                    at += kv_len(n.kv)
        anchors = []
        for path in paths:
            vis = torch.zeros(at, dtype=torch.bool)
            base = 0
            for n in path:
                size = kv_len(n.kv)
                vis[offset[n]: offset[n] + size] = True
                base += size
            anchors.append((vis, base))
        return cls(lm, kv_cat(chunks), anchors)

    def anchor_of(self, prev: int) -> int:
        return -1 - prev if prev < 0 else self.anchor[prev]

    def feed(self, items: Sequence[tuple[int, int]], logits_at: Sequence[int] | None = None):
        """One forward pass over new tokens `items` = [(prev, token)]; a prev may be a token of
        this same feed (earlier in the list). Returns the logits of every new token [S, vocab]
        (or of the new tokens at the indices `logits_at` of this feed, [len, vocab]) and the
        packed index of the first new token."""
        first = len(self.tokens)
        for prev, tok in items:
            j = self.anchor_of(prev)
            self.anchor.append(j)
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
        if logits_at is None:
            logits, self.kv = self.lm.forward(ids, past=self.kv, attention_mask=mask[None, None],
                                              position_ids=pos, all_logits=True)
        else:
            at = torch.tensor([list(logits_at)])
            logits, self.kv = self.lm.forward(ids, past=self.kv, attention_mask=mask[None, None],
                                              position_ids=pos, logits_at=at)
        return logits[0], first

    def line_positions(self, g: int) -> list[int]:
        return [self.start + a for a in self.line[g]]

    def line_kv(self, g: int) -> KV:
        """The KV of packed token g's line (its anchor's path excluded), copied."""
        return kv_gather(self.kv, self.line_positions(g))


def ensure_many(engine, nodes: Sequence[Node]) -> None:
    """Node caches (KV of the node's own tokens, logits after it) for several nodes whose parents
    have theirs, in one packed pass; what `engine.ensure` does for one node."""
    todo = [n for n in dict.fromkeys(nodes) if n.logits is None]
    for n in todo:                       # parents first (never needed inside a round)
        if n.parent is not None and n.parent.logits is None:
            engine.ensure(n.parent)
    if not todo:
        return
    if len(todo) == 1:
        engine.ensure(todo[0])
        return
    forest = Forest.from_nodes(engine.lm, [n.parent for n in todo])
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


@dataclass
class RolloutJob:
    """One leaf's work in a round: `length`-token rollouts (0: none) with the keyed `uniforms`
    [attempts, length], keeping `keep` candidates, and/or a clause `completion`."""
    node: Node
    length: int
    uniforms: np.ndarray
    keep: int
    completion: Completion | None = None
    # state
    rows: list = field(default_factory=list)
    probs: list = field(default_factory=list)
    done: list = field(default_factory=list)
    at: list = field(default_factory=list)
    cands: list = field(default_factory=list)
    comp_at: int = 0
    finished: bool = False


def rollouts_many(engine, jobs: Sequence[RolloutJob]) -> list[list[Candidate]]:
    """Rollouts and clause completions of several leaves in shared packed passes; per job the
    candidates `engine.rollouts(node, length, uniforms, keep, completion=...)` would return (the
    same draws, so the same tokens up to float ties), with each kept candidate's KV and logits.
    Each completion is advanced to its end (its last token is never fed)."""
    lm = engine.lm
    forest = Forest.from_nodes(lm, [j.node for j in jobs])
    for i, job in enumerate(jobs):
        n = 1 + job.uniforms.shape[0] if job.length > 0 else 0
        job.rows, job.probs, job.done, job.at = [[] for _ in range(n)], [1.0] * n, [False] * n, [-1 - i] * n
        job.finished = job.length <= 0
        job.comp_at = -1 - i
        if job.completion is not None:
            if job.completion.done:
                job.completion = None
            else:
                job.completion.logits = job.node.logits
    logits, base = None, 0
    t = 0
    while True:
        active = [j for j in jobs if not j.finished]
        # one top-k over every distribution a rollout draws from at this step, one host transfer
        sources: dict[int, int] = {}
        for job in active:
            for r in range(len(job.rows)):
                if not job.done[r] and job.at[r] is not None:
                    sources.setdefault(job.at[r], len(sources))
        if sources:
            stack = torch.stack([jobs[-1 - g].node.logits if g < 0 else logits[g - base] for g in sources])
            tp, ti = truncated(stack, engine.top_k, engine.temperature)
            tp, ti = tp.cpu(), ti.cpu()
        items: list[tuple[int, int]] = []
        finishing: list[RolloutJob] = []
        for job in active:
            toks: dict[int, int] = {}
            for r in range(len(job.rows)):
                if job.done[r] or job.at[r] is None:
                    continue
                b = sources[job.at[r]]
                j = 0 if r == 0 else pick(tp[b], float(job.uniforms[r - 1, t]))
                tok = int(ti[b, j])
                job.rows[r].append(tok)
                job.probs[r] *= float(tp[b, j])
                job.done[r] = lm.is_stop_token(tok)
                toks[r] = tok
            last = t == job.length - 1 or all(job.done)
            if all(job.done):
                feed_rows = []
            elif last:
                kept = set(engine._finish(job.rows, job.probs, job.keep))
                feed_rows = [r for r in toks if r in kept and not job.done[r]]
            else:
                feed_rows = [r for r in toks if not job.done[r]]
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
        comp_items = []
        for job in jobs:
            c = job.completion
            if c is None:
                continue
            tok = c.step()
            if tok is None:
                job.completion = None
            else:
                comp_items.append(job)
                items.append((job.comp_at, tok))
        if not items:
            for job in finishing:
                job.cands = _candidates(engine, job, None, None, base)
            if all(j.finished for j in jobs):
                break
            t += 1
            continue
        logits, first = forest.feed(items)
        base = first
        for job in active:                  # in-feed indices -> packed indices
            job.at = [None if a is None else first + a for a in job.at]
        n_roll = len(items) - len(comp_items)
        for k, job in enumerate(comp_items):
            job.comp_at = first + n_roll + k
            job.completion.logits = logits[n_roll + k]
        for job in finishing:
            job.cands = _candidates(engine, job, forest, logits, base)
        if all(j.finished for j in jobs) and all(j.completion is None for j in jobs):
            break
        t += 1
    return [job.cands for job in jobs]


def _candidates(engine, job: RolloutJob, forest: Forest | None, logits, base: int) -> list[Candidate]:
    """A finished job's kept candidates; those whose last token was fed in the pass just run get
    their line's KV and logits (they become nodes with caches)."""
    if job.length <= 0:
        return []
    chosen = engine._finish(job.rows, job.probs, job.keep)
    cands = []
    for r in chosen:
        c = Candidate(tuple(job.rows[r]), job.probs[r])
        g = job.at[r]
        if (forest is not None and g is not None and g >= base and not job.done[r]
                and len(job.rows[r]) == job.length and forest.depth[g] == job.length - 1):
            c.kv = forest.line_kv(g)
            c.logits = logits[g - base].clone()
        cands.append(c)
    cands[0].raw_p = clamp_greedy(cands[0].raw_p, [c.raw_p for c in cands[1:]])
    return cands
