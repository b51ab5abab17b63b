"""Proposals: candidate token sets for expansion, clause completion, and the KV caches behind them.

Two engines implement the same operations with the same keyed random draws, so they propose the
same candidates:

* `CachedEngine` (the default, fast): every node keeps the KV of its own tokens; a node's cache
  extends its parent's, so each token of the tree is computed once; the greedy and sampled
  rollouts of one expansion run as one batch over the shared prefix (rollouts that drew the same
  tokens share a row; the last token is fed only for the kept candidates), and the leaf's clause
  completion rides in the same batch; committed prefixes are merged into the root and discarded
  subtrees free their caches with their nodes. One top-k and one host transfer per step. On a
  model whose route is "rows" (`raintools.families`: ALiBi and others that a packed token tree
  cannot serve exactly) the rollouts run as one batch row per line instead, with the same draws.
* `ReferenceEngine`: the straightforward execution of the authors' public code (batch 1, each
  rollout and each clause completion recomputing the whole prefix once, no KV kept across nodes,
  the last rollout token never fed, embeddings one string at a time). For equivalence tests and
  the speed benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import ConfigError, ModelSupportError
from .models import KV, LanguageModel, kv_cat, kv_gather, kv_len, kv_slice
from .sampling import pick, sample_full, truncated
from .tree import Node

CLAUSE_END = (",", ".", "?", ":", ";", "\n")
TAIL_TOKENS = 32   # tokens decoded for the clause-end and user-turn tests (markers are shorter)


def ends_clause(text: str) -> bool:
    return bool(text) and text[-1] in CLAUSE_END


@dataclass
class Candidate:
    tokens: tuple[int, ...]
    raw_p: float
    kv: KV | None = None
    logits: torch.Tensor | None = None


def clamp_greedy(p_greedy: float, p_samples: list[float]) -> float:
    """The code's clamp of the greedy candidate's probability against the sampled ones."""
    if not p_samples:
        return p_greedy
    return max(min(p_greedy, sum(p_samples)), max(p_samples) + min(p_samples))


def top_candidates(logits: torch.Tensor, k: int, temperature: float = 1.0) -> list[Candidate]:
    """The k most likely next tokens; raw_p is the full-softmax probability (at `temperature`),
    so normalising over any set of children equals the softmax truncated to that set (top-10 at
    expansion, top-(k+1) after node addition)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    vals, idx = torch.topk(probs, min(k, probs.shape[-1]))
    return [Candidate((int(i),), float(v)) for v, i in zip(vals.tolist(), idx.tolist())]


def line_of(g: int, parent: list[int]) -> list[int]:
    """Packed indices of the line that ends at packed token g, first token first."""
    line = []
    while g >= 0:
        line.append(g)
        g = parent[g]
    return line[::-1]


def packed_step(start: int, parent: list[int], depth: list[int], feed: list[int], first: int):
    """Inputs of one packed rollout step: the tokens `feed` (packed indices first, first + 1, ...)
    after a KV holding the path (`start` positions) and the packed tokens before `first`. Each new
    token sees the path and its own line; its position is start + its depth. Returns
    (input_ids [1, S], position_ids [1, S], mask [1, 1, S, start + first + S], True = may attend)."""
    s = len(feed)
    mask = torch.zeros(s, start + first + s, dtype=torch.bool)
    mask[:, :start] = True
    for i in range(s):
        for a in line_of(first + i, parent):
            mask[i, start + a] = True
    pos = [start + depth[first + i] for i in range(s)]
    return torch.tensor([feed]), torch.tensor([pos]), mask[None, None]


