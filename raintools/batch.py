"""Many searches side by side (`side_by_side`, a thread pool), their forward passes batched.

`rain_generate_batch` runs one ordinary search per prompt. Each gets its own `Client` of a
`ForwardBatcher`: the forward callable its engine and its judge run (`RainSearch(forward=...)`,
`SelfEvaluator.fork(forward=...)`); `BatchedCall` for the embedder. The scheduler (the calling thread)
waits until every live search has a request waiting, then answers them all from as few passes as
the cost model allows: requests sorted by (new tokens, past length) join a group while one padded
pass costs less than two (`call_cost`: the fixed price of a pass in token units, large on a GPU);
a merged pass left-pads each past KV to the longest and gives explicit positions and a 4D mask, so
every row computes what it would alone (up to float rounding); embedder calls of a round become
one call. A round starts only when every search waits, so the grouping does not depend on thread
timing, and all draws are keyed by node: results equal `rain_generate` per prompt up to float
ties. `max_batch_bytes` caps one merged pass. Off the "packed" route (`raintools.routes`) only
same-shape requests without masks or positions are merged (rows stacked), so every family stays
exact.
"""

from __future__ import annotations

import heapq
import threading
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Sequence

import torch
from tqdm.auto import tqdm

from .models import KV, ForwardStats, LanguageModel, kv_len


@dataclass
class BatchStats:
    rounds: int = 0          # scheduler rounds (every live search waiting)
    requests: int = 0        # forward requests answered
    calls: int = 0           # forward passes run (merged or single)
    merged_calls: int = 0    # passes that served more than one request
    real_tokens: int = 0     # tokens the requests asked for
    padded_tokens: int = 0   # tokens fed, padding included
    fn_calls: int = 0        # batched embedder (or other) calls
    fn_requests: int = 0


class ForwardArgs(NamedTuple):
    """A forward request: the arguments of `LanguageModel.forward`, in its order."""
    input_ids: torch.Tensor
    past: KV | None = None
    attention_mask: torch.Tensor | None = None
    all_logits: bool = False
    position_ids: torch.Tensor | None = None
    logits_at: torch.Tensor | None = None


class _Request:
    """A request waiting for the scheduler: a list-function call ("fn": the function and its
    items) or a forward pass ("lm": `ForwardArgs`), with what its grouping reads: rows, new
    tokens `s`, past length `p`, bytes per KV token, and `plain` (no mask, default positions)."""

    __slots__ = ("worker", "kind", "args", "event", "result", "error", "rows", "s", "p",
                 "kv_token_bytes", "plain")

    def __init__(self, worker: int, kind: str, args: tuple):
        self.worker, self.kind, self.args = worker, kind, args
        self.event = threading.Event()
        self.result, self.error = None, None      # the answer, or the error it raised
        if kind == "lm":
            self.args = a = ForwardArgs(*args)
            self.plain = a.attention_mask is None and a.position_ids is None
            self.rows, self.s = map(int, a.input_ids.shape)
            self.p = kv_len(a.past)
            self.kv_token_bytes = sum(k[0, :, 0].nbytes + v[0, :, 0].nbytes for k, v in a.past or ())


class Client:
    """One search's side of a `ForwardBatcher`: a forward callable (the signature of
    `LanguageModel.forward`) whose passes are answered from merged ones (list functions such as
    the embedder: `BatchedCall`), and its own counters (`stats`: requests and tokens asked for)."""

    def __init__(self, batcher: "ForwardBatcher", slot: int):
        self.batcher, self.slot, self.stats = batcher, slot, ForwardStats()

    def __call__(self, *args, **kwargs):
        args = ForwardArgs(*args, **kwargs)
        self.stats.calls += 1
        self.stats.tokens += int(args.input_ids.numel())
        return self.batcher._submit(self, "lm", args)


class BatchedCall:
    """`fn` (a function of a list returning one row per item, e.g. the sentence embedder) called
    through a client: the calls of the searches of one round to the same `fn` become one call."""

    def __init__(self, client: Client, fn: Callable[[list], torch.Tensor]):
        self.client, self.fn = client, fn

    def __call__(self, items: Sequence) -> torch.Tensor:
        return self.client.batcher._submit(self.client, "fn", (self.fn, list(items)))


# The calling thread waits in steps of this many seconds. Python runs signal handlers in the main
# thread only, between bytecodes; a Ctrl-C the kernel delivers to another thread (it may pick any)
# does not interrupt the main thread's wait for a lock, so an untimed wait held it until the batch
# ended (seen on a vLLM batch: a SIGINT not taken for 60 s).
WAKE_S = 0.25


