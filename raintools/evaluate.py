"""Evaluation: the model judges its own text.

An *evaluator* is anything callable as `evaluator(query, response) -> value in [-1, 1]`. RAIN,
best-of-N and the notebooks' simulated judges all go through this one interface.

`SelfEvaluator` is the paper's self-evaluation: the conversation goes into a fixed few-shot judging
prompt (ours, in `raintools/templates/*.txt`) that ends in two options and an open "(", so the
next token is an option letter. The prompt is asked twice with the options in both orders; each
order votes for the positive label (e.g. "harmless") when its letter is more likely, and
`v = 2 * votes / orders - 1`, so with two orders v is in {-1, 0, +1}. `mode="soft"` returns the
mean probability margin instead. A template may add a third label (a `neutral:` line, e.g. the
sentiment template; `JudgeTemplate.labels` and `SelfEvaluator._value` say how it is asked and voted).
An evaluation reuses the longest start of its prompt computed before (`SelfEvaluator.__call__`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import string
from collections import OrderedDict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable

import torch

from .engines import Forest
from .errors import ConfigError
from .models import KV, LanguageModel, common_start, kv_cat, kv_gather, kv_len, kv_slice, split_common

Evaluator = Callable[[str, str], float]

LETTERS = string.ascii_uppercase


@dataclass
class JudgeTemplate:
    name: str
    header: str
    conversation: str      # has {query}
    response: str          # has {response}
    question: str          # has {option_a}, {option_b}, ...
    positive: str
    negative: str
    others: tuple[str, ...] = ()
    # what the judge answers with, by position in an order (default "A", "B", ...): the text that
    # follows the question, e.g. (" Yes", " No") after a question ending in "?"
    letters: tuple[str, ...] | None = None
    single_order: bool = False   # ask the template order only (one vote, v in {-1, +1})

    @property
    def labels(self) -> tuple[str, ...]:
        """Template order. A third label goes between the two, so the reversed order swaps the
        positive and negative letters and keeps the neutral one in place: a model that always
        picks one letter then scores 0, as with two labels (were the negative label in the middle,
        a model that always says "B" would vote negative in both orders)."""
        return (self.positive, *self.others, self.negative)

    def orders(self) -> list[tuple[str, ...]]:
        """The label orders asked: template order, then reversed (the paper's swap); the
        template order alone for a `single_order` template."""
        return [self.labels] if self.single_order else [self.labels, self.labels[::-1]]

    def option_letters(self) -> tuple[str, ...]:
        """The answer text of each position in an order ("A", "B", ... unless the template
        names its own)."""
        return self.letters or tuple(LETTERS[: len(self.labels)])

    def question_text(self, order: tuple[str, ...]) -> str:
        return self.question.format(**{f"option_{LETTERS[i].lower()}": lab for i, lab in enumerate(order)})

    def full_text(self, query: str, response: str, order: tuple[str, ...]) -> str:
        """The whole judging prompt as one string (what the judge tokenises: `SelfEvaluator.prompt_ids`)."""
        return (self.header + self.conversation.format(query=query)
                + self.response.format(response=response.strip()) + self.question_text(order))


def load_template(name_or_path: str = "harm") -> JudgeTemplate:
    """Read a judging template by name (package data) or from a file path."""
    name, folder = name_or_path, resources.files("raintools.templates")
    if name.endswith(".txt") or "/" in name:
        text = Path(name).read_text(encoding="utf-8")
    else:
        try:
            text = folder.joinpath(f"{name}.txt").read_text("utf-8")
        except FileNotFoundError:
            avail = sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))
            raise ConfigError(f"Unknown judging template {name!r}; available: {avail}") from None
    sections: dict[str, list[str]] = {}
    for line in text.split("\n"):
        m = re.match(r"^### (\w+)\s*$", line)
        if m:
            sections[m.group(1)] = lines = []
        elif sections:
            lines.append(line)
    body = {k: "\n".join(v) for k, v in sections.items()}
    if body.get("question", "").endswith("\n"):
        body["question"] = body["question"][:-1]
    missing = {"labels", "header", "conversation", "response", "question"} - set(body)
    if missing:
        raise ConfigError(f"Judging template {name!r} lacks sections {sorted(missing)}.")
    labels = dict(line.split(":", 1) for line in body["labels"].splitlines() if ":" in line)
    labels = {k.strip(): v.strip() for k, v in labels.items()}
    # optional settings among the labels: `letters: [" Yes", " No"]` (a JSON list, one answer
    # text per position) and `orders: 1` (the template order only)
    letters = labels.pop("letters", None)
    n_orders = labels.pop("orders", "2")
    others = tuple(v for k, v in labels.items() if k not in ("positive", "negative"))
    if letters is not None:
        try:
            letters = tuple(json.loads(letters))
        except ValueError:
            raise ConfigError(f"Judging template {name!r}: 'letters' must be a JSON list of "
                              f"strings, got {letters!r}.") from None
        if len(letters) != 2 + len(others) or not all(isinstance(x, str) and x for x in letters):
            raise ConfigError(f"Judging template {name!r}: 'letters' needs one non-empty string "
                              f"per label, got {list(letters)}.")
    if n_orders not in ("1", "2"):
        raise ConfigError(f"Judging template {name!r}: 'orders' must be 1 or 2, got {n_orders!r}.")
    return JudgeTemplate(name=name, header=body["header"], conversation=body["conversation"],
                         response=body["response"], question=body["question"],
                         positive=labels["positive"], negative=labels["negative"], others=others,
                         letters=letters, single_order=n_orders == "1")


def option_token_ids(tokenizer, context: str, letters: str = "AB") -> list[int]:
    """Token id of each option letter as it follows `context` (e.g. '...Answer: ('), derived from
    the tokenizer: tokenise context + letter and take the one extra token. Raises a clear error if
    a letter does not come out as exactly one new token."""
    base = tokenizer(context, add_special_tokens=False)["input_ids"]
    ids = []
    for letter in letters:
        full = tokenizer(context + letter, add_special_tokens=False)["input_ids"]
        if len(full) != len(base) + 1 or full[: len(base)] != base:
            raise ConfigError(
                f"The tokenizer does not split the option letter {letter!r} into one token after "
                f"{context[-12:]!r}; change the template's question ending.")
        ids.append(int(full[-1]))
    if len(set(ids)) != len(ids):
        raise ConfigError("Option letters map to the same token id.")
    return ids


@dataclass
class EvalStats:
    calls: int = 0           # evaluations computed by the model
    tokens_needed: int = 0   # tokens each evaluation must compute (its non-shared suffix)


class SelfEvaluator:
    """The paper's self-evaluation (module docstring). `cached=False` runs the public code's
    execution (the whole prompt once per order, batch 1), the benchmark's baseline."""

    def __init__(self, lm: LanguageModel, template: str | JudgeTemplate = "harm", mode: str = "votes",
                 cached: bool = True, query_cache_size: int = 8, response_cache_size: int = 16):
        if mode not in ("votes", "soft"):
            raise ConfigError(f"mode must be 'votes' or 'soft', got {mode!r}")
        self.lm, self.mode, self.cached = lm, mode, cached
        self.forward = lm.forward       # a batch of searches gives each fork its own (raintools.batch)
        self.template = template if isinstance(template, JudgeTemplate) else load_template(template)
        self.orders = self.template.orders()
        self.letter_ids = option_token_ids(lm.tokenizer, self.template.question_text(self.orders[0]),
                                           self.template.option_letters())
        self.stats = EvalStats()
        self._header: tuple[tuple[int, ...], KV] | None = None
        self._query_cache_size, self._response_cache_size = query_cache_size, response_cache_size
        self.forget_queries()
        self.last_probs: list[list[float]] = []
        self.last_ids: list[list[int]] = []      # the ids judged last, one list per order

    # -- values from letter probabilities
    def _value(self, probs_per_order: list[torch.Tensor]) -> float:
        """probs_per_order[i][j]: probability of letter j in order i (renormalised over letters).

        Each order votes +1 when the positive label's letter is strictly the most likely, -1 when
        the negative label's letter is at least as likely as every other, and 0 when a third
        label (e.g. "neutral") wins; v is the mean vote. Soft: mean of p(positive) - p(negative)
        (with two labels, `2 p(positive) - 1`)."""
        pos, neg = self.template.positive, self.template.negative
        votes, soft = 0.0, 0.0
        for order, p in zip(self.orders, probs_per_order):
            p = [float(x) for x in p]
            j, k = order.index(pos), order.index(neg)
            if p[j] > max(x for i, x in enumerate(p) if i != j):
                votes += 1
            elif p[k] >= max(x for i, x in enumerate(p) if i != k):
                votes -= 1
            soft += p[j] - p[k]
        n = len(self.orders)
        return votes / n if self.mode == "votes" else soft / n

    def _letter_probs(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float(), dim=-1)[..., self.letter_ids]
        return probs / probs.sum(dim=-1, keepdim=True).clamp_min(1e-30)

    # -- the judging prompt
    def prompt_texts(self, query: str, response: str) -> list[str]:
        """The judging prompt for (query, response), one string per option order."""
        return [self.template.full_text(query, response, order) for order in self.orders]

    def prompt_ids(self, query: str, response: str) -> list[list[int]]:
        """The token ids the judge reads for (query, response), one list per option order: each
        order's whole prompt tokenised as one string (after the BOS token where the tokenizer
        adds one). Both executions feed exactly these ids: tokenising the prompt in pieces would
        give other ids (SentencePiece tokenizers put a word-start marker at each piece's start)."""
        bos = self.lm.bos()
        return [bos + self.lm.encode(text) for text in self.prompt_texts(query, response)]

    # -- cached execution
    def _encode_header(self) -> tuple[tuple[int, ...], KV]:
        """The judging header's ids and KV, computed once per model. Its last token is left out:
        in a whole prompt it may merge with the conversation that follows."""
        if self._header is None:
            lm = self.lm
            ids = tuple((lm.bos() + lm.encode(self.template.header))[:-1])
            _, kv = self.forward(torch.tensor([list(ids)]))
            self.stats.tokens_needed += len(ids)
            self._header = (ids, kv)
        return self._header

    def _query_cut(self, query: str, trunk: list[int]) -> int:
        """Where the query's part of the prompt `trunk` ends: a token boundary that the whole
        prompt shares with the header + conversation text alone, less one token (the token at the
        cut may merge with the response that follows)."""
        t = self.template
        alone = self.lm.bos() + self.lm.encode(t.header + t.conversation.format(query=query))
        return max(common_start((trunk, alone)) - 1, 1)

    def _query_entry(self, query: str, trunk: list[int]) -> tuple[tuple[int, ...], KV]:
        """The ids and KV (from position 0) of the prompt up to the query's end (`_query_cut`),
        for this query: made from the first prompt that shows it, computed over the header's KV."""
        if query in self._queries:
            self._queries.move_to_end(query)
            return self._queries[query]
        h_ids, h_kv = self._encode_header()
        cut = self._query_cut(query, trunk)
        h = min(common_start((trunk, h_ids)), cut - 1)
        past = [(k[:, :, :h], v[:, :, :h]) for k, v in h_kv] if h > 0 else None
        _, kv = self.forward(torch.tensor([trunk[h:cut]]), past=past)
        self.stats.tokens_needed += cut - h
        entry = (tuple(trunk[:cut]), kv)
        self._queries[query] = entry
        while len(self._queries) > self._query_cache_size:
            old, _ = self._queries.popitem(last=False)
            self._responses.pop(old, None)
            self._seen.pop(old, None)
        return entry

    def forget_queries(self) -> None:
        """Drop the per-query caches (encoded conversations and judged responses); the encoded
        judging header is kept. The evaluation runner calls this before each answer so that an
        answer's cost does not depend on what was judged before it."""
        self._queries: OrderedDict[str, tuple[tuple[int, ...], KV]] = OrderedDict()
        # per query: judge KV of recently judged responses (LRU), and a trie of every response
        # prefix judged so far (what a new evaluation must compute is what the trie lacks)
        self._responses: dict[str, OrderedDict[tuple, KV]] = {}
        self._seen: dict[str, dict] = {}

    def fork(self, forward=None) -> "SelfEvaluator":
        """A view of this evaluator for one of several concurrent searches
        (`rain_generate_batch`) that runs its passes through `forward`: it shares the encoded
        judging header and keeps its own query caches and statistics. Where the header is not
        encoded yet, this fork encodes it and counts its tokens, as a shared judge's first call does."""
        twin = copy.copy(self)
        twin.forward = forward or self.forward
        twin.stats = EvalStats()
        twin.forget_queries()
        twin.last_probs, twin.last_ids = [], []
        if self.cached and self._header is None:
            self._header = twin._encode_header()
        return twin

    def __call__(self, query: str, response: str) -> float:
        """The value of `response` for `query`: the one judging path. The longest start of the
        prompt computed before (header, query, a response judged before) is reused; the rest goes
        into one packed sequence (`raintools.engines.Forest`) after the query's KV and the reused
        start: the prompt's common ids, then each order's ending, which sees only its own prompt.
        On the "rows" route one batch row per order; on the reference route (no per-token KV to
        share) and with `cached=False`, the whole prompt once per order."""
        self.stats.calls += 1
        route = self.lm.route.kind
        if not self.cached or route == "reference":
            return self._reference(query, response)
        job = self._job(query, response)
        if route != "packed":
            return self._judge_rows(query, job)
        trunk, tails, q_kv, rest, m, q = job
        # the packed past: the query's KV, then the reused judged start; the prompt sees its first
        # m positions: of the query's KV (fewer than all where the prompt splits the query's
        # tokens), then of its start
        chunks, view = {"query": q_kv}, [("query", min(m, kv_len(q_kv)))]
        if rest is not None:
            chunks["judged"] = rest
            view.append(("judged", m - q))
        forest = Forest(self.forward, chunks, view)
        items = [(i - 1, tok) for i, tok in enumerate(trunk[m:])]   # the line, from the anchor (-1)
        line, ends = len(items) - 1, []
        for tail in tails:
            p = line
            for tok in tail:
                items.append((p, tok))
                p = len(items) - 1
            ends.append(p)
        logits, first = forest.feed(items, logits_at=ends)
        chunk = None
        if q >= 0 and len(trunk) > q:   # the judge KV of the prompt's ids after the query's: its
            fed = forest.line_positions(first + line) if line >= 0 else []   # seen start, its line
            chunk = kv_gather(forest.kv, forest.seen()[q:] + fed)
        return self._judged(query, job, chunk, self._letter_probs(logits))

    def _job(self, query: str, response: str):
        """A prompt to judge and the longest start of it computed before: (the common ids of its
        orders, each order's ending, the query's KV (`_query_entry`), the KV of a judged prompt's
        ids reused after the query's or None, the length m of the start not fed again, the
        query's length q, or -1 where the prompt splits the query's tokens: no reuse past m then).
        Every cached KV is keyed by the exact ids it was computed from, so a start is reused only
        where the ids agree. With nothing left to feed, the last id is fed again (its logits are
        needed)."""
        trunk, tails = split_common(self.prompt_ids(query, response))
        q_ids, q_kv = self._query_entry(query, trunk)
        m, q, best, rest = common_start((trunk, q_ids)), -1, None, None
        if m == len(q_ids):
            q, cache = m, self._responses.setdefault(query, OrderedDict())
            for ids in cache:
                n = common_start((trunk, ids), q)
                if n > m:
                    best, m = ids, n
            if best is not None:
                cache.move_to_end(best)
                rest = [(k[:, :, :m - q], v[:, :, :m - q]) for k, v in cache[best]]
        if not any(tails) and m >= len(trunk):
            m -= 1
        return trunk, tails, q_kv, rest, m, q

    def _judge_rows(self, query: str, job) -> float:
        """One prompt on the "rows" route: the rest of its common ids + each order's ending as its
        own batch row after the reused start, right-padded (a causal model never looks at the
        padding after a row's end), no mask."""
        trunk, tails, q_kv, rest, m, q = job
        past = [(k[:, :, :m], v[:, :, :m]) for k, v in kv_cat([q_kv, rest])]
        seqs = [trunk[m:] + t for t in tails]
        width = max(len(x) for x in seqs)
        pad = self.lm.tokenizer.pad_token_id or 0
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in seqs])
        ends = torch.tensor([[len(x) - 1] for x in seqs])
        rows = [(k.expand(len(seqs), -1, -1, -1), v.expand(len(seqs), -1, -1, -1)) for k, v in past]
        logits, out = self.forward(ids, past=rows or None, logits_at=ends)
        chunk = kv_slice([(k[:1], v[:1]) for k, v in out], q, len(trunk)) if 0 <= q < len(trunk) else None
        return self._judged(query, job, chunk, self._letter_probs(logits[:, 0]))

    def _judged(self, query, job, chunk: KV | None, probs: torch.Tensor) -> float:
        """One prompt's value from its orders' letter probabilities; every judging path ends here.
        Where the prompt holds the query's ids whole (q >= 0), its judge KV after them (`chunk`)
        is kept (LRU) and its ids after them go into the query's trie of judged ids: what it
        needs is counted as what no earlier evaluation of the query computed."""
        trunk, tails, _, _, m, q = job
        new = len(trunk) - m
        if q >= 0:
            if len(trunk) > q and self._response_cache_size > 0:
                cache = self._responses.setdefault(query, OrderedDict())
                cache[tuple(trunk)] = chunk
                cache.move_to_end(tuple(trunk))
                while len(cache) > self._response_cache_size:
                    cache.popitem(last=False)
            node, new = self._seen.setdefault(query, {}), 0
            for t in trunk[q:]:
                new += t not in node
                node = node.setdefault(t, {})
        self.stats.tokens_needed += new + sum(len(t) for t in tails)
        self.last_ids = [trunk + t for t in tails]
        self.last_probs = probs.tolist()
        return self._value(list(probs))

    # -- reference-style execution (cached=False, the reference route)
    def _reference(self, query: str, response: str) -> float:
        per_order = self.prompt_ids(query, response)
        probs = torch.stack([self._letter_probs(self.forward(torch.tensor([ids]))[0][0])
                             for ids in per_order])
        trunk, tails = split_common(per_order)
        m = self._query_cut(query, trunk)     # counted as the cached path counts a new query's prompt
        return self._judged(query, (trunk, tails, None, None, m, -1), None, probs)