class Engine:
    """Shared logic; subclasses say how logits and caches are obtained."""

    complete_until = "clause"     # or "turn": completions stop only at EOS / a user turn

    def __init__(self, lm: LanguageModel, top_k: int = 15, temperature: float = 1.0):
        self.lm = lm
        self.top_k = top_k
        self.temperature = temperature
        self.prefix_ids: list[int] = []     # prompt + committed tokens

    # -- to implement
    def start(self, prompt_ids: list[int]) -> Node: ...
    def ensure(self, node: Node) -> None: ...
    def rollouts(self, node: Node, length: int, uniforms: np.ndarray, keep: int) -> list[Candidate]: ...
    def complete(self, leaf: Node, response: list[int], rng: np.random.Generator,
                 max_tokens: int) -> tuple[list[int], int]: ...
    def commit(self, root: Node, child: Node) -> None:
        self.prefix_ids = self.prefix_ids + list(child.tokens)

    # -- shared pieces
    def _choose(self, logits_row: torch.Tensor, row: int, t: int, uniforms: np.ndarray):
        probs, idx = truncated(logits_row, self.top_k, self.temperature)
        j = 0 if row == 0 else pick(probs, float(uniforms[row - 1, t]))
        return int(idx[j]), float(probs[j])

    def _finish(self, rows: list[list[int]], probs: list[float], keep: int):
        """Greedy first, then the first unique samples (at most keep - 1); returns row indices."""
        seen = {tuple(rows[0])}
        chosen = [0]
        for r in range(1, len(rows)):
            t = tuple(rows[r])
            if t in seen:
                continue
            seen.add(t)
            chosen.append(r)
            if len(chosen) >= keep:
                break
        return chosen

    def _clause_done(self, response: list[int], out: list[int]) -> bool:
        """The completion stops at EOS, at a clause end (unless `complete_until == "turn"`), or
        when a user turn starts. Only the tail is decoded: the text before it was checked when it
        was generated (the leaf is not terminal, so it holds no user turn), and a clause end is
        the last character."""
        lm = self.lm
        if out and lm.is_stop_token(out[-1]):
            return True
        tail = (response + out)[-TAIL_TOKENS:]
        if self.complete_until == "clause" and ends_clause(lm.decode(tail)):
            return True
        return lm.has_user_turn(tail)

    def _complete_loop(self, leaf, response, rng, max_tokens, advance):
        c = Completion(self, response, rng, max_tokens, leaf.logits)
        state = None
        while not c.done:
            if c.step() is None:
                break
            c.logits, state = advance(c.out, state)
        return c.out, c.fed


class Completion:
    """A clause completion in progress: sample (full vocabulary) until the clause ends, EOS, a
    user turn, or `max_tokens`. `step()` draws the next token from `logits` and returns the token
    to feed next, or None when the completion is finished (its last token is never fed)."""

    def __init__(self, engine: Engine, response: list[int], rng: np.random.Generator, max_tokens: int,
                 logits: torch.Tensor):
        self.engine, self.response, self.rng, self.max_tokens = engine, response, rng, max_tokens
        self.logits = logits
        self.out: list[int] = []
        self.fed = 0
        self.done = max_tokens <= 0 or bool(response) and engine._clause_done(response, [])

    def step(self) -> int | None:
        tok = sample_full(self.logits, float(self.rng.random()))
        self.out.append(tok)
        if self.engine._clause_done(self.response, self.out) or len(self.out) >= self.max_tokens:
            self.done = True
            return None
        self.fed += 1
        return tok


