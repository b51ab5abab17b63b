"""Simulations in flight without a round barrier, on a logical clock, their forward passes
packed together.

`RainSearch` with K = `RainConfig.parallel_simulations` > 1 runs K *slots*, each the sequential
simulation loop (select, expand and complete, judge, back up) on its own thread. What a slot asks
of the engine or the judge is a *request* (`Flow.request`) that lasts a fixed number of logical
ticks, whatever engine serves it: an expansion 1 + the longer of its rollout length and its clause
completion's tokens, a node addition 1 + its rollout length, a judgement 1. A slot's search code
between requests takes no time. The slots touch the tree one at a time, in the order of the tick
their last request is due at (slot order on ties), so the tree, the committed tokens and the
counters (forward passes aside) do not depend on how many passes an engine takes for a request.

Requests run as soon as they are made, side by side: the requests of every slot in flight are
served together. On an engine that calls the forward it was given (the transformers engines), the
`Flow` is that forward: a call parks its slot, and when every slot with a request has parked, the
parked calls run as one forward pass (`packed_pass`), so one pass carries the next tokens of every
simulation in flight (rollout steps, clause completions, judge passes, node caches); the slots'
engine code runs one slot at a time. On an engine whose calls may run at once (`Engine.concurrent`,
a server that batches them), each slot's requests go out from its own thread. A slot whose request
is done waits for its tick; one whose simulation is backed up starts its next walk at once.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Sequence

import torch

from .batch import ForwardArgs, own_logits, request_mask, request_positions, side_by_side, wanted_logits
from .models import ForwardStats, kv_cat, kv_gather, kv_len


class Aborted(Exception):
    """Another slot failed: this one unwinds."""


def packed_pass(forward, reqs: Sequence[ForwardArgs]) -> list[tuple]:
    """Forward requests of one row (ids [1, s], a 4D mask or none) as one pass: their pasts
    concatenated, their tokens in one sequence, each token seeing exactly its own request's past
    and tokens (a 4D mask) at its own positions, so each computes what it would alone (up to float
    rounding). Returns each request's (logits, KV) as its own pass would."""
    lens = [(kv_len(r.past), int(r.input_ids.shape[1])) for r in reqs]
    tp, ts = sum(p for p, _ in lens), sum(s for _, s in lens)
    mask = torch.zeros(ts, tp + ts, dtype=torch.bool)
    pos, want, po, so = [], [], 0, 0
    for (_, _, am, all_logits, pids, at), (p, s) in zip(reqs, lens):
        m = request_mask(am, p, s)[0, 0]
        mask[so:so + s, po:po + p], mask[so:so + s, tp + so:tp + so + s] = m[:, :p], m[:, p:]
        pos.append(request_positions(pids, p, s)[0])
        want.append(so + wanted_logits(s, all_logits, at)[0])
        po, so = po + p, so + s
    logits, kv = forward(torch.cat([r.input_ids for r in reqs], dim=1),
                         past=kv_cat([r.past for r in reqs]) or None, attention_mask=mask[None, None],
                         position_ids=torch.cat(pos)[None], logits_at=torch.cat(want)[None])
    out, at, so = [], 0, 0
    for r, (p, s), w in zip(reqs, lens, want):
        out.append((own_logits(logits[:, at:at + len(w)], r.all_logits, r.logits_at),
                    kv_cat([r.past, kv_gather(kv, range(tp + so, tp + so + s))])))
        at, so = at + len(w), so + s
    return out