def side_by_side(jobs: Sequence[Callable[[int], Any]], workers: int | None = None,
                 progress: bool = False, serve: Callable[[], None] | None = None,
                 stop: Callable[[], None] | None = None) -> list:
    """Run `jobs` (callables of their index) on a thread pool, at most `workers` at once (default:
    all), with a progress bar of finished jobs; returns their results in order. `serve`: what the
    calling thread does meanwhile (a `ForwardBatcher`'s scheduler). The one concurrency path of a
    batch of searches: the transformers batcher and the vLLM engines (whose server batches
    requests) both run here.

    The first error of a job, or one in the calling thread (Ctrl-C, an error of `serve`), stops
    the batch: no job starts after it, `stop()` tells the running ones to end (at their next
    request), and once they have ended that error is raised, once."""
    jobs = list(jobs)
    bar = tqdm(total=len(jobs), desc="RAIN prompts", disable=not progress)
    errors: list[BaseException] = []     # in the order raised: the first stopped the batch

    def halt(exc: BaseException):
        errors.append(exc)
        if stop is not None:
            stop()

    def work(i: int):
        if errors:                       # the batch has stopped: this job does not start
            return None
        try:
            return jobs[i](i)
        except BaseException as exc:
            halt(exc)
            raise
        finally:
            bar.update(1)

    pool = ThreadPoolExecutor(max_workers=max(1, min(workers or len(jobs), len(jobs))),
                              thread_name_prefix="rain-search")
    try:
        futures = [pool.submit(work, i) for i in range(len(jobs))]
        if serve is not None:
            serve()
        while not errors and wait(futures, WAKE_S, FIRST_EXCEPTION).not_done:
            pass                         # (short waits: see WAKE_S)
    except BaseException as exc:         # raised once the running jobs have ended
        halt(exc)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if errors:
        raise errors[0]
    return [f.result() for f in futures]


class Locked:
    """One call at a time into a shared in-process function (the sentence embedder of searches
    whose forward passes run on a server: its tokenizer is not thread-safe); keeps its `name`."""

    def __init__(self, fn):
        self.fn, self.lock = fn, threading.Lock()
        self.name = getattr(fn, "name", type(fn).__name__)

    def __call__(self, *args, **kwargs):
        with self.lock:
            return self.fn(*args, **kwargs)


