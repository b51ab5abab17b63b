"""The transformers engines (`raintools.engine.Engine`), `CachedEngine` (the default, "fast") and
`ReferenceEngine`, and the rules every engine shares: candidates, the completion's stopping rule.
Both engines make the same keyed random draws, so they propose the same candidates.
"""

from __future__ import annotations

from itertools import accumulate
from types import MappingProxyType
from typing import Callable, Hashable, Mapping, Sequence

import torch

from .engine import Candidate, CompletionRequest, Forward
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
    first: dict[tuple[int, ...], int] = {}
    for r, row in enumerate(rows):
        first.setdefault(tuple(row), r)        # each distinct row at its first index: greedy (0) first
    return list(first.values())[:max(keep, 1)]


def kept_candidates(rows: list[list[int]], probs: list[float], length: int,
                    keep: int) -> dict[int, Candidate]:
    """Every engine's candidates of a request, by row index: the kept rows (`kept_rows`) with
    length-matched priors, the greedy one clamped against the samples."""
    cands = {r: Candidate(tuple(rows[r]), length_matched(probs[r], len(rows[r]), length))
             for r in kept_rows(rows, keep)}
    cands[0].raw_p = clamp_greedy(cands[0].raw_p, [c.raw_p for r, c in cands.items() if r > 0])
    return cands


def clause_done(lm: LanguageModel, response: list[int], out: list[int], until: str = "clause") -> bool:
    """RAIN's stopping rule of a completion (`CompletionRequest`), for every engine. Only the tail
    is decoded: the text before it was checked when it was generated (the leaf is not terminal, so
    it holds no user turn), and a clause end is the last character."""
    if out and lm.is_stop_token(out[-1]):
        return True
    tail = (response + out)[-TAIL_TOKENS:]
    if until == "clause" and ends_clause(lm.decode(tail)):
        return True
    return lm.has_user_turn(tail)


def cached_path(node: Node) -> list[Node]:
    """The path from the root to `node`, each node on it holding the KV of its own tokens (else a
    past built from it would silently lack them: refused)."""
    path = node.path_from_root()
    for n in path:
        if n.kv is None:
            raise RuntimeError(f"Node {n.uid} on the path to node {node.uid} has no KV cache; "
                               "give it one first (CachedEngine.ensure).")
    return path


class Completion:
    """A clause completion in progress (the sampler of a `CompletionRequest`): `step()` draws the
    next token from `logits` and returns the token to feed next, or None once the completion is
    finished (its last token is never fed). Writes `out` and `fed` into the request."""

    def __init__(self, lm: LanguageModel, req: CompletionRequest, logits: torch.Tensor | None):
        self.lm, self.req, self.logits = lm, req, logits
        req.out, req.fed = [], 0
        self.done = req.max_tokens <= 0 or bool(req.response) and clause_done(lm, req.response, [], req.until)

    def step(self) -> int | None:
        if self.done:
            return None
        req = self.req
        tok = sample_full(self.logits, float(req.rng.random()))
        req.out.append(tok)
        if clause_done(self.lm, req.response, req.out, req.until) or len(req.out) >= req.max_tokens:
            self.done = True
            return None
        req.fed += 1
        return tok

    def finish(self, advance) -> None:
        """Go on alone: `advance(token, state) -> (logits, state)` per fed token (`state`: None at
        the first)."""
        state = None
        while (tok := self.step()) is not None:
            self.logits, state = advance(tok, state)


class TransformersEngine:
    """What the transformers engines share; subclasses say how logits and caches are obtained."""

    embed_one_by_one = False
    concurrent = False

    def __init__(self, lm: LanguageModel, top_k: int = 15, temperature: float = 1.0,
                 forward: Forward | None = None):
        self.lm, self.top_k, self.temperature = lm, top_k, temperature
        self.forward = forward or lm.forward
        self.stats: ForwardStats = getattr(forward, "stats", None) or lm.stats
        self.prefix_ids: list[int] = []     # prompt + committed tokens

    def commit(self, root: Node, child: Node) -> None:
        self.prefix_ids = self.prefix_ids + list(child.tokens)

    def judge(self, evaluator):
        return evaluator

    def _next(self, ids: list[int], past: KV | None) -> tuple[torch.Tensor, KV]:
        """The logits after `ids` and the cache: the whole of `ids` without a past, else only its
        last token after `past`."""
        logits, kv = self.forward(torch.tensor([ids] if past is None else [ids[-1:]]), past=past)
        return logits[0], kv


