"""Vanilla auto-regressive decoding (greedy or sampled, KV-cached) and the best-of-N baseline.

Vanilla uses the same prompt formatting and stopping rules as RAIN, so comparisons are fair.
"""

from __future__ import annotations

import time

import torch

from .errors import ConfigError
from .evaluate import Evaluator, self_evaluator
from .models import LanguageModel
from .sampling import VANILLA, keyed_rng, sample_full, truncated, pick
from .trace import RainResult


def decode_step(lm: LanguageModel, logits: torch.Tensor, out: list[int], rng, max_new_tokens: int,
                do_sample: bool = True, temperature: float = 1.0, top_k: int | None = None) -> str | None:
    """One step of one row of vanilla decoding: the next token from `logits` (greedy, or drawn
    with `rng`: top-k truncated when `top_k`, else from the whole vocabulary) appended to `out`;
    returns why the row stops there ("eos", "user turn", "length") or None."""
    if not do_sample:
        tok = int(torch.argmax(logits))
    elif top_k:
        probs, idx = truncated(logits, top_k, temperature)
        tok = int(idx[pick(probs, float(rng.random()))])
    else:
        tok = sample_full(logits, float(rng.random()), temperature)
    out.append(tok)
    if lm.is_stop_token(tok):
        return "eos"
    if lm.has_user_turn(out):
        return "user turn"
    return "length" if len(out) >= max_new_tokens else None


def generate_vanilla(lm: LanguageModel, prompt: str, max_new_tokens: int = 128, do_sample: bool = False,
                     temperature: float = 1.0, top_k: int | None = None, seed: int = 0,
                     sample_index: int = 0, use_cache: bool = True) -> RainResult:
    """Greedy (default) or sampled decoding with a KV cache. Returns a `RainResult` with
    method "vanilla" (or "sampled") so results of all methods share one shape.

    `use_cache=False` decodes without a KV cache, as the paper's vanilla baseline does: every
    step runs the model over the whole prompt and response so far (same tokens, more work)."""
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    t0, s0 = time.perf_counter(), lm.stats.snapshot()
    ids = lm.prompt_ids(prompt, max_new_tokens=max_new_tokens)
    rng = keyed_rng(seed, VANILLA, sample_index)
    logits, kv = lm.forward(torch.tensor([ids]))
    out: list[int] = []
    while (reason := decode_step(lm, logits[0], out, rng, max_new_tokens, do_sample, temperature,
                                 top_k)) is None:
        if use_cache:
            logits, kv = lm.forward(torch.tensor([[out[-1]]]), past=kv)
        else:       # the whole prefix again, from scratch
            logits, kv = lm.forward(torch.tensor([ids + out]))
    used = lm.stats.since(s0)
    stats = dict(committed_tokens=len(out), forward_calls=used.calls, tokens_computed=used.tokens,
                 wall_time_s=time.perf_counter() - t0, stop_reason=reason, prompt_tokens=len(ids),
                 kv_cache=use_cache)
    return RainResult(text=lm.response_text(out), prompt=prompt,
                      method="sampled" if do_sample else "vanilla", tokens=out, stats=stats)


def best_of_n(lm: LanguageModel, prompt: str, n: int = 4, evaluator: Evaluator | None = None,
              max_new_tokens: int = 128, temperature: float = 1.0, top_k: int | None = None,
              seed: int = 0) -> RainResult:
    """The paper's "cherry-pick" baseline: sample n responses and keep the one the evaluator
    (by default the model's own self-evaluator) scores highest; ties go to the earliest sample."""
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    if evaluator is None:
        evaluator = self_evaluator(lm)
    t0, s0 = time.perf_counter(), lm.stats.snapshot()
    samples = [generate_vanilla(lm, prompt, max_new_tokens, do_sample=True, temperature=temperature,
                                top_k=top_k, seed=seed, sample_index=i) for i in range(n)]
    values = [float(evaluator(prompt, r.text)) for r in samples]
    best = max(range(n), key=lambda i: (values[i], -i))
    used = lm.stats.since(s0)
    stats = dict(committed_tokens=len(samples[best].tokens), forward_calls=used.calls,
                 tokens_computed=used.tokens, wall_time_s=time.perf_counter() - t0, n=n,
                 values=values, chosen=best, stop_reason=samples[best].stats["stop_reason"])
    return RainResult(text=samples[best].text, prompt=prompt, method=f"best-of-{n}",
                      tokens=samples[best].tokens, stats=stats)
