"""The RAIN search tree: nodes, the selection score, back-up, the similarity update, the
node-addition test and the commit (re-rooting). Pure Python plus small tensors of statistics:
no model, no prompts, so every rule is unit-testable with numbers alone.

Notation follows the paper: a node is a *token set* extending its parent's text; `n` is its visit
count (a float, since similarity updates add fractions), `fn` its real integer visits, `q` its
running-mean value in [-1, 1], `p` its prior.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, Callable, Iterator

import torch

from .sampling import TIE, keyed_rng


@dataclass(eq=False)
class Node:
    tokens: tuple[int, ...]
    parent: "Node | None" = None
    step: int = 0               # absolute depth from the start of the response
    uid: int = 0
    p: float = 0.0              # prior used by selection (normalised among siblings)
    raw_p: float = 0.0          # unnormalised proposal probability (kept to renormalise)
    n: float = 0.0
    fn: int = 0
    q: float = 0.0
    children: list["Node"] = field(default_factory=list)
    embedding: torch.Tensor | None = None
    terminal: bool = False
    virtual: int = 0            # simulations in flight through this node (K > 1)
    # model-side state, filled by an engine (KV chunk of this node's own tokens, logits after it)
    kv: Any = None
    logits: torch.Tensor | None = None

    @property
    def is_root(self) -> bool:
        return self.parent is None

    def path_from_root(self) -> list["Node"]:
        path, node = [], self
        while node is not None:
            path.append(node)
            node = node.parent
        return path[::-1]

    def response_tokens(self) -> list[int]:
        """Tokens from the current root (exclusive) down to this node (inclusive)."""
        return [t for node in self.path_from_root()[1:] for t in node.tokens]

    def walk(self) -> Iterator["Node"]:
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def child_with_tokens(self, tokens) -> "Node | None":
        tokens = tuple(tokens)
        return next((ch for ch in self.children if ch.tokens == tokens), None)


@dataclass
class Bounds:
    """Running bounds of q kept at the root for normalisation; start at [-1, 1], only widen."""
    qmin: float = -1.0
    qmax: float = 1.0

    def widen(self, q: float) -> None:
        self.qmin = min(self.qmin, q)
        self.qmax = max(self.qmax, q)


VIRTUAL_LOSS = -1.0
"""The value an in-flight simulation counts with until its real value is backed up."""


def selection_score(child: Node, parent_n: float, bounds: Bounds, c: float) -> float:
    """qh + c * p * sqrt(parent.n) / (1 + n), with qh = 0 for an unvisited child; each simulation
    in flight through the child (K > 1) counts as one more visit of value `VIRTUAL_LOSS`."""
    n, q = child.n, child.q
    virtual = getattr(child, "virtual", 0)        # records of a trace (no flight) have none
    if virtual:
        q = (q * n + VIRTUAL_LOSS * virtual) / (n + virtual)
        n = n + virtual
    qh = 0.0 if n == 0 else (q - bounds.qmin) / (bounds.qmax - bounds.qmin + 1e-5)
    return qh + c * child.p * math.sqrt(parent_n) / (1.0 + n)


def select_child(node: Node, bounds: Bounds, c: float,
                 tie: Callable[[list[Node]], Node] | None = None) -> Node | None:
    """The child maximising the selection score; None without children. Children whose scores
    are exactly equal go to `tie(tied)` (tied in the children's order; the search passes its
    `RainConfig.tie_break`), or to the first one when `tie` is None."""
    tied, best_score = [], -math.inf
    for ch in node.children:
        s = selection_score(ch, node.n + node.virtual, bounds, c)
        if s > best_score:
            tied, best_score = [ch], s
        elif s == best_score:
            tied.append(ch)
    if not tied:
        return None
    return tied[0] if tie is None or len(tied) == 1 else tie(tied)


def tie_rule(rule: str, seed: int, node: Node, one_token_level: bool):
    """How `select_child` breaks exact ties among `node`'s children (`RainConfig.tie_break`):
    "random": a draw keyed by (seed, node, its visits and paths in flight), the same in every
    engine and batch; "public": the public code's order (its 1-token level listed the children by
    rising token id; its longer levels greedy first, then the samples), the first wins."""
    if rule == "public":
        return (lambda tied: min(tied, key=lambda ch: ch.tokens)) if one_token_level else None
    return lambda tied: tied[int(keyed_rng(seed, TIE, node.uid, node.fn, node.virtual).integers(len(tied)))]


def add_virtual_loss(path: list[Node], count: int = 1) -> None:
    """Mark (count = 1) or unmark (count = -1) a simulation in flight along `path`."""
    for node in path:
        node.virtual += count
        if node.virtual < 0:
            raise ValueError("virtual loss removed more often than added")


def set_priors(node: Node, root_mix: float) -> None:
    """Normalise the children's raw proposal probabilities into priors; children of the current
    root get (1 - m) p + m / k (the paper's 0.75 p + 0.25 uniform)."""
    raw = [max(ch.raw_p, 0.0) for ch in node.children]
    total = sum(raw)
    for ch, r in zip(node.children, raw):
        ch.p = r / total if total > 0 else 1.0 / len(raw)
    if node.is_root:
        mix_root_priors(node, root_mix)


def mix_root_priors(root: Node, root_mix: float) -> None:
    """Mix normalised priors of the root's children with uniform: (1 - m) p + m / k, renormalised."""
    k = len(root.children)
    if k == 0 or root_mix <= 0:
        return
    ps = [(1 - root_mix) * ch.p + root_mix / k for ch in root.children]
    s = sum(ps)
    for ch, p in zip(root.children, ps):
        ch.p = p / s


def backup(path: list[Node], v: float, bounds: Bounds) -> None:
    """Undiscounted back-up of value `v` along `path` (root first): n += 1, fn += 1,
    q += (v - q) / n; the root's bounds widen with every non-root q."""
    for node in path:
        node.n += 1
        node.fn += 1
        node.q += (v - node.q) / node.n
        if not node.is_root:
            bounds.widen(node.q)


def update_embedding(node: Node, emb: torch.Tensor) -> None:
    """Running mean over real visits (call after `backup`, which has counted this visit)."""
    emb = emb.detach().float().cpu()
    if node.embedding is None:
        node.embedding = emb.clone()
    else:
        node.embedding = node.embedding + (emb - node.embedding) / max(node.fn, 1)


def similarity_update(node: Node, v: float, gamma: float, threshold: float) -> list[tuple[Node, float]]:
    """Share `v` with siblings whose embedding has cosine similarity >= threshold with `node`'s:
    w = gamma * s; q_sib = (q_sib n_sib + w v) / (n_sib + w); n_sib += w.
    Returns the (sibling, weight) pairs that were updated."""
    if node.parent is None or node.embedding is None:
        return []
    sibs = [s for s in node.parent.children if s is not node and s.embedding is not None]
    if not sibs:
        return []
    mat = torch.stack([s.embedding for s in sibs])
    sims = torch.nn.functional.cosine_similarity(mat, node.embedding.unsqueeze(0), dim=-1)
    updated = []
    for sib, s in zip(sibs, sims.tolist()):
        if s < threshold:
            continue
        w = gamma * s
        sib.q = (sib.q * sib.n + w * v) / (sib.n + w)
        sib.n += w
        updated.append((sib, w))
    return updated


def embedding_variance_norm(node: Node) -> float | None:
    """Norm of the per-dimension (unbiased) variance of the children's embeddings, or None when
    some child has no embedding yet."""
    if len(node.children) < 2 or any(ch.embedding is None for ch in node.children):
        return None     # the unbiased variance of a single embedding is undefined
    var = torch.var(torch.stack([ch.embedding for ch in node.children]), dim=0)
    return float(torch.linalg.vector_norm(var))


def needs_node_addition(node: Node, max_children: int, variance_factor: float, length: int) -> bool:
    """Dynamic node addition fires when the node has fewer than `max_children` children, all with
    embeddings, whose variance norm is below factor * token-set length, and all children's q < 0
    (the candidates are too alike and all look bad: propose more). `length`: the token-set length
    of the node's level (`RainSearch.level_length`), not a child's."""
    if not node.children or len(node.children) >= max_children:
        return False
    norm = embedding_variance_norm(node)
    if norm is None or math.isnan(norm):
        return False
    return norm < variance_factor * length and max(ch.q for ch in node.children) < 0


def most_visited(node: Node) -> Node | None:
    """The child with the largest n, ties broken by q, then the first (the commit rule of the code)."""
    return max(node.children, key=lambda ch: (ch.n, ch.q), default=None)


def sample_by_visits(node: Node, u: float) -> Node | None:
    """The child drawn with probability proportional to n (the paper's description), using the
    uniform number `u` in [0, 1)."""
    if not node.children:
        return None
    total = sum(ch.n for ch in node.children)
    if total <= 0:
        return most_visited(node)
    cumulative = list(accumulate(ch.n / total for ch in node.children))   # may end just below 1
    return node.children[min(bisect_right(cumulative, u), len(node.children) - 1)]


def reroot(child: Node, root_mix: float) -> Node:
    """Commit `child`: it becomes the root with its subtree and statistics; its siblings and
    their subtrees are dropped (the rewind). Its children's priors get the root mix."""
    old = child.parent
    if old is not None:
        old.children = [child]   # release the siblings' subtrees (and their caches)
    child.parent = None
    mix_root_priors(child, root_mix)
    return child