class Forest:
    """Token lines grown from one anchor in one packed sequence after one past.

    The past is the KV `chunks` (by key) in order, each once; the anchor sees the first n positions
    of each chunk (key, n) of `view`, and a line's first token takes the position after all it
    sees. Packed tokens are numbered in feeding order; a token's `prev` is the packed token before
    it on its line, or -1 for a line's first token. A 4D mask lets each new token see exactly the
    anchor's visible past and its own line, at the position it would have alone, so each token
    computes what it would compute alone (up to float rounding)."""

    def __init__(self, forward: Forward, chunks: Mapping[Hashable, KV],
                 view: Sequence[tuple[Hashable, int]]):
        self.forward = forward
        self.kv = kv_cat(list(chunks.values()))
        self.start = kv_len(self.kv)
        offset = dict(zip(chunks, accumulate(map(kv_len, chunks.values()), initial=0)))
        self.visible = torch.zeros(self.start, dtype=torch.bool)
        for key, n in view:
            self.visible[offset[key]:offset[key] + n] = True
        self.base = sum(n for _, n in view)
        self.line: list[list[int]] = []  # per packed token: its line (packed indices), first token first

    @classmethod
    def from_node(cls, forward: Forward, node: Node) -> "Forest":
        """Anchored at a tree node (with its cache): the past is its cached path."""
        path = cached_path(node)
        return cls(forward, {n: n.kv for n in path}, [(n, kv_len(n.kv)) for n in path])

    def feed(self, items: Sequence[tuple[int, int]], logits_at: Sequence[int] | None = None):
        """One forward pass over new tokens `items` = [(prev, token)]; a prev may be a token of
        this same feed (earlier in the list). Returns the logits of every new token [S, vocab]
        (or of the new tokens at the indices `logits_at` of this feed) and the packed index of
        the first new token."""
        first = len(self.line)
        for prev, _ in items:
            self.line.append(([] if prev < 0 else self.line[prev]) + [len(self.line)])
        s = len(items)
        new = range(first, first + s)
        mask = torch.zeros(s, self.start + first + s, dtype=torch.bool)
        mask[:, :self.start] = self.visible
        rows = [i for i, g in enumerate(new) for _ in self.line[g]]
        cols = [self.start + a for g in new for a in self.line[g]]
        mask[rows, cols] = True
        ids = torch.tensor([[int(tok) for _, tok in items]])
        pos = torch.tensor([[self.base + len(self.line[g]) - 1 for g in new]])
        kw = dict(all_logits=True) if logits_at is None else dict(logits_at=torch.tensor([list(logits_at)]))
        logits, self.kv = self.forward(ids, past=self.kv, attention_mask=mask[None, None],
                                       position_ids=pos, **kw)
        return logits[0], first

    def line_positions(self, g: int) -> list[int]:
        return [self.start + a for a in self.line[g]]

    def line_kv(self, g: int) -> KV:
        """The KV of packed token g's line (the anchor's past excluded), copied."""
        return kv_gather(self.kv, self.line_positions(g))

    def seen(self) -> list[int]:
        """The positions of the past that the anchor sees."""
        return self.visible.nonzero().flatten().tolist()

    def context_kv(self, g: int) -> KV:
        """The KV of the anchor's past and packed token g's line: a compact cache to go on alone."""
        return kv_gather(self.kv, self.seen() + self.line_positions(g))


class Rows:
    """`Forest` on the "rows" route: each line is a batch row whose past is the row of the line it
    continues, fed in the pass before (plain decoding steps, the model's own masks)."""

    def __init__(self, forward: Forward, past: KV):
        self.forward, self.kv, self.start = forward, past, kv_len(past)
        self.size = self.base = 0        # packed tokens fed; the first of the last feed (its row 0)

    def feed(self, items: Sequence[tuple[int, int]]):
        src = torch.tensor([0 if p < 0 else p - self.base for p, _ in items])
        rows_kv = [(k.index_select(0, src.to(k.device)), v.index_select(0, src.to(v.device)))
                   for k, v in self.kv]
        logits, self.kv = self.forward(torch.tensor([t for _, t in items]).unsqueeze(1), past=rows_kv)
        self.base, self.size = self.size, self.size + len(items)
        return logits, self.base

    def line_kv(self, g: int) -> KV:
        return kv_slice(self.kv, self.start, row=g - self.base)

    def context_kv(self, g: int) -> KV:
        r = g - self.base
        return [(k[r:r + 1], v[r:r + 1]) for k, v in self.kv]


