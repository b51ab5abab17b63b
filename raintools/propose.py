"""Proposals: candidate token sets for expansion, clause completion, and the KV caches behind them.

Two engines implement the same operations with the same keyed random draws, so they propose the
same candidates:

* `CachedEngine` (the default, fast): every node keeps the KV of its own tokens; a node's cache
  extends its parent's, so each token of the tree is computed once; the greedy and sampled
  rollouts of one expansion run as one batch over the shared prefix (rollouts that drew the same
  tokens share a row; the last token is fed only for the kept candidates), and the leaf's clause
  completion rides in the same batch; committed prefixes are merged into the root and discarded
  subtrees free their caches with their nodes. One top-k and one host transfer per step.
* `ReferenceEngine`: the straightforward execution of the authors' public code (batch 1, each
  rollout and each clause completion recomputing the whole prefix once, no KV kept across nodes,
  the last rollout token never fed, embeddings one string at a time). For equivalence tests and
  the speed benchmark.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .models import KV, LanguageModel, kv_cat, kv_len, kv_repeat, kv_slice
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


def top_candidates(logits: torch.Tensor, k: int) -> list[Candidate]:
    """The k most likely next tokens; raw_p is the full-softmax probability, so normalising over
    any set of children equals the softmax truncated to that set (top-10 at expansion, top-(k+1)
    after node addition)."""
    probs = torch.softmax(logits.float(), dim=-1)
    vals, idx = torch.topk(probs, min(k, probs.shape[-1]))
    return [Candidate((int(i),), float(v)) for v, i in zip(vals.tolist(), idx.tolist())]


class Engine:
    """Shared logic; subclasses say how logits and caches are obtained."""

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
        """The completion stops at EOS, at a clause end, or when a user turn starts. Only the
        tail is decoded: the text before it was checked when it was generated (the leaf is not
        terminal, so it holds no user turn), and a clause end is the last character."""
        lm = self.lm
        if out and lm.is_stop_token(out[-1]):
            return True
        seq = response + out
        text = lm.decode(seq[-TAIL_TOKENS:])
        return ends_clause(text) or lm.chat.user_turn_index(text) >= 0

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
        """Greedy + sampled rollouts of `length` tokens as one batch over the node's cached path.

        Rollouts that have drawn the same tokens so far share one batch row (so a token is fed
        once however many rollouts drew it), and at the last step only the candidates that will
        be kept are fed (their KV and logits become the new nodes'). With `completion` (a clause
        completion of the same node) the completion runs as one more row of the same batch, so
        its steps cost no forward pass of their own; it finishes alone if it is longer."""
        lm = self.lm
        past = self.path_kv(node)
        start = kv_len(past)
        rows_n = 1 + uniforms.shape[0]
        rows = [[] for _ in range(rows_n)]
        probs = [1.0] * rows_n
        done = [False] * rows_n
        at: list[int | None] = [0] * rows_n      # batch row holding each rollout's state
        comp = completion if completion is not None and not completion.done else None
        comp_at = 0
        logits = node.logits.unsqueeze(0)        # batch row 0: the node itself
        kv = past
        if comp is not None:
            comp.logits = node.logits
        for t in range(length):
            # one top-k over all batch rows and one transfer to the host per step
            tp, ti = truncated(logits, self.top_k, self.temperature)
            tp, ti = tp.cpu(), ti.cpu()
            toks: dict[int, int] = {}
            for r in range(rows_n):
                if done[r] or at[r] is None:
                    continue
                b = at[r]
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
            groups: dict[tuple[int, int], int] = {}
            parents, feed = [], []
            new_at: list[int | None] = [None] * rows_n
            for r in feed_rows:
                key = (at[r], toks[r])
                if key not in groups:
                    groups[key] = len(feed)
                    parents.append(at[r])
                    feed.append(toks[r])
                new_at[r] = groups[key]
            if comp is not None:
                tok = comp.step()
                if tok is None:
                    comp = None
                else:
                    parents.append(comp_at)
                    feed.append(tok)
                    comp_at = len(feed) - 1
            at = new_at
            if not feed:
                break
            if parents != list(range(kv[0][0].shape[0])):
                index = torch.tensor(parents, device=kv[0][0].device)
                kv = [(k.index_select(0, index), v.index_select(0, index)) for k, v in kv]
            logits, kv = lm.forward(torch.tensor(feed).unsqueeze(1), past=kv)
            if comp is not None:
                comp.logits = logits[comp_at]
            if last:
                break
        chosen = self._finish(rows, probs, keep)
        cands = []
        for r in chosen:
            c = Candidate(tuple(rows[r]), probs[r])
            b = at[r]
            if (b is not None and not done[r] and len(rows[r]) == length
                    and kv_len(kv) - start == len(rows[r])):
                c.kv = kv_slice(kv, start, start + len(rows[r]), row=b)
                c.logits = logits[b].clone()
            cands.append(c)
        samples = [c.raw_p for c in cands[1:]]
        cands[0].raw_p = clamp_greedy(cands[0].raw_p, samples)
        if comp is not None:                  # the completion goes on alone
            state = [(k[comp_at:comp_at + 1], v[comp_at:comp_at + 1]) for k, v in kv]
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