class ForwardBatcher:
    """Run jobs on a thread pool, each with its own `Client`; answer their forward passes in
    batches (module docstring)."""

    def __init__(self, lm: LanguageModel, call_cost: float | None = None, kv_cost: float = 1 / 256,
                 max_rows: int = 1024, max_batch_bytes: int | None = None):
        self.lm, self.kv_cost, self.max_rows = lm, kv_cost, max_rows
        cuda = lm.device.type == "cuda"
        # fixed price of one forward pass, in units of one token's compute
        self.call_cost = call_cost if call_cost is not None else (256.0 if cuda else 8.0)
        self.max_batch_bytes = max_batch_bytes if max_batch_bytes is not None else (
            (4 << 30) if cuda else (1 << 30))
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._live, self.error = 0, None        # error: what stopped the batch (`stop`)

    def _submit(self, client: Client, kind: str, args: tuple):
        req = _Request(client.slot, kind, args)
        with self._cond:
            self._pending.append(req)
            self._cond.notify_all()
            if self.error is not None:      # the scheduler has stopped: no answer to wait for
                req.event.set()
        req.event.wait()
        if self.error is not None:          # it stopped (e.g. Ctrl-C): this search unwinds
            raise RuntimeError("the batch's scheduler stopped") from self.error
        if req.error is not None:
            raise req.error
        return req.result

    def run(self, jobs: Sequence[Callable[[Client], Any]], workers: int | None = None,
            progress: bool = False) -> list:
        """Run `jobs` (callables of a `Client`) with at most `workers` at once (`side_by_side`);
        returns their results in order. Each job's client has a slot, reused by a later job once
        the job holding it has finished (requests are answered in slot order)."""
        jobs = list(jobs)
        n = len(jobs)
        workers = max(1, min(workers or n, n)) if n else 0
        free: list[int] = []                 # a heap: slots of finished jobs, for the jobs after them
        finished = 0

        def work(i: int):
            nonlocal finished
            with self._cond:
                slot = i if i < workers else heapq.heappop(free)
            result = jobs[i](Client(self, slot))     # an error stops the batch: no slot to free
            with self._cond:
                heapq.heappush(free, slot)
                finished += 1
                self._live = min(workers, n - finished)
                self._cond.notify_all()
            return result

        self._live, self._pending, self.error = workers, [], None
        return side_by_side([work] * n, workers, progress, serve=self._schedule, stop=self.stop)

    def stop(self, error: BaseException | None = None, taken: Sequence[_Request] = ()) -> None:
        """Stop answering (`side_by_side` calls it on a search's error or Ctrl-C, `_schedule` on
        its own error with the requests it had `taken`): every request, waiting or to come, fails
        and its search unwinds (`_submit`); no round starts after it."""
        with self._cond:
            self.error = self.error or error or RuntimeError("a search of the batch failed")
            for r in [*taken, *self._pending]:
                r.event.set()
            self._cond.notify_all()

    def _schedule(self) -> None:
        """Answer rounds until every job has finished or the batch stops (`stop`; if this raises,
        e.g. Ctrl-C, it stops the batch first)."""
        batch: list[_Request] = []
        try:
            while True:
                with self._cond:
                    while self.error is None and 0 < self._live and len(self._pending) < self._live:
                        self._cond.wait()
                    if self.error is not None or not self._pending:
                        return
                    batch, self._pending = sorted(self._pending, key=lambda r: r.worker), []
                self.stats.rounds += 1
                self._execute(batch)
                for r in batch:
                    r.event.set()
        except BaseException as exc:
            self.stop(exc, batch)
            raise

    def _execute(self, batch: list[_Request]) -> None:
        fns: dict[int, list[_Request]] = {}         # list-function calls by function
        for r in batch:
            if r.kind == "fn":
                fns.setdefault(id(r.args[0]), []).append(r)
        for group in self._groups([r for r in batch if r.kind == "lm"]):
            try:
                self._run_group(group)
            except Exception as exc:  # noqa: BLE001 - handed to the waiting workers (Ctrl-C: `_schedule`)
                for sh in group:
                    sh.error = exc
        for reqs in fns.values():
            try:
                out = reqs[0].args[0]([x for r in reqs for x in r.args[1]])
                self.stats.fn_calls += 1
                self.stats.fn_requests += len(reqs)
                for r in reqs:
                    r.result, out = out[:len(r.args[1])], out[len(r.args[1]):]
            except Exception as exc:  # noqa: BLE001
                for r in reqs:
                    r.error = exc

    # ------------------------------------------------------------------ grouping
    def _cost(self, rows: int, s: int, p: int) -> float:
        return rows * (s + self.kv_cost * (p + s)) + self.call_cost

    def _groups(self, shapes: list[_Request]) -> list[list[_Request]]:
        """Greedy: in order of (new tokens, past length), each request joins the open group or opens one."""
        groups: list[list[_Request]] = []
        for sh in sorted(shapes, key=lambda x: (x.s, x.p, x.worker)):
            if groups and self._joins(groups[-1], sh):
                groups[-1].append(sh)
            else:
                groups.append([sh])
        return groups

    def _joins(self, group: list[_Request], sh: _Request) -> bool:
        """Whether `sh` joins `group`: the merged pass costs no more than running the two apart
        and fits the size caps; without packing, only same-shape plain rows stack; a 2D mask with
        holes runs alone on a windowed route (sliding windows count the holes, a tree does not)."""
        route = self.lm.route
        if any(route.windowed and r.args.attention_mask is not None and r.args.attention_mask.dim() == 2
               for r in (sh, group[0])):
            return False
        rows, s, p = sum(r.rows for r in group), max(r.s for r in group), max(r.p for r in group)
        if not route.packed and not (sh.plain and group[0].plain and (sh.s, sh.p) == (s, p)):
            return False
        r2, s2, p2 = rows + sh.rows, max(s, sh.s), max(p, sh.p)
        kv_bytes = r2 * (p2 + s2) * max(r.kv_token_bytes for r in (*group, sh))
        return (self._cost(r2, s2, p2) <= self._cost(rows, s, p) + self._cost(sh.rows, sh.s, sh.p)
                and r2 <= self.max_rows and kv_bytes <= self.max_batch_bytes)

    # ------------------------------------------------------------------ one pass
    def _run_group(self, group: list[_Request]) -> None:
        lm, st = self.lm, self.stats
        R, S, P = sum(sh.rows for sh in group), max(sh.s for sh in group), max(sh.p for sh in group)
        st.calls += 1
        st.requests += len(group)
        st.real_tokens += sum(sh.rows * sh.s for sh in group)
        st.padded_tokens += R * S
        if len(group) == 1:
            group[0].result = lm.forward(*group[0].args)
            return
        st.merged_calls += 1
        pad = lm.tokenizer.pad_token_id or 0
        ids = torch.full((R, S), pad, dtype=torch.long)
        pos = torch.zeros((R, S), dtype=torch.long)
        mask = torch.zeros((R, 1, S, P + S), dtype=torch.bool)
        first = next((sh.args[1] for sh in group if sh.p > 0), [])      # a past: the layers' shapes
        padded: KV = [(k.new_zeros(R, k.shape[1], P, k.shape[3]), v.new_zeros(R, v.shape[1], P, v.shape[3]))
                      for k, v in first]        # each request's past left-padded to P
        wants: list[torch.Tensor] = []      # logits positions wanted per row
        spans, row = [], 0                   # (first row, rows) per request
        for sh in group:
            x, past, am, all_logits, pids, at = sh.args
            b, s, p = sh.rows, sh.s, sh.p
            rs = slice(row, row + b)
            ids[rs, :s] = x.to("cpu")
            for (k_all, v_all), (k, v) in zip(padded, past or []):
                k_all[rs, :, P - p:].copy_(k)
                v_all[rs, :, P - p:].copy_(v)
            pos[rs] = p + torch.arange(S)
            pos[rs, :s] = request_positions(pids, p, s)
            m = request_mask(am, p, s)
            mask[rs, :, :s, P - p:P] = m[..., :p]
            mask[rs, :, :s, P:P + s] = m[..., p:]
            for j in range(s, S):                 # padding queries see only themselves
                mask[rs, 0, j, P + j] = True
            wants.append(wanted_logits(s, all_logits, at).expand(b, -1))
            spans.append((row, b))
            row += b
        K = max(w.shape[1] for w in wants)
        keep = torch.cat([torch.cat([w, w[:, -1:].expand(-1, K - w.shape[1])], dim=1) for w in wants])
        if not lm.route.packed:       # same-shape plain requests (see _joins): rows stacked
            mask = pos = None
        logits, kv = lm.forward(ids, padded or None, attention_mask=mask, position_ids=pos, logits_at=keep)
        for sh, (r0, b), w in zip(group, spans, wants):
            own = [(k[r0:r0 + b, :, P - sh.p:P + sh.s], v[r0:r0 + b, :, P - sh.p:P + sh.s]) for k, v in kv]
            wanted = own_logits(logits[r0:r0 + b, :w.shape[1]], sh.args.all_logits, sh.args.logits_at)
            sh.result = (wanted, own)