class CachedEngine(Engine):
    """Each token computed once: per-node KV chunks, batched rollouts (see module docstring)."""

    fuses_completion = True     # `rollouts(..., completion=)` runs a clause completion in the batch

    def __init__(self, lm: LanguageModel, top_k: int = 15, temperature: float = 1.0):
        super().__init__(lm, top_k, temperature)
        route = lm.route
        if route.kind not in ("packed", "rows"):
            raise ModelSupportError(
                f"The fast engine needs a per-token KV cache, and {lm.name} has none: {route.reason}. "
                f"Use engine='reference' (or engine='auto', which picks it).")
        self.packed = route.packed      # False: one batch row per rollout line

    def start(self, prompt_ids):
        self.prefix_ids = list(prompt_ids)
        logits, kv = self.lm.forward(torch.tensor([prompt_ids]))
        return Node(tokens=(), step=0, uid=0, kv=kv, logits=logits[0])

    def path_kv(self, node: Node) -> KV:
        return kv_cat([n.kv for n in node.path_from_root()])

    def ensure(self, node):
        if node.logits is not None:
            return
        self.ensure(node.parent)
        past = self.path_kv(node.parent)
        logits, kv = self.lm.forward(torch.tensor([list(node.tokens)]), past=past)
        node.kv = kv_slice(kv, kv_len(past))
        node.logits = logits[0]

    def rollouts(self, node, length, uniforms, keep, completion: Completion | None = None):
        """Greedy + sampled rollouts of `length` tokens over the node's cached path, packed.

        All rollouts advance together, one forward pass per step, packed into one sequence after
        the path's KV (a token tree: each new token sees the path and its own line, through a 4D
        mask and explicit positions), so the shared path is neither copied per rollout nor
        re-read per row. Rollouts that have drawn the same tokens so far share their tokens (a
        token is fed once however many rollouts drew it), and at the last step only the
        candidates that will be kept are fed (their KV and logits become the new nodes'). With
        `completion` (a clause completion of the same node) the completion rides in the same
        passes as one more line, so its steps cost no forward pass of their own; it finishes alone
        if it is longer."""
        lm = self.lm
        past = self.path_kv(node)
        start = kv_len(past)
        rows_n = 1 + uniforms.shape[0]
        rows = [[] for _ in range(rows_n)]
        probs = [1.0] * rows_n
        done = [False] * rows_n
        # packed tokens fed so far, in feeding order (KV position start + index): the packed token
        # before each one on its line (-1: the node itself) and its depth below the node
        parent: list[int] = []
        depth: list[int] = []
        at: list[int | None] = [-1] * rows_n     # packed token whose logits give a rollout's next draw
        comp = completion if completion is not None and not completion.done else None
        comp_at = -1
        logits = node.logits.unsqueeze(0)        # logits of the tokens fed by the last pass ...
        base = -1                                # ... whose packed indices start here (-1: the node)
        kv = past
        if comp is not None:
            comp.logits = node.logits
        for t in range(length):
            # one top-k over the last pass's tokens and one transfer to the host per step
            tp, ti = truncated(logits, self.top_k, self.temperature)
            tp, ti = tp.cpu(), ti.cpu()
            toks: dict[int, int] = {}
            for r in range(rows_n):
                if done[r] or at[r] is None:
                    continue
                b = at[r] - base if at[r] >= 0 else 0
                j = 0 if r == 0 else pick(tp[b], float(uniforms[r - 1, t]))
                tok = int(ti[b, j])
                rows[r].append(tok)
                probs[r] *= float(tp[b, j])
                done[r] = lm.is_stop_token(tok)
                toks[r] = tok
            last = t == length - 1 or all(done)
            if all(done):
                feed_rows = []
            elif t == length - 1:
                # Only the candidates that will be kept need their last token's KV and logits.
                kept = set(self._finish(rows, probs, keep))
                feed_rows = [r for r in toks if r in kept and not done[r]]
            else:
                feed_rows = [r for r in toks if not done[r]]
            first = len(parent)
            groups: dict[tuple[int, int], int] = {}
            new_at: list[int | None] = [None] * rows_n
            feed: list[int] = []
            for r in feed_rows:
                key = (at[r], toks[r])
                if key not in groups:
                    groups[key] = first + len(feed)
                    parent.append(at[r])
                    feed.append(toks[r])
                new_at[r] = groups[key]
            if comp is not None:
                tok = comp.step()
                if tok is None:
                    comp = None
                else:
                    parent.append(comp_at)
                    feed.append(tok)
                    comp_at = first + len(feed) - 1
            at = new_at
            if not feed:
                break
            depth += [0 if parent[g] < 0 else depth[parent[g]] + 1 for g in range(first, len(parent))]
            if self.packed:
                ids, pos, mask = packed_step(start, parent, depth, feed, first)
                logits, kv = lm.forward(ids, past=kv, attention_mask=mask, position_ids=pos,
                                        all_logits=True)
                logits = logits[0]
            else:       # one row per line: its past is the row of the line it continues
                src = torch.tensor([max(parent[g] - base, 0) for g in range(first, len(parent))])
                rows_kv = [(k.index_select(0, src.to(k.device)), v.index_select(0, src.to(v.device)))
                           for k, v in kv]
                logits, kv = lm.forward(torch.tensor(feed).unsqueeze(1), past=rows_kv)
            base = first
            if comp is not None:
                comp.logits = logits[comp_at - base]
            if last:
                break
        chosen = self._finish(rows, probs, keep)
        cands = []
        for r in chosen:
            c = Candidate(tuple(rows[r]), probs[r])
            g = at[r]
            if (g is not None and g >= max(base, 0) and not done[r] and len(rows[r]) == length
                    and depth[g] == length - 1):
                if self.packed:
                    c.kv = kv_gather(kv, [start + a for a in line_of(g, parent)])
                else:
                    c.kv = kv_slice(kv, start, row=g - base)
                c.logits = logits[g - base].clone()
            cands.append(c)
        samples = [c.raw_p for c in cands[1:]]
        cands[0].raw_p = clamp_greedy(cands[0].raw_p, samples)
        if comp is not None:                  # the completion goes on alone
            state = past
            if comp_at >= 0 and self.packed:
                state = kv_cat([past, kv_gather(kv, [start + a for a in line_of(comp_at, parent)])])
            elif comp_at >= 0:           # the completion's own row of the last pass
                state = [(k[comp_at - base:comp_at - base + 1], v[comp_at - base:comp_at - base + 1])
                         for k, v in kv]
            while not comp.done:
                tok = comp.step()
                if tok is None:
                    break
                lg, state = lm.forward(torch.tensor([[tok]]), past=state)
                comp.logits = lg[0]
        return cands

    def complete(self, leaf, response, rng, max_tokens):
        self.ensure(leaf)

        def advance(out, state):
            past = state if state is not None else self.path_kv(leaf)
            logits, kv = self.lm.forward(torch.tensor([[out[-1]]]), past=past)
            return logits[0], kv

        return self._complete_loop(leaf, response, rng, max_tokens, advance)

    def commit(self, root, child):
        super().commit(root, child)
        if child.terminal and child.kv is None:
            return
        self.ensure(child)
        child.kv = kv_cat([root.kv, child.kv])
        root.kv = None
        root.logits = None