def judge_text(evaluator: Evaluator, query: str, text: str) -> float:
    """The evaluator's value of `text` for `query`, checked to lie in [-1, 1]."""
    value = float(evaluator(query, text))
    if not -1.0 <= value <= 1.0:
        raise ConfigError(f"The evaluator returned {value}, outside [-1, 1].")
    return value


def self_evaluator(lm: LanguageModel, template: str = "harm", mode: str = "votes") -> SelfEvaluator:
    """The model's self-evaluator, created once per (model, template, mode) so the encoded judging
    header is reused across prompts and calls."""
    cache = lm.__dict__.setdefault("_evaluators", {})
    if (template, mode) not in cache:
        cache[template, mode] = SelfEvaluator(lm, template=template, mode=mode)
    return cache[template, mode]


@dataclass
class SimulatedJudge:
    """A clearly labelled *simulated* evaluator of controlled accuracy, for teaching: it knows the
    true label of each response (from `truth(query, response) -> bool`, True = good) and reports it
    correctly with probability `accuracy`, else the opposite. Deterministic per (query, response)."""

    truth: Callable[[str, str], bool]
    accuracy: float = 1.0
    seed: int = 0
    calls: int = field(default=0, init=False)

    def __post_init__(self):
        if not 0.0 <= self.accuracy <= 1.0:
            raise ConfigError(f"accuracy must be in [0, 1], got {self.accuracy}")

    def __call__(self, query: str, response: str) -> float:
        self.calls += 1
        h = hashlib.sha256(f"{self.seed}\x00{query}\x00{response}".encode()).digest()
        u = int.from_bytes(h[:8], "big") / 2**64
        good = bool(self.truth(query, response))
        correct = u < self.accuracy
        return 1.0 if good == correct else -1.0