# A forward request's part of a merged pass (`_run_group`: padded rows; `raintools.flow.packed_pass`:
# one packed row), read as `LanguageModel.forward` reads its arguments.
def request_mask(attention_mask: torch.Tensor | None, p: int, s: int) -> torch.Tensor:
    """Its attention over its past `p` and its `s` new tokens, a boolean [rows or 1, 1, s, p + s]
    mask: its own 4D mask, else causal over the new tokens (within a 2D padding mask if given)."""
    causal = torch.ones(s, p + s, dtype=torch.bool).tril_(p)
    if attention_mask is None:
        return causal[None, None]
    am = attention_mask.to("cpu").bool()
    return am if am.dim() == 4 else am[:, None, None, :] & causal


def request_positions(position_ids: torch.Tensor | None, p: int, s: int) -> torch.Tensor:
    """Its tokens' positions [rows or 1, s]: its own, else right after its past."""
    return position_ids.to("cpu") if position_ids is not None else torch.arange(p, p + s)[None]


def wanted_logits(s: int, all_logits: bool, logits_at: torch.Tensor | None) -> torch.Tensor:
    """The positions [rows or 1, k] among its new tokens whose logits it wants."""
    if logits_at is not None:
        return logits_at.to("cpu").long()
    return torch.arange(s)[None] if all_logits else torch.tensor([[s - 1]])


def own_logits(logits: torch.Tensor, all_logits: bool, logits_at: torch.Tensor | None) -> torch.Tensor:
    """Its wanted logits [rows, k, vocab], shaped as its own pass returns them."""
    return logits if all_logits or logits_at is not None else logits[:, 0]