class ReferenceEngine(Engine):
    """Batch 1, no KV kept across nodes (see module docstring)."""

    embed_one_by_one = True     # the public code encodes the path's texts one string at a time

    def start(self, prompt_ids):
        self.prefix_ids = list(prompt_ids)
        return Node(tokens=(), step=0, uid=0, logits=self.lm.full_logits(prompt_ids))

    def ensure(self, node):
        if node.logits is None:
            node.logits = self.lm.full_logits(self.prefix_ids + node.response_tokens())

    def rollouts(self, node, length, uniforms, keep):
        lm = self.lm
        base = self.prefix_ids + node.response_tokens()
        rows_n = 1 + uniforms.shape[0]
        rows, probs = [], []
        for r in range(rows_n):
            if len({tuple(x) for x in rows}) >= keep:
                break       # as the public code: no more attempts once enough are unique
            toks, pr, logits, kv = [], 1.0, node.logits, None
            for t in range(length):
                tok, p = self._choose(logits, r, t, uniforms)
                toks.append(tok)
                pr *= p
                if lm.is_stop_token(tok) or t == length - 1:
                    break
                if kv is None:   # the public code's logits memo drops the cache: full prefix again
                    lg, kv = lm.forward(torch.tensor([base + toks]))
                else:
                    lg, kv = lm.forward(torch.tensor([[tok]]), past=kv)
                logits = lg[0]
            rows.append(toks)
            probs.append(pr)
        chosen = self._finish(rows, probs, keep)
        cands = [Candidate(tuple(rows[r]), probs[r]) for r in chosen]
        cands[0].raw_p = clamp_greedy(cands[0].raw_p, [c.raw_p for c in cands[1:]])
        return cands

    def complete(self, leaf, response, rng, max_tokens):
        self.ensure(leaf)
        base = self.prefix_ids + response

        def advance(out, state):
            if state is None:
                logits, kv = self.lm.forward(torch.tensor([base + out]))
            else:
                logits, kv = self.lm.forward(torch.tensor([[out[-1]]]), past=state)
            return logits[0], kv

        return self._complete_loop(leaf, response, rng, max_tokens, advance)


ENGINES = {"fast": CachedEngine, "cached": CachedEngine, "reference": ReferenceEngine}


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
