"""Talking to a vLLM server: the forward passes RAIN needs, over its OpenAI-compatible
`/v1/completions` endpoint with token-id prompts.

`VllmClient(url, lm)` checks the server once (reachable, serves a model whose tokenizer agrees with
`lm`'s local tokenizer, its context length) and then offers the primitives the search needs:

- `next_token(ids, k)`: the top-k next tokens and their log-probabilities at a token prefix
  (log-softmax over the whole vocabulary, before temperature: vLLM's "raw" log-probabilities);
- `sample(ids, n, max_tokens, ...)`: n continuations sampled by the server (`n`, `top_k`,
  `temperature`, `seed`), each sampled token with its log-probability, stopping at the given
  end ids or after max_tokens;
- `judge_probs(evaluator, query, response)`: the judge's option-letter probabilities, one row per
  option order, renormalised over the letters exactly as `SelfEvaluator` does; `judge_value` turns
  them into v with `SelfEvaluator`'s own rule. The prompt ids and letters come from the evaluator.

Every call has a `*_many` form that sends its requests at once from a thread pool, so that the
server batches them (continuous batching; prefix caching serves the shared prompt starts).
Problems become one `ServerError` (or `PromptError` for a prompt too long for the server's
context) whose message names the problem and the fix.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from .errors import ConfigError, PromptError, ServerError

PROBE = "RAIN probe: héllo wörld 12345, naïve café!\n  <|im_start|>user\n日本語 🙂"


@dataclass
class Continuation:
    tokens: list[int]
    logprobs: list[float]          # log-probability of each sampled token (see VllmClient.sample)
    finish_reason: str             # "stop" (an end id) or "length"


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

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("requests", "sequences", "prompt_tokens",
                                              "completion_tokens", "seconds")}


def _token_id(key) -> int:
    """A token of a `return_tokens_as_token_ids` answer ('token_id:123') or a prompt_logprobs key."""
    s = str(key)
    return int(s[9:]) if s.startswith("token_id:") else int(s)


class VllmClient:
    """A raintools client of one vLLM server (see the module docstring).

    `lm`: the local `LanguageModel` (or anything with `.tokenizer` and `.encode`) whose tokenizer
    builds the prompts; the server must serve the same model. `workers`: requests in flight at once.
    `check=False` skips the start-up checks (tests of the checks themselves)."""

    def __init__(self, url: str, lm, *, timeout: float = 300.0, workers: int = 32,
                 check: bool = True, model: str | None = None):
        import httpx

        self.url = url.rstrip("/")
        if self.url.endswith("/v1"):
            self.url = self.url[:-3]
        self.lm = lm
        self.timeout = timeout
        self.workers = int(workers)
        if self.workers < 1:
            raise ConfigError(f"workers must be at least 1, got {workers}")
        self._http = httpx.Client(timeout=timeout, limits=httpx.Limits(
            max_connections=self.workers + 4, max_keepalive_connections=self.workers + 4))
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.stats = ClientStats()
        self.model = model
        self.max_model_len: int | None = None
        self.max_logprobs: int | None = None
        if check:
            self.check()

    # -- transport
    def _fail_unreachable(self, exc) -> ServerError:
        return ServerError(
            f"The vLLM server at {self.url} cannot be reached ({type(exc).__name__}: {exc}). Start it "
            f"(`python -m raintools.vllm_server --port PORT` or `vllm serve MODEL "
            f"--enable-prefix-caching --port PORT`) or give the right address (--server / "
            f"RAINTOOLS_SERVER). An interrupted eval run resumes where it stopped when rerun.")

    def _get(self, path: str) -> dict:
        import httpx
        try:
            r = self._http.get(self.url + path)
        except httpx.HTTPError as exc:
            raise self._fail_unreachable(exc) from exc
        if r.status_code != 200:
            raise ServerError(f"{self.url}{path} answered HTTP {r.status_code}: {r.text[:300]}. Is this "
                              f"a vLLM server (`vllm serve`)?")
        return r.json()

    def _post(self, path: str, body: dict, ids_len: int = 0) -> dict:
        import httpx
        t0 = time.perf_counter()
        try:
            r = self._http.post(self.url + path, json=body)
        except httpx.TimeoutException as exc:
            raise ServerError(f"The vLLM server at {self.url} did not answer within {self.timeout:.0f} s "
                              f"({type(exc).__name__}). It may be overloaded or stuck: check its log, "
                              f"restart it, or raise the client's timeout.") from exc
        except httpx.HTTPError as exc:
            raise self._fail_unreachable(exc) from exc
        if r.status_code != 200:
            try:
                msg = r.json().get("error", {}).get("message") or r.text
            except ValueError:
                msg = r.text
            msg = str(msg)[:500]
            low = msg.lower()
            if r.status_code == 400 and ("context length" in low or "maximum model length" in low
                                         or "max_model_len" in low or "too long" in low):
                raise PromptError(
                    f"A prompt of {ids_len} tokens (plus the tokens to generate) does not fit the "
                    f"vLLM server's context of {self.max_model_len} tokens ({msg}). Shorten the prompt, "
                    f"lower max_new_tokens, or restart the server with a larger --max-model-len.")
            if r.status_code == 400 and "logprobs" in low and "max allowed" in low:
                raise ServerError(f"The vLLM server at {self.url} caps log-probabilities per token below "
                                  f"what raintools asked for ({msg}). Restart it with a larger "
                                  f"--max-logprobs (-1: no cap).")
            raise ServerError(f"The vLLM server at {self.url} refused a request: HTTP {r.status_code}: "
                              f"{msg}. Check the server's log; restart it if it is failing (an "
                              f"interrupted eval run resumes where it stopped when rerun).")
        return r.json()

    def _completions(self, prompt, nseq: int, ids_len: int, **params) -> dict:
        body = {"model": self.model, "prompt": prompt, **params}
        t0 = time.perf_counter()
        out = self._post("/v1/completions", body, ids_len)
        self.stats.add(nseq, out.get("usage"), time.perf_counter() - t0)
        return out

    def map(self, fn: Callable, items: Sequence) -> list:
        """fn over items, `workers` at a time (results in order; the first error is raised)."""
        items = list(items)
        if len(items) <= 1:
            return [fn(x) for x in items]
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="raintools-vllm")
        return list(self._pool.map(fn, items))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- start-up checks
    def check(self) -> None:
        """The server is reachable, serves one model, and tokenises a probe string exactly as the
        local tokenizer does; remembers its model id, context length and log-probability cap."""
        data = self._get("/v1/models").get("data") or []
        if not data:
            raise ServerError(f"The server at {self.url} lists no model at /v1/models.")
        ids = [m.get("id") for m in data]
        if self.model is None:
            self.model = ids[0]
        elif self.model not in ids:
            raise ServerError(f"The server at {self.url} serves {ids}, not {self.model!r}.")
        card = next(m for m in data if m.get("id") == self.model)
        self.max_model_len = card.get("max_model_len")
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

    def _check_len(self, ids: Sequence[int], new: int) -> None:
        if self.max_model_len and len(ids) + new > self.max_model_len:
            raise PromptError(
                f"A prompt of {len(ids)} tokens plus {new} new tokens does not fit the vLLM server's "
                f"context of {self.max_model_len} tokens. Shorten the prompt, lower max_new_tokens, "
                f"or restart the server with a larger --max-model-len.")

    # -- (a) next-token distribution
    def next_token(self, ids: Sequence[int], k: int) -> tuple[list[int], list[float]]:
        """Top-k next tokens at `ids` and their log-probabilities (full-vocabulary log-softmax,
        temperature 1), sorted by decreasing log-probability."""
        ids = [int(t) for t in ids]
        self._check_len(ids, 1)
        out = self._completions(ids, 1, len(ids), max_tokens=1, temperature=0.0, logprobs=int(k),
                                return_tokens_as_token_ids=True)
        top = out["choices"][0]["logprobs"]["top_logprobs"][0]
        pairs = sorted(((_token_id(t), float(lp)) for t, lp in top.items()), key=lambda p: -p[1])[:k]
        return [t for t, _ in pairs], [lp for _, lp in pairs]

    def next_token_many(self, prefixes: Sequence[Sequence[int]], k: int) -> list[tuple[list[int], list[float]]]:
        return self.map(lambda ids: self.next_token(ids, k), prefixes)

    # -- (b) sampled continuations
    def sample(self, ids: Sequence[int], n: int, max_tokens: int, *, temperature: float = 1.0,
               top_k: int | None = None, seed: int | None = None,
               stop_ids: Sequence[int] = ()) -> list[Continuation]:
        """n continuations of `ids` sampled by the server (top-k truncated, at `temperature`, from
        the request's `seed`), each stopping after an id of `stop_ids` (kept as its last token) or
        at max_tokens. The log-probability of each sampled token is vLLM's raw one (full vocabulary,
        temperature 1), not that of the truncated sampling distribution."""
        ids = [int(t) for t in ids]
        self._check_len(ids, max_tokens)
        params = dict(max_tokens=int(max_tokens), n=int(n), temperature=float(temperature),
                      logprobs=0, return_tokens_as_token_ids=True, ignore_eos=True,
                      stop_token_ids=[int(s) for s in stop_ids], skip_special_tokens=False)
        if top_k:
            params["top_k"] = int(top_k)
        if seed is not None:
            params["seed"] = int(seed) & 0x7FFFFFFFFFFFFFFF
        out = self._completions(ids, n, len(ids), **params)
        conts = []
        for ch in sorted(out["choices"], key=lambda c: c["index"]):
            lp = ch["logprobs"]
            toks = [_token_id(t) for t in lp["tokens"]]
            conts.append(Continuation(toks, [float(x) for x in lp["token_logprobs"]],
                                      "stop" if ch.get("finish_reason") == "stop" else "length"))
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
        for ids in per_order:
            self._check_len(ids, 1)
        out = self._completions(per_order, len(per_order), max(map(len, per_order)), max_tokens=1,
                                temperature=0.0, logprobs=1, logprob_token_ids=letters,
                                return_tokens_as_token_ids=True)
        rows = []
        for ch in sorted(out["choices"], key=lambda c: c["index"]):
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
        import torch
        rows = self.judge_probs(evaluator, query, response)
        return evaluator._value([torch.tensor(r) for r in rows])

    def judge_many(self, evaluator, query: str, responses: Sequence[str]) -> list[float]:
        return self.map(lambda r: self.judge_value(evaluator, query, r), responses)

    # -- server counters
    def metrics(self) -> dict[str, float]:
        """vLLM's Prometheus counters (e.g. prefix-cache queries and hits, in tokens), summed over
        label sets: name -> value."""
        import httpx
        try:
            r = self._http.get(self.url + "/metrics")
        except httpx.HTTPError as exc:
            raise self._fail_unreachable(exc) from exc
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            if not line or line.startswith("#"):
                continue
            name, _, value = line.rpartition(" ")
            name = name.split("{", 1)[0]
            try:
                out[name] = out.get(name, 0.0) + float(value)
            except ValueError:
                pass
        return out

    def prefix_cache(self) -> dict[str, float]:
        """Prompt tokens the server looked up in its prefix cache and those it found there."""
        m = self.metrics()
        return {"queries": m.get("vllm:prefix_cache_queries_total", 0.0),
                "hits": m.get("vllm:prefix_cache_hits_total", 0.0),
                "prompt_tokens": m.get("vllm:prompt_tokens_total", 0.0),
                "generation_tokens": m.get("vllm:generation_tokens_total", 0.0)}
