"""Talking to a vLLM server: the forward passes RAIN needs, over its OpenAI-compatible
`/v1/completions` endpoint with token-id prompts.

`VllmClient(url, lm)` checks the server once (reachable, serves a model whose tokenizer agrees with
`lm`'s local tokenizer, its context length) and then offers the primitives the search needs:
`next_token` (the top-k next tokens and their raw log-probabilities at a token prefix), `sample`
(n continuations drawn by the server) and `judge_probs` / `judge_value` (a `SelfEvaluator`'s
option letters and value, by its own prompt ids, letters and rule). Requests sent at once (`map`,
the `*_many` forms) go out from a thread pool, so that the server batches them (continuous
batching; prefix caching serves the shared prompt starts). Problems become one `ServerError` (or
`PromptError` for a prompt too long for the server's context) whose message names the problem and
the fix. `VllmEngine` is the search's engine on the server, `VllmJudge` its judge.
"""

from __future__ import annotations

import copy
import functools
import math
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Sequence

import httpx
import torch

from .engines import Completion, clause_done, ends_clause, kept_candidates
from .errors import ConfigError, PromptError, ServerError
from .evaluate import SelfEvaluator
from .models import ForwardStats
from .sampling import pick, truncated
from .tree import Node

PROBE = "RAIN probe: héllo wörld 12345, naïve café!\n  <|im_start|>user\n日本語 🙂"


@dataclass
class Continuation:
    tokens: list[int]
    logprobs: list[float]          # log-probability of each sampled token (see VllmClient.sample)
    finish_reason: str             # "stop" (an end id) or "length"
    top: list[dict[int, float]]    # per token: the top `logprobs` tokens' log-probabilities


@dataclass
class ClientStats:
    requests: int = 0              # HTTP requests sent to /v1/completions
    sequences: int = 0             # prompts in them (a request may carry several)
    prompt_tokens: int = 0         # prompt tokens the server received (before its prefix cache)
    completion_tokens: int = 0
    seconds: float = 0.0           # summed request latency (not wall time: requests overlap)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, sequences: int, usage: dict | None, seconds: float) -> None:
        usage = usage or {}
        with self._lock:
            self.requests += 1
            self.sequences += sequences
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)
            self.seconds += seconds


def _token_id(key) -> int:
    """A token of a `return_tokens_as_token_ids` answer ('token_id:123') or a prompt_logprobs key."""
    return int(str(key).removeprefix("token_id:"))