class CachedEngine(TransformersEngine):
    """Every node keeps the KV of its own tokens; a node's cache extends its parent's, so each token
    of the tree is computed once, and committed prefixes are merged into the root. A request's
    rollouts and its clause completion grow together in one `Forest`, one forward pass per step
    for all of them (`expand`); on a model whose route is "rows" (`raintools.routes`: ALiBi and
    others that a packed token tree cannot serve exactly) each line is its own batch row (`Rows`)."""

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
        return kv_cat([n.kv for n in cached_path(node)])

    def ensure(self, node):
        """The node's cache (KV of its own tokens, logits after it), its parent's first if needed."""
        if node.logits is not None:
            return
        self.ensure(node.parent)
        past = self.path_kv(node.parent)
        logits, kv = self.forward(torch.tensor([list(node.tokens)]), past=past)
        node.kv = kv_slice(kv, kv_len(past))
        node.logits = logits[0]

    def expand(self, req):
        """The one step loop: per step one forward pass, one top-k over every distribution a
        rollout (row 0 greedy, then one per row of `req.uniforms`) draws from and one host
        transfer. The completion finishes alone once the rollouts are done."""
        comp = None if req.completion is None else Completion(self.lm, req.completion, req.node.logits)
        if req.length <= 0:              # a completion with no rollout to ride with
            if comp is not None:
                self._finish_alone(comp, lambda: self.path_kv(req.node))
            return []
        forest = (Forest.from_node(self.forward, req.node) if self.packed
                  else Rows(self.forward, self.path_kv(req.node)))
        n = 1 + req.uniforms.shape[0]
        rows: list[list[int]] = [[] for _ in range(n)]
        probs, done = [1.0] * n, [False] * n
        at: list[int | None] = [-1] * n  # a row's last fed packed token (-1: the anchor, None: not fed)
        logits, base, comp_at = None, 0, -1
        for t in range(req.length):
            live = [r for r in range(n) if not done[r] and at[r] is not None]
            sources = {g: b for b, g in enumerate(dict.fromkeys(at[r] for r in live))}
            stack = torch.stack([req.node.logits if g < 0 else logits[g - base] for g in sources])
            tp, ti = (x.cpu() for x in truncated(stack, self.top_k, self.temperature))
            for r in live:
                b = sources[at[r]]
                j = 0 if r == 0 else pick(tp[b], float(req.uniforms[r - 1, t]))
                rows[r].append(int(ti[b, j]))
                probs[r] *= float(tp[b, j])
                done[r] = self.lm.is_stop_token(rows[r][-1])
            kept = kept_rows(rows, req.keep)
            # rows after `keep` distinct ones can no longer be kept (rows that differ now differ
            # at the end): they are fed no more, as the public code draws no more rows then
            cut = kept[-1] + 1 if len(kept) >= req.keep else n
            last = t == req.length - 1 or all(done[:cut])
            # one packed token per distinct (line, token); at the last step only the kept
            # candidates are fed: they need their last token's KV and logits
            groups: dict[tuple[int, int], int] = {}
            fed: list[int | None] = [None] * n
            for r in live:
                if r < cut and not done[r] and (not last or r in kept):
                    fed[r] = groups.setdefault((at[r], rows[r][-1]), len(groups))
            items = list(groups)
            tok = comp.step() if comp is not None else None
            if tok is not None:
                items.append((comp_at, tok))
            if items:
                logits, base = forest.feed(items)
            at = [None if a is None else base + a for a in fed]     # all None when nothing was fed
            if tok is not None:
                comp_at = base + len(items) - 1
                comp.logits = logits[len(items) - 1]
            if last:
                cands = kept_candidates(rows, probs, req.length, req.keep)
                for r, c in cands.items():     # fed in this last pass: they become nodes with caches
                    if at[r] is not None:
                        c.kv = forest.line_kv(at[r])
                        c.logits = logits[at[r] - base].clone()
                if tok is not None:            # the completion goes on alone
                    self._finish_alone(comp, lambda: forest.context_kv(comp_at))
                return list(cands.values())

    def _finish_alone(self, comp: Completion, past: Callable[[], KV]) -> None:
        """One pass per token the completion feeds; the first after `past()`, made only then."""
        comp.finish(lambda tok, kv: self._next([tok], kv if kv is not None else past()))

    def commit(self, root, child):
        super().commit(root, child)
        if child.terminal and child.kv is None:
            return
        self.ensure(child)
        child.kv = kv_cat([root.kv, child.kv])
        root.kv = root.logits = None


class ReferenceEngine(TransformersEngine):
    """The straightforward execution of the authors' public code: batch 1, no KV kept across nodes,
    each rollout and each clause completion computing the whole prefix in its first pass (the
    code's logits memo drops the cache), the last rollout token never fed, the path's texts
    embedded one at a time. For recurrent models, the equivalence tests and the speed benchmark."""

    name = "reference"
    embed_one_by_one = True

    def _logits(self, ids: list[int]) -> torch.Tensor:
        return self.forward(torch.tensor([list(ids)], dtype=torch.long))[0][0]

    def start(self, prompt_ids):
        self.prefix_ids = list(prompt_ids)
        return Node(tokens=(), step=0, uid=0, logits=self._logits(prompt_ids))

    def ensure(self, node):
        if node.logits is None:
            node.logits = self._logits(self.prefix_ids + node.response_tokens())

    def expand(self, req):
        if (comp := req.completion) is not None:
            head = self.prefix_ids + comp.response
            Completion(self.lm, comp, req.node.logits).finish(lambda tok, kv: self._next(head + comp.out, kv))
        if req.length <= 0:
            return []
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
                logits, kv = self._next(base + toks, kv)
            rows.append(toks)
            probs.append(pr)
        return list(kept_candidates(rows, probs, length, keep).values())


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
