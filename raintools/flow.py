"""Simulations in flight without a round barrier, their forward passes packed together.

`RainSearch` with K = `RainConfig.parallel_simulations` > 1 runs K *slots*, each the sequential
simulation loop (select, expand and complete, judge, back up) on its own thread. A `Flow` is the
forward callable the search's engine and judge call: a call parks its slot; when every slot in
flight has parked (or is idle), the parked requests run as one forward pass (`packed_pass`), and
the slots go on one at a time in slot order until each parks again. So one pass carries the next
tokens of every simulation in flight (rollout steps, clause completions, judge passes, node
caches), a simulation that is backed up frees its slot for a new walk at once, and the run is
reproducible: only one slot runs at a time, in an order that does not depend on thread timing.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import torch

from .models import kv_cat, kv_gather, kv_len


class Aborted(Exception):
    """Another slot failed: this one unwinds."""


def _request(input_ids, past=None, attention_mask=None, all_logits=False, position_ids=None,
             logits_at=None) -> tuple:
    return input_ids, past, attention_mask, all_logits, position_ids, logits_at


def packed_pass(forward, reqs: Sequence[tuple]) -> list[tuple]:
    """Forward requests `(ids [1, s], past, 4D mask or None, all_logits, positions, logits_at)` as
    one pass: their pasts concatenated, their tokens in one sequence, each token seeing exactly its
    own request's past and tokens (a 4D mask) at its own positions, so each computes what it would
    alone (up to float rounding). Returns each request's (logits, KV) as its own pass would."""
    lens = [(kv_len(r[1]), int(r[0].shape[1])) for r in reqs]
    tp, ts = sum(p for p, _ in lens), sum(s for _, s in lens)
    mask = torch.zeros(ts, tp + ts, dtype=torch.bool)
    pos, want, po, so = [], [], 0, 0
    for (ids, past, am, all_logits, pids, at), (p, s) in zip(reqs, lens):
        m = (torch.ones(s, p + s, dtype=torch.bool).tril_(p) if am is None else am[0, 0].bool().cpu())
        mask[so:so + s, po:po + p], mask[so:so + s, tp + so:tp + so + s] = m[:, :p], m[:, p:p + s]
        pos.append(pids[0].cpu() if pids is not None else torch.arange(p, p + s))
        want.append(so + (torch.arange(s) if all_logits else at[0].cpu().long() if at is not None
                          else torch.tensor([s - 1])))
        po, so = po + p, so + s
    logits, kv = forward(torch.cat([r[0] for r in reqs], dim=1), past=kv_cat([r[1] for r in reqs]) or None,
                         attention_mask=mask[None, None], position_ids=torch.cat(pos)[None],
                         logits_at=torch.cat(want)[None])
    out, at, so = [], 0, 0
    for r, (p, s), w in zip(reqs, lens, want):
        lg = logits[:, at:at + len(w)]
        out.append((lg[:, 0] if not r[3] and r[5] is None else lg,
                    kv_cat([r[1], kv_gather(kv, range(tp + so, tp + so + s))])))
        at, so = at + len(w), so + s
    return out


class Flow:
    """The forward callable of a search with slots (module docstring). `merge=False` runs the
    parked requests one by one (same order, same schedule): what the packing is compared with.
    Requests of several rows or with 2D masks (the "rows" route) always run one by one."""

    def __init__(self, forward: Callable, stats, merge: bool = True):
        self.forward, self.stats, self.merge = forward, stats, merge
        self.passes = 0                  # forward passes run for parked requests
        self._cond = threading.Condition()
        self._local = threading.local()
        self._turn: int | None = None
        self._ready: list[int] = []
        self._idle: set[int] = set()
        self._parked: dict[int, tuple] = {}
        self._results: dict[int, object] = {}
        self.error: BaseException | None = None

    def __call__(self, *args, **kwargs):
        slot = getattr(self._local, "slot", None)
        if slot is None:                   # outside the slots (start, commit): a plain pass
            return self.forward(*args, **kwargs)
        with self._cond:
            self._parked[slot] = _request(*args, **kwargs)
            self._wait_turn(slot)
        out = self._results.pop(slot)
        if isinstance(out, BaseException):
            raise out
        return out

    def idle(self) -> None:
        """Give up the turn until `wake` (a simulation was backed up)."""
        with self._cond:
            self._idle.add(self._local.slot)
            self._wait_turn(self._local.slot)

    def wake(self) -> None:
        with self._cond:
            self._ready += sorted(self._idle)
            self._idle.clear()

    def _wait_turn(self, slot: int, release: bool = True) -> None:
        if release:
            self._turn = None
            self._cond.notify_all()
        while self._turn != slot:
            self._cond.wait()
        if self.error is not None:
            raise Aborted()

    def run(self, slots: Sequence[Callable[[], None]]) -> None:
        """Run the slots to their ends (module docstring); the first error of a slot is raised."""
        def body(i, fn):
            self._local.slot = i
            try:
                with self._cond:
                    self._wait_turn(i, release=False)
                fn()
            except BaseException as exc:  # noqa: BLE001 - raised by `run` below
                if not isinstance(exc, Aborted) and self.error is None:
                    self.error = exc
            finally:
                with self._cond:
                    done.add(i)
                    self._turn = None
                    self._cond.notify_all()

        done: set[int] = set()
        self._ready = list(range(len(slots)))
        threads = [threading.Thread(target=body, args=(i, fn), daemon=True) for i, fn in enumerate(slots)]
        for t in threads:
            t.start()
        while True:
            with self._cond:
                if self._ready:
                    self._turn = min(self._ready)
                    self._ready.remove(self._turn)
                    self._cond.notify_all()
                    while self._turn is not None:
                        self._cond.wait()
                    continue
                if not self._parked:
                    if len(done) == len(slots):
                        break
                    self._ready, self._idle = sorted(self._idle), set()   # nobody left to wake them
                    continue
                batch, self._parked = sorted(self._parked.items()), {}
            results = self._pass([r for _, r in batch])
            with self._cond:
                self._results.update(zip([s for s, _ in batch], results))
                self._ready += [s for s, _ in batch]
        for t in threads:
            t.join()
        if self.error is not None:
            raise self.error

    def _pass(self, reqs: list[tuple]) -> list:
        mergeable = [r[0].shape[0] == 1 and (r[2] is None or r[2].dim() == 4) for r in reqs]
        try:
            if self.merge and len(reqs) > 1 and all(mergeable):
                self.passes += 1
                return packed_pass(self.forward, reqs)
            self.passes += len(reqs)
            return [self.forward(ids, past, attention_mask=am, all_logits=al, position_ids=pos, logits_at=at)
                    for ids, past, am, al, pos, at in reqs]
        except BaseException as exc:  # noqa: BLE001 - handed to the parked slots
            return [exc] * len(reqs)