class VllmClient:
    """A raintools client of one vLLM server (see the module docstring).

    `lm`: the local `LanguageModel` (or anything with `.tokenizer` and `.encode`) whose tokenizer
    builds the prompts; the server must serve the same model. `workers`: requests in flight at once."""

    def __init__(self, url: str, lm, *, timeout: float = 300.0, workers: int = 32):
        self.url, self.lm, self.timeout = url.rstrip("/").removesuffix("/v1"), lm, timeout
        self.workers = int(workers)
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self._http = httpx.Client(timeout=timeout, limits=httpx.Limits(
            max_connections=self.workers + 4, max_keepalive_connections=self.workers + 4))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="raintools-vllm")
        self.stats = ClientStats()
        self.stop: threading.Event | None = None      # once set, no request goes out (`stopping`)
        self.check()

    # -- transport
    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        """One HTTP request; a server that cannot be reached or does not answer in time is one
        `ServerError` that says so and names the fix."""
        try:
            return self._http.request(method, self.url + path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ServerError(f"The vLLM server at {self.url} did not answer within {self.timeout:.0f} s "
                              f"({type(exc).__name__}). It may be overloaded or stuck: check its log, "
                              f"restart it, or raise the client's timeout.") from exc
        except httpx.HTTPError as exc:
            raise ServerError(
                f"The vLLM server at {self.url} cannot be reached ({type(exc).__name__}: {exc}). Start "
                f"it (`python -m raintools.vllm_server --port PORT` or `vllm serve MODEL "
                f"--enable-prefix-caching --port PORT`) or give the right address (--server / "
                f"RAINTOOLS_SERVER). An interrupted eval run resumes where it stopped when rerun.") from exc

    def _post(self, path: str, body: dict, ids_len: int = 0) -> dict:
        r = self._send("POST", path, json=body)
        if r.status_code != 200:
            try:
                msg = r.json().get("error", {}).get("message") or r.text
            except ValueError:
                msg = r.text
            msg = str(msg)[:500]
            low = msg.lower()
            if r.status_code == 400 and ("context length" in low or "maximum model length" in low
                                         or "max_model_len" in low or "too long" in low):
                raise self._too_long(f"{ids_len} tokens (plus the tokens to generate)", f" ({msg})")
            if r.status_code == 400 and "logprobs" in low and "max allowed" in low:
                raise ServerError(f"The vLLM server at {self.url} caps log-probabilities per token below "
                                  f"what raintools asked for ({msg}). Restart it with a larger "
                                  f"--max-logprobs (-1: no cap).")
            raise ServerError(f"The vLLM server at {self.url} refused a request: HTTP {r.status_code}: "
                              f"{msg}. Check the server's log; restart it if it is failing (an "
                              f"interrupted eval run resumes where it stopped when rerun).")
        return r.json()

    def stopping(self, stop: threading.Event) -> "VllmClient":
        """This client (its server, connections, thread pool and counters) with its own `stop`:
        the searches of one batch or eval run, which stop at their next request after its first
        error or Ctrl-C (`rain_generate_batch`, the eval runner), while the client's other users
        go on."""
        view = copy.copy(self)
        view.stop = stop
        return view

    def _completions(self, prompt: list, **params) -> list[dict]:
        """One /v1/completions request for `prompt` (token ids, or a list of such prompts sent as
        one batch): its choices in order. A prompt longer than the server's context less
        `max_tokens` is refused before it is sent."""
        prompts = prompt if prompt and isinstance(prompt[0], list) else [prompt]
        for ids in prompts:
            if self.max_model_len and len(ids) + params["max_tokens"] > self.max_model_len:
                raise self._too_long(f"{len(ids)} tokens plus {params['max_tokens']} new tokens")
        if self.stop is not None and self.stop.is_set():
            raise RuntimeError("Stopped: another search of this batch failed, or it was interrupted "
                               "(that error is the one raised).")
        body = {"model": self.model, "prompt": prompt, **params}
        t0 = time.perf_counter()
        out = self._post("/v1/completions", body, max(map(len, prompts)))
        self.stats.add(params.get("n", 1) * len(prompts), out.get("usage"), time.perf_counter() - t0)
        return sorted(out["choices"], key=lambda c: c["index"])

    def map(self, fn: Callable, items: Sequence) -> list:
        """fn over items, `workers` at a time (results in order; the first error is raised)."""
        items = list(items)
        if len(items) <= 1:
            return [fn(x) for x in items]
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- start-up checks
    def check(self) -> None:
        """The server is reachable, serves a model (the first it lists), and tokenises a probe
        string exactly as the local tokenizer does; remembers its model id and context length."""
        r = self._send("GET", "/v1/models")
        if r.status_code != 200:
            raise ServerError(f"{self.url}/v1/models answered HTTP {r.status_code}: {r.text[:300]}. Is "
                              f"this a vLLM server (`vllm serve`)?")
        data = r.json().get("data") or []
        if not data:
            raise ServerError(f"The server at {self.url} lists no model at /v1/models.")
        self.model = data[0].get("id")
        self.max_model_len: int | None = data[0].get("max_model_len")
        local = [int(t) for t in self.lm.tokenizer(PROBE, add_special_tokens=False)["input_ids"]]
        try:
            remote = self._post("/tokenize", {"model": self.model, "prompt": PROBE,
                                              "add_special_tokens": False})
        except ServerError as exc:
            raise ServerError(f"The server at {self.url} does not tokenise (/tokenize failed: {exc}); "
                              f"raintools needs vLLM's OpenAI-compatible server.") from exc
        remote_ids = [int(t) for t in remote.get("tokens", [])]
        self.max_model_len = self.max_model_len or remote.get("max_model_len")
        if remote_ids != local:
            raise ServerError(
                f"The vLLM server at {self.url} serves {self.model!r}, whose tokenizer does not match the "
                f"local model's ({getattr(self.lm, 'name', '?')}): a probe string tokenises to "
                f"{remote_ids[:8]}... there and {local[:8]}... here. Start the server with the same "
                f"model (folder or hub id) as the local one, or load the local model the server serves.")

    def _too_long(self, prompt: str, detail: str = "") -> PromptError:
        return PromptError(f"A prompt of {prompt} does not fit the vLLM server's context of "
                           f"{self.max_model_len} tokens{detail}. Shorten the prompt, lower "
                           f"max_new_tokens, or restart the server with a larger --max-model-len.")

    # -- (a) next-token distribution
    def next_token(self, ids: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        """Top-k next tokens at `ids` and their log-probabilities (full-vocabulary log-softmax,
        temperature 1), sorted by decreasing log-probability."""
        choices = self._completions([int(t) for t in ids], max_tokens=1, temperature=0.0,
                                    logprobs=int(k), return_tokens_as_token_ids=True)
        top = choices[0]["logprobs"]["top_logprobs"][0]
        pairs = sorted(((_token_id(t), float(lp)) for t, lp in top.items()), key=lambda p: -p[1])[:k]
        return [t for t, _ in pairs], [lp for _, lp in pairs]

    def next_token_many(self, prefixes: Sequence[Sequence[int]],
                        k: int) -> list[tuple[list[int], list[float]]]:
        return self.map(lambda ids: self.next_token(ids, k), prefixes)

    # -- (b) sampled continuations
    def sample(self, ids: Sequence[int], n: int, max_tokens: int, *, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None, stop_ids: Sequence[int] = (),
               logprobs: int = 0) -> list[Continuation]:
        """n continuations of `ids` sampled by the server (top-k truncated, at `temperature`, from
        the request's `seed`), each stopping after an id of `stop_ids` (kept as its last token) or
        at max_tokens. The log-probability of each sampled token is vLLM's raw one (full vocabulary,
        temperature 1), not that of the truncated sampling distribution; `logprobs`: also the top
        that many tokens' raw log-probabilities at each position (`Continuation.top`)."""
        params = dict(max_tokens=int(max_tokens), n=int(n), temperature=float(temperature),
                      logprobs=int(logprobs), return_tokens_as_token_ids=True, ignore_eos=True,
                      stop_token_ids=[int(s) for s in stop_ids], skip_special_tokens=False)
        if top_k:
            params["top_k"] = int(top_k)
        if seed is not None:
            params["seed"] = int(seed) & 0x7FFFFFFFFFFFFFFF
        conts = []
        for ch in self._completions([int(t) for t in ids], **params):
            lp = ch["logprobs"]
            conts.append(Continuation([_token_id(t) for t in lp["tokens"]],
                                      [float(x) for x in lp["token_logprobs"]],
                                      "stop" if ch.get("finish_reason") == "stop" else "length",
                                      [{_token_id(k): v for k, v in (top or {}).items()}
                                       for top in lp.get("top_logprobs") or []]))
        return conts

    def sample_many(self, jobs: Sequence[dict]) -> list[list[Continuation]]:
        """`sample(**job)` for each job dict, concurrently."""
        return self.map(lambda job: self.sample(**job), jobs)

    # -- (c) the judge
    def judge_probs(self, evaluator, query: str, response: str) -> list[list[float]]:
        """The option letters' probabilities per option order for judging (query, response) with
        `evaluator` (a `SelfEvaluator`: its prompt ids and letter ids), renormalised over the
        letters like `SelfEvaluator._letter_probs`. One request carries every order."""
        per_order = evaluator.prompt_ids(query, response)
        letters = [int(t) for t in evaluator.letter_ids]
        choices = self._completions(per_order, max_tokens=1, temperature=0.0, logprobs=1,
                                    logprob_token_ids=letters, return_tokens_as_token_ids=True)
        rows = []
        for ch in choices:
            top = {_token_id(t): float(lp) for t, lp in ch["logprobs"]["top_logprobs"][0].items()}
            missing = [t for t in letters if t not in top]
            if missing:
                raise ServerError(f"The server did not return log-probabilities for the option letter "
                                  f"ids {missing} (vLLM >= 0.20 with `logprob_token_ids` needed).")
            lps = [top[t] for t in letters]
            m = max(lps)
            ps = [math.exp(x - m) for x in lps]
            s = sum(ps)
            rows.append([p / s for p in ps])
        return rows

    def judge_value(self, evaluator, query: str, response: str) -> float:
        """v for (query, response) by `evaluator`'s rule (votes or soft), from the server's letters."""
        rows = self.judge_probs(evaluator, query, response)
        return evaluator._value([torch.tensor(r) for r in rows])

    # -- server counters
    def prefix_cache(self) -> dict[str, float]:
        """Prompt tokens the server looked up in its prefix cache and those it found there, and its
        prompt and generated tokens: vLLM's Prometheus counters, summed over label sets."""
        r = self._send("GET", "/metrics")
        m: dict[str, float] = {}
        for line in r.text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            name = name.split("{", 1)[0]
            try:
                m[name] = m.get(name, 0.0) + float(value)
            except ValueError:
                pass
        return {"queries": m.get("vllm:prefix_cache_queries_total", 0.0),
                "hits": m.get("vllm:prefix_cache_hits_total", 0.0),
                "prompt_tokens": m.get("vllm:prompt_tokens_total", 0.0),
                "generation_tokens": m.get("vllm:generation_tokens_total", 0.0)}


# ---------------------------------------------------------------------------------------------
# The search's engine (raintools.engine.Engine) on a vLLM server

ENGINE_MODES = MappingProxyType({"vllm": "server", "vllm-server": "server", "vllm-keyed": "keyed"})


def shared_client(lm, url: str | None = None) -> VllmClient:
    """One client (one check, one connection pool, one thread pool) per model and server (`url`,
    else RAINTOOLS_SERVER, else http://127.0.0.1:8000), shared by every search on that model: the
    searches of a batch send their requests through it at once."""
    url = url or os.environ.get("RAINTOOLS_SERVER") or "http://127.0.0.1:8000"
    clients = lm.__dict__.setdefault("_raintools_vllm_clients", {})
    lock = lm.__dict__.setdefault("_raintools_vllm_lock", threading.Lock())
    with lock:
        if url not in clients:
            clients[url] = VllmClient(url, lm)
        return clients[url]


def clause_end_ids(lm) -> list[int]:
    """Ids of the tokens whose text ends a clause (RAIN's clause-end characters): the server stops
    a clause completion at them (remembered on the model)."""
    ids = lm.__dict__.get("_raintools_clause_end_ids")
    if ids is None:
        tok = lm.tokenizer
        ids = [i for i in range(len(tok)) if ends_clause(tok.decode([i]))]
        lm.__dict__["_raintools_clause_end_ids"] = ids
    return ids


class VllmJudge:
    """A `SelfEvaluator`'s judgement with the forward passes on the server: the same judging prompt
    ids, option letters and value rule (votes or soft); the letters' probabilities come from the
    server (`VllmClient.judge_probs`)."""

    def __init__(self, client: VllmClient, evaluator):
        self.client, self.evaluator = client, evaluator

    def __call__(self, query: str, response: str) -> float:
        return self.client.judge_value(self.evaluator, query, response)


class VllmEngine:
    """`raintools.engine.Engine` on a vLLM server (see raintools.engine for the protocol).

    mode "keyed" (`engine="vllm-keyed"`): the server gives log-probabilities and raintools draws
    with its own keyed uniforms, exactly as the transformers engines do, so the search commits the
    same tokens as they do up to float ties (vLLM's float32 log-probabilities differ from torch's
    by ~3e-5). Node distributions and clause-completion steps need the whole vocabulary (a full
    softmax draw; the server must allow it: `--max-logprobs -1`), rollout steps the top-k. One
    request per token per line: an exactness check, not the fast path.

    mode "server" (`engine="vllm"`): vLLM samples. One expansion is two requests (the greedy line,
    and the sampled lines as `n` samples with `top_k`, `temperature` and a `seed` taken from the
    request's keyed uniforms); a clause completion is one request (full-vocabulary sampling with
    a seed from the request's rng, stopping at the tokens whose text ends with a clause-end
    character, then cut by RAIN's own rule on the decoded tail). Proposal probabilities
    are computed from the top-k log-probabilities the server returns with each sampled token.
    Nodes' next-token distributions hold the top `prior_k` tokens (the 1-token level's candidates).

    The requests of a call go out at once, and with K > 1 the slots' calls run side by side."""

    embed_one_by_one = False
    concurrent = True           # the server batches what the slots of K > 1 send side by side

    def __init__(self, lm, top_k: int = 15, temperature: float = 1.0, forward=None, *,
                 mode: str = "server", url: str | None = None, client: VllmClient | None = None,
                 prior_k: int = 20):
        if mode not in ("keyed", "server"):
            raise ConfigError(f"vLLM engine mode must be 'keyed' or 'server', got {mode!r}")
        self.lm, self.top_k, self.temperature, self.mode = lm, int(top_k), float(temperature), mode
        self.name = "vllm-keyed" if mode == "keyed" else "vllm"
        self.client = client or shared_client(lm, url)
        self.prior_k = max(int(prior_k), self.top_k)
        self.stats = ForwardStats()
        self._stats_lock = threading.Lock()
        self.prefix_ids: list[int] = []
        self.vocab = int(lm.vocab_size)
        self.stop_ids = sorted(int(t) for t in lm.chat.stop_token_ids)

    # -- helpers
    def _count(self, prompt_len: int, generated: int) -> None:
        with self._stats_lock:
            self.stats.calls += 1
            self.stats.tokens += max(prompt_len - len(self.prefix_ids), 0) + generated

    def _logits(self, ids: Sequence[int], full: bool):
        """Next-token log-probabilities at `ids` as a vocabulary-sized row: every token (`full`,
        keyed mode's full-softmax draws) or the top `prior_k` (-inf elsewhere: any softmax over a
        set of them, at any temperature, equals the model's restricted to that set)."""
        toks, lps = self.client.next_token(ids, self.vocab if full else self.prior_k)
        self._count(len(ids), 1)
        row = torch.full((self.vocab,), float("-inf"))
        row[torch.tensor(toks, dtype=torch.long)] = torch.tensor(lps, dtype=torch.float32)
        return row

    # -- the protocol
    def start(self, prompt_ids):
        self.prefix_ids = list(prompt_ids)
        return Node(tokens=(), step=0, uid=0, logits=self._logits(self.prefix_ids, self.mode == "keyed"))

    def ensure(self, node):
        if node.logits is None:
            node.logits = self._logits(self.prefix_ids + node.response_tokens(), self.mode == "keyed")

    def commit(self, root, child) -> None:
        self.prefix_ids = self.prefix_ids + list(child.tokens)

    def expand(self, req):
        rows, probs = self._expand_keyed(req) if self.mode == "keyed" else self._expand_server(req)
        return list(kept_candidates(rows, probs, req.length, req.keep).values()) if req.length > 0 else []

    def judge(self, evaluator):
        """The evaluator the search uses with this engine: a `SelfEvaluator` judged on the server
        (`VllmJudge`); any other evaluator (a simulated judge, a classifier) as it is."""
        return VllmJudge(self.client, evaluator) if isinstance(evaluator, SelfEvaluator) else evaluator

    # -- keyed mode: raintools' own draws, as the transformers engines make them; (lines, probabilities)
    def _expand_keyed(self, req):
        node = req.node
        base = self.prefix_ids + node.response_tokens()
        if req.completion is not None:
            c = req.completion
            head = self.prefix_ids + c.response
            Completion(self.lm, c, node.logits).finish(lambda _, s: (self._logits(head + c.out, True), s))
        if req.length <= 0:
            return [], []
        attempts = req.uniforms.shape[0]
        rows = [[] for _ in range(1 + attempts)]
        probs = [1.0] * (1 + attempts)
        going = list(range(1 + attempts))
        dist = {(): node.logits}
        for t in range(req.length):
            need = sorted({tuple(rows[r]) for r in going} - set(dist))
            for key, row in zip(need, self.client.map(lambda k: self._logits(base + list(k), False), need)):
                dist[key] = row
            still = []
            for r in going:
                tp, ti = truncated(dist[tuple(rows[r])], self.top_k, self.temperature)
                j = 0 if r == 0 else pick(tp, float(req.uniforms[r - 1, t]))
                rows[r].append(int(ti[j]))
                probs[r] *= float(tp[j])
                if not self.lm.is_stop_token(rows[r][-1]) and t < req.length - 1:
                    still.append(r)
            going = still
        return rows, probs

    # -- server mode: vLLM samples; (lines, probabilities)
    def _truncated_p(self, tok: int, top: dict) -> float:
        """Probability of `tok` under the top-k truncated distribution at the engine's temperature,
        from the top-k log-probabilities the server returned at that position."""
        lps = sorted((float(v) for v in top.values()), reverse=True)[: self.top_k]
        mine = top.get(tok)
        if mine is None:
            return 0.0
        m = lps[0] / self.temperature
        z = sum(math.exp(x / self.temperature - m) for x in lps)
        return math.exp(mine / self.temperature - m) / z

    def _lines(self, ids, n, length, temperature, seed):
        """n lines sampled by the server (greedy at temperature 0): (tokens, proposal probability)."""
        conts = self.client.sample(ids, n, length, temperature=temperature, logprobs=self.top_k,
                                   top_k=self.top_k if temperature > 0 else None,
                                   seed=seed if temperature > 0 else None, stop_ids=self.stop_ids)
        lines = [(c.tokens, math.prod(map(self._truncated_p, c.tokens, c.top), start=1.0)) for c in conts]
        self._count(len(ids), sum(len(t) for t, _ in lines))
        return lines

    def _complete_server(self, c) -> None:
        if Completion(self.lm, c, None).done:
            return
        ids = self.prefix_ids + c.response
        stops = self.stop_ids + clause_end_ids(self.lm) if c.until == "clause" else self.stop_ids
        (cont,) = self.client.sample(ids, 1, c.max_tokens, temperature=1.0, stop_ids=stops,
                                     seed=int(c.rng.integers(1 << 62)))
        toks = cont.tokens
        self._count(len(ids), len(toks))
        for i in range(len(toks)):      # RAIN's own stopping rule on the tokens the server drew
            if clause_done(self.lm, c.response, toks[: i + 1], c.until):
                toks = toks[: i + 1]
                break
        c.out, c.fed = toks, max(len(toks) - 1, 0)

    def _expand_server(self, req):
        base = self.prefix_ids + req.node.response_tokens()
        jobs = []
        if req.completion is not None:
            jobs.append(lambda: self._complete_server(req.completion))
        if req.length > 0:
            attempts = req.uniforms.shape[0]
            jobs.append(lambda: self._lines(base, 1, req.length, 0.0, 0))
            if attempts:
                seed = int(req.uniforms[0, 0] * (1 << 52))
                jobs.append(lambda: self._lines(base, attempts, req.length, self.temperature, seed))
        lines = [x for r in self.client.map(lambda f: f(), jobs) if isinstance(r, list) for x in r]
        return [t for t, _ in lines], [p for _, p in lines]


def vllm_engine_factory(name: str, url: str | None = None, client: VllmClient | None = None):
    """The engine factory for an engine name of ENGINE_MODES: called as the search calls its
    engines, `factory(lm, top_k=, temperature=, forward=)`."""
    return functools.partial(VllmEngine, mode=ENGINE_MODES[name], url=url, client=client)