class Flow:
    """The slots' schedule (module docstring), and the forward callable of the search's engine (at
    every K) and of its judge at K > 1. `merge=False` runs the parked calls one by one (same
    schedule), for comparison with the packing; calls of several rows or with 2D masks (the "rows"
    route) always run so. `concurrent`: the slots' requests run on their own threads
    (`Engine.concurrent`).

    `stats`: this search's own forward passes and tokens: what `base` (the counters `forward`
    counts in: `lm.stats`, shared by every search on the model, or a batch client's) gained during
    this search's calls (`counting`; passes run one at a time)."""

    def __init__(self, forward: Callable, base: ForwardStats, merge: bool = True, concurrent: bool = False):
        self.forward, self.base, self.merge, self.concurrent = forward, base, merge, concurrent
        self.stats = ForwardStats()
        self.passes = 0                  # forward passes run for parked calls
        self.now = 0                     # the logical tick of the slot that last touched the tree
        self._cond = threading.Condition()
        self._local = threading.local()
        self._turn: int | None = None
        self._clock: dict[int, int] = {}           # slot -> its tick (a request's start while in flight)
        self._due: dict[int, int] = {}             # slot -> tick its finished request is due at
        self._busy: dict[int, Callable[[], int]] = {}   # slots with a request in flight -> its ticks so far
        self._runnable: list[int] = []             # slots in a request whose forward call is answered
        self._idle: set[int] = set()
        self._parked: dict[int, tuple] = {}
        self._results: dict[int, object] = {}
        self.error: BaseException | None = None

    @property
    def slot(self) -> int | None:
        return getattr(self._local, "slot", None)

    @contextmanager
    def counting(self):
        """Count the passes `base` gains meanwhile as this search's (`stats`)."""
        before = self.base.snapshot()
        try:
            yield
        finally:
            now = self.base.since(before)
            self.stats.calls += now.calls
            self.stats.tokens += now.tokens

    def _forward(self, *args, **kwargs):
        with self.counting():
            return self.forward(*args, **kwargs)

    @contextmanager
    def request(self, ticks: Callable[[], int], made: bool = True):
        """A slot's request to the engine or the judge (none when not `made`), lasting `ticks()`
        logical ticks. `ticks()` is read again while the request runs (it may grow, e.g. with a
        completion's tokens, but never shrink): what it gives then bounds when the slot can be due."""
        slot = self.slot
        if slot is None or not made:    # outside the slots (K = 1, start, commit): no schedule
            yield
            return
        with self._cond:
            self._busy[slot] = ticks
            if self.concurrent:
                self._release()
        answered = False
        try:
            yield
            answered = True
        finally:
            # back at its due tick; a failed request on its own thread too, before the slot's
            # unwinding touches the tree (its virtual loss, `in_flight`)
            with self._cond:
                del self._busy[slot]
                if answered or self.concurrent:
                    self._due[slot] = self._clock[slot] + max(1, int(ticks()))
                    self._cond.notify_all()
                    self._wait_turn(slot, release=not self.concurrent)

    def __call__(self, *args, **kwargs):
        slot = self.slot
        if slot is None or self.concurrent:      # outside the slots (K = 1, start, commit): a plain pass
            return self._forward(*args, **kwargs)
        if slot not in self._busy:
            raise RuntimeError("a slot ran a forward pass outside a request (Flow.request)")
        with self._cond:
            self._parked[slot] = ForwardArgs(*args, **kwargs)
            self._wait_turn(slot)
        out = self._results.pop(slot)
        if isinstance(out, BaseException):
            raise out
        return out

    def idle(self) -> None:
        """Give up the turn until a simulation is backed up (`wake`)."""
        with self._cond:
            self._idle.add(self.slot)
            self._wait_turn(self.slot)

    def wake(self) -> None:
        """The idle slots go on at the tick of the slot that calls this."""
        if self.slot is None:           # one simulation in flight: nobody to wake
            return
        with self._cond:
            self._due.update(dict.fromkeys(self._idle, self._clock[self.slot]))
            self._idle.clear()

    def _release(self) -> None:
        self._turn = None
        self._cond.notify_all()

    def _wait_turn(self, slot: int, release: bool = True) -> None:
        if release:
            self._release()
        while self._turn != slot:
            self._cond.wait()
        if self.error is not None:
            raise Aborted()

    def _next(self) -> int | None:
        """The slot to give the turn to, or None (a forward pass, or requests on their threads, to
        wait for). First slots whose forward call was answered; then the slot whose request is
        due first, once no request in flight can be due before it."""
        if self._runnable:
            return self._runnable.pop(0)
        if self.error is not None:        # unwind: every waiting slot raises Aborted
            for waiting in (self._due, self._parked):
                if waiting:
                    s = min(waiting)
                    del waiting[s]
                    return s
            return self._idle.pop() if self._idle else None
        if not self._due:
            return None
        key = min((t, s) for s, t in self._due.items())
        if any((self._clock[s] + max(1, int(ticks())), s) < key for s, ticks in self._busy.items()):
            return None
        del self._due[key[1]]
        self._clock[key[1]] = self.now = key[0]
        return key[1]

    def run(self, slots: Sequence[Callable[[], None]]) -> None:
        """Run the slots to their ends (module docstring); the first error of a slot is raised. One
        slot is the sequential search: it runs in the calling thread, with no schedule."""
        if len(slots) == 1:
            return slots[0]()
        self.error = None           # an earlier step's error (raised then) does not end this one
        done: set[int] = set()

        def body(i):
            self._local.slot = i
            try:
                with self._cond:
                    self._wait_turn(i, release=False)
                slots[i]()
            except BaseException as exc:  # noqa: BLE001 - raised by `run` below
                if not isinstance(exc, Aborted) and self.error is None:
                    self.error = exc
            finally:
                with self._cond:
                    done.add(i)
                    if self._turn == i:
                        self._turn = None
                    self._cond.notify_all()

        self._clock = dict.fromkeys(range(len(slots)), self.now)
        self._due = dict.fromkeys(range(len(slots)), self.now)
        side_by_side([body] * len(slots), serve=lambda: self._serve_or_unwind(done, len(slots)))
        if self.error is not None:
            raise self.error

    def _serve_or_unwind(self, done: set[int], k: int) -> None:
        """`_serve`; when it raises in the calling thread (e.g. Ctrl-C while it waits), the slots
        unwind first (each raises `Aborted`), then the error is raised: no slot is left waiting
        for a turn."""
        try:
            self._serve(done, k)
        except BaseException as exc:
            with self._cond:
                if self.error is None:
                    self.error = exc
                while self._turn is not None:
                    self._cond.wait()
                if not self.concurrent:     # parked calls taken for a pass it did not answer
                    self._runnable += sorted(set(self._busy) - set(self._parked) - set(self._runnable))
            self._serve(done, k)
            raise

    def _serve(self, done: set[int], k: int) -> None:
        while True:
            with self._cond:
                nxt = self._next()
                if nxt is not None:
                    self._turn = nxt
                    self._cond.notify_all()
                    while self._turn is not None:
                        self._cond.wait()
                    continue
                if not self._parked:
                    if self._busy:                 # requests on their own threads
                        self._cond.wait()
                        continue
                    if len(done) == k:
                        return
                    self._due.update(dict.fromkeys(self._idle, self.now))     # nobody left to wake them
                    if not self._idle and self.error is None:
                        self.error = RuntimeError("the slots' schedule stalled")     # a bug
                    self._idle.clear()
                    continue
                batch, self._parked = sorted(self._parked.items()), {}
            results = self._pass([r for _, r in batch])
            with self._cond:
                self._results.update(zip([s for s, _ in batch], results))
                self._runnable += [s for s, _ in batch]

    def _pass(self, reqs: list[ForwardArgs]) -> list:
        mergeable = [r.input_ids.shape[0] == 1 and (r.attention_mask is None or r.attention_mask.dim() == 4)
                     for r in reqs]
        try:
            if self.merge and len(reqs) > 1 and all(mergeable):
                self.passes += 1
                return packed_pass(self._forward, reqs)
            self.passes += len(reqs)
            return [self._forward(ids, past, attention_mask=am, all_logits=al, position_ids=pos, logits_at=at)
                    for ids, past, am, al, pos, at in reqs]
        except BaseException as exc:  # noqa: BLE001 - handed to the parked slots
            return [exc] * len(reqs)
