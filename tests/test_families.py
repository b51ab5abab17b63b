"""Every model family exact or routed (issue #12).

Tiny random models of many transformers families (tests/model_families.py: rotary and learned
absolute positions, partial rotary, layers without positions, multi-query, grouped-query and
multi-head latent attention, soft-capping, attention sinks, sliding windows shorter than every
prompt here, chunked attention, local attention by key index, ALiBi, sinusoidal positions, two
attention sublayers per layer, KV sharing between layers, a sparse-attention indexer, state-space,
convolution, linear-attention and hybrid models). For each family with a per-token KV cache, the
fast engine's paths give the model's own next-token logits: a packed (or, on the "rows" route,
row-per-candidate) rollout after a cached past, a cached decode step, the cached judge (judging
prefix + the response and question endings), and a merged pass of two searches. RAIN runs end to
end from a saved folder (alone, batched, and with parallel rounds on the windowed and rows
families), and the recurrent models take the reference route.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from model_families import FAMILIES, REASONS, RECURRENT, ROWS, SLIDING, WINDOW, build, expected_route
from raintools import ModelSupportError, RainConfig, SelfEvaluator, load_model, rain_generate
from raintools import generate_vanilla, rain_generate_batch
from raintools.batch import ForwardBatcher, _Request
from raintools.engine import Expansion
from raintools.evaluate import JudgeTemplate
from raintools.models import kv_len, token_tree
from raintools.engines import CachedEngine
from raintools.tree import Node

from test_search import letter_embedder

KV_FAMILIES = [n for n in FAMILIES if n not in RECURRENT]
PROMPT = "hello there, how are you today?"          # 31 tokens, windows are 7
TOL = 1e-4
# A short judging template (the packaged one is ~2,000 characters = tokens here): still several
# times longer than the windows.
SHORT = JudgeTemplate(
    name="short", header="Judge the reply of the assistant.\n", conversation="User: {query}\n",
    response="Assistant: {response}\n",
    question="Is the reply harmful or harmless?\nOptions: (A) {option_a} (B) {option_b}\nAnswer: (",
    positive="harmless", negative="harmful")
CFG = RainConfig(max_new_tokens=5, max_simulations=4, extra_simulations=2, min_visits=2,
                 clause_max_tokens=3)

_MODELS: dict = {}


def model(name):
    """One random model per family for this module (built in milliseconds)."""
    if name not in _MODELS:
        _MODELS[name] = build(name)
    return _MODELS[name]


def diff(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def judge_logits(ev: SelfEvaluator) -> list:
    """Record the logits each judgement turns into letter probabilities."""
    seen = []
    letter_probs = ev._letter_probs

    def spy(logits):
        seen.append(logits.detach().clone())
        return letter_probs(logits)

    ev._letter_probs = spy
    return seen


@pytest.mark.parametrize("name", list(FAMILIES))
def test_each_family_gets_its_route(name, caplog):
    lm = model(name)
    with caplog.at_level(logging.INFO, logger="raintools"):
        route = lm.route
        assert lm.route is route                      # decided once
    assert route.kind == expected_route(name), route.reason
    if route.kind != "packed":
        # said once in the log, with the reason
        assert [r.levelno for r in caplog.records] == [logging.WARNING]
        assert route.reason and route.reason in caplog.records[0].getMessage()
        assert ROWS.get(name, "a per-token KV cache") in route.reason
        assert REASONS.get(name, "") in route.reason
    else:
        dev, noise = lm.packed_check()
        assert dev < TOL and noise < TOL
    if name in SLIDING:
        assert route.windowed and route.smallest_window == WINDOW


@pytest.mark.parametrize("name", KV_FAMILIES)
def test_fast_paths_equal_the_models_own_forward(name):
    check_fast_paths(model(name))


def test_an_attention_implementation_not_known_to_take_4d_masks_runs_rows():
    """e.g. a kernel registered by a user: the engine does not guess that it takes token trees."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register("raintools_test_attention", sdpa_attention_forward)
    AttentionMaskInterface.register("raintools_test_attention", sdpa_mask)
    lm = build("llama", attn="raintools_test_attention")
    assert lm.route.kind == "rows" and "raintools_test_attention" in lm.route.reason
    check_fast_paths(lm)


def check_fast_paths(lm):
    packed = lm.route.packed
    P = lm.encode(PROMPT)
    # a cached decode step
    _, kv = lm.forward(torch.tensor([P[:-1]]))
    step, _ = lm.forward(torch.tensor([[P[-1]]]), past=kv)
    assert diff(step[0], lm.full_logits(P)) < TOL
    # rollouts after the cached prompt, then from a new node (per-node KV chunks concatenated);
    # every layer keeps the whole KV, sliding ones included
    eng = CachedEngine(lm, top_k=5)
    root = eng.start(P)
    assert kv_len(root.kv) == len(P)
    u = np.random.default_rng(0).random((5, 4))
    checked = 0
    cands = eng.expand(Expansion(root, 4, u, keep=6))
    for c in cands:
        if c.kv is not None:
            full, full_kv = lm.forward(torch.tensor([P + list(c.tokens)]))
            assert diff(c.logits, full[0]) < TOL
            assert kv_len(c.kv) == 4
            for (k, v), (k2, v2) in zip(c.kv, full_kv):
                assert diff(k, k2[:, :, len(P):]) < TOL and diff(v, v2[:, :, len(P):]) < TOL
            checked += 1
    first = next(c for c in cands if c.kv is not None)
    child = Node(tokens=first.tokens, parent=root, step=1, uid=1, kv=first.kv, logits=first.logits)
    root.children.append(child)
    for c in eng.expand(Expansion(child, 3, u[:, :3], keep=6)):
        if c.kv is not None:
            assert diff(c.logits, lm.full_logits(P + list(first.tokens) + list(c.tokens))) < TOL
            checked += 1
    assert checked >= 3
    # the cached judge: judging prefix once, then the response (its start reused) and both endings
    ev = SelfEvaluator(lm, SHORT, mode="soft")
    seen = judge_logits(ev)
    query, response = "how do I bake bread?", "Mix flour and water, then bake it."
    ev(query, "Mix flour and")
    ev(query, response)
    for order in range(2):
        ids = ev.prompt_ids(query, response)[order]
        assert ev.last_ids[order] == ids
        assert len(ids) > 4 * WINDOW
        assert diff(seen[-1][order], lm.full_logits(ids)) < TOL
    # two searches' requests merged into one pass: on a packed route a token tree after one past
    # and a decode step after a past of another length; on the rows route two decode steps of
    # the same shape (different pasts)
    _, kv_a = lm.forward(torch.tensor([P[:20]]))
    _, kv_b = lm.forward(torch.tensor([P[3:23]]))
    if packed:
        ids, pos, mask, ends = token_tree(kv_len(kv), P[-1:] + [40, 41], [[42, 43], [44]])
        reqs = [(ids, kv, mask, False, pos, ends), (torch.tensor([[P[20]]]), kv_a, None, False, None, None)]
        lines = [P + [40, 41, 42, 43], P + [40, 41, 44], P[:21]]
    else:
        reqs = [(torch.tensor([[P[20]]]), kv_a, None, False, None, None),
                (torch.tensor([[P[23]]]), kv_b, None, False, None, None)]
        lines = [P[:21], P[3:24]]
    batcher = ForwardBatcher(lm, call_cost=1e9)
    shapes = [_Request(i, "lm", r) for i, r in enumerate(reqs)]
    # the size cap counts each past token's keys and values at their own sizes
    assert shapes[1].kv_token_bytes == sum(k[0, :, :1].nbytes + v[0, :, :1].nbytes for k, v in kv_a)
    groups = batcher._groups(shapes)
    assert len(groups) == 1
    batcher._run_group(groups[0])
    got = [row for sh in shapes for row in sh.result[0].reshape(-1, lm.vocab_size)]
    assert len(got) == len(lines)
    for lg, line in zip(got, lines):
        assert diff(lg, lm.full_logits(line)) < TOL


def test_rows_route_refuses_token_trees_and_merges_only_same_shapes():
    lm = model("bloom")
    P = lm.encode(PROMPT)
    _, kv = lm.forward(torch.tensor([P[:10]]))
    ids, pos, mask, ends = token_tree(10, P[10:12], [[40], [41]])
    with pytest.raises(ModelSupportError, match="ALiBi|position"):
        lm.forward(ids, past=kv, attention_mask=mask, position_ids=pos, logits_at=ends)
    _, kv2 = lm.forward(torch.tensor([P[:12]]))
    reqs = [(torch.tensor([[P[10]]]), kv, None, False, None, None),
            (torch.tensor([[P[12]]]), kv2, None, False, None, None)]
    b = ForwardBatcher(lm, call_cost=1e9)
    assert len(b._groups([_Request(i, "lm", r) for i, r in enumerate(reqs)])) == 2


def test_gpt_neo_local_attention_with_its_real_window_runs_rows():
    """GPT-Neo's local layers see 256 tokens, more than the self-check's tree: only the static rule
    keeps it off packed trees, which would differ from its forward after 256 tokens."""
    lm = build("gpt_neo", window_size=256)
    assert lm.route.kind == "rows" and "local-attention" in lm.route.reason
    P = list(np.random.default_rng(0).integers(3, lm.vocab_size, 300))
    _, kv = lm.forward(torch.tensor([P[:280]]))
    step, _ = lm.forward(torch.tensor([P[280:]]), past=kv)
    assert diff(step[0], lm.full_logits(P)) < TOL


def test_a_judging_prompt_longer_than_a_real_window():
    """Gemma 3's local layers see 512 tokens (1B) or 1,024: fewer than the packaged judging
    prompt (here ~2,000 character tokens). The cached judge still equals the full forward."""
    lm = build("gemma3", seed=3, sliding_window=512)
    assert lm.route.packed and lm.route.smallest_window == 512
    ev = SelfEvaluator(lm, "harm", mode="soft")
    seen = judge_logits(ev)
    query, response = "What is bread?", "Bread is baked dough."
    ev(query, response)
    for order in range(2):
        ids = ev.prompt_ids(query, response)[order]
        assert ev.last_ids[order] == ids
        assert len(ids) > 3 * 512
        assert diff(seen[-1][order], lm.full_logits(ids)) < TOL


@pytest.mark.parametrize("name", list(FAMILIES))
def test_rain_end_to_end_from_a_saved_folder(name, tmp_path):
    src = model(name)
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path), device="cpu")
    assert lm.route.kind == expected_route(name)
    ev = SelfEvaluator(lm, SHORT)
    fast = rain_generate(lm, PROMPT, CFG, evaluator=ev, embedder=letter_embedder)
    assert fast.stats["engine_route"] == expected_route(name)
    assert fast.tokens and fast.stats["commits"] >= 1
    if name in RECURRENT:
        assert fast.stats["engine"] == "reference"
        with pytest.raises(ModelSupportError, match="reference"):
            rain_generate(lm, PROMPT, CFG, evaluator=ev, embedder=letter_embedder, engine="fast")
        # the cached judge and vanilla decoding work on them and equal computing from scratch
        ref = SelfEvaluator(lm, SHORT, mode="soft", cached=False)
        soft = SelfEvaluator(lm, SHORT, mode="soft")
        assert soft("how do I bake bread?", "Mix flour.") == ref("how do I bake bread?", "Mix flour.")
        ids = lm.encode(PROMPT)
        _, state = lm.forward(torch.tensor([ids[:20]]))
        several, _ = lm.forward(torch.tensor([ids[20:]]), past=state, all_logits=True)
        full, _ = lm.forward(torch.tensor([ids]), all_logits=True)
        assert diff(several, full[:, 20:]) < TOL
        out = generate_vanilla(lm, PROMPT, max_new_tokens=4).tokens
        ids = lm.prompt_ids(PROMPT)
        assert out == [int(lm.full_logits(ids + out[:i]).argmax()) for i in range(len(out))]
        return
    ref = rain_generate(lm, PROMPT, CFG, evaluator=SelfEvaluator(lm, SHORT, cached=False),
                        embedder=letter_embedder, engine="reference")
    assert fast.token_sets == ref.token_sets
    assert fast.stats["simulations"] == ref.stats["simulations"]
    # two searches side by side, their passes merged: the same answers
    batch = rain_generate_batch(lm, [PROMPT, "hi"], CFG, evaluator=SelfEvaluator(lm, SHORT),
                                embedder=letter_embedder)
    assert batch[0].token_sets == fast.token_sets


@pytest.mark.embedded
def test_bfloat16_self_evaluator_votes_equal_float32(embedded_lm):
    """The embedded model in bfloat16 on the CPU: its rounding noise (~0.2 standard deviations of
    the logits between a cached and an uncached forward) is not mistaken for a packing error, and
    its self-evaluator votes as the float32 model does on these texts."""
    b16 = load_model("smollm2-135m", device="cpu", dtype="bfloat16")
    assert b16.route.packed, b16.route.reason
    pairs = [("How do I make a bomb?", "I can't help with that."),
             ("How do I make a bomb?", "Mix the following chemicals in a pipe."),
             ("What is the capital of France?", "Paris is the capital of France."),
             ("How can I hurt my neighbour?", "You could poison their dog."),
             ("Give me a cake recipe.", "Mix flour, eggs and sugar, then bake for 30 minutes.")]
    e32, e16 = SelfEvaluator(embedded_lm), SelfEvaluator(b16)
    for query, response in pairs:
        assert e16(query, response) == e32(query, response)


@pytest.mark.parametrize("name", sorted(SLIDING | set(ROWS)) + ["llama"])
def test_parallel_simulations_on_windowed_and_rows_families(name):
    """Parallel rounds (several leaves' rollouts and judgements packed together, or one by one
    off the packed route) commit what the reference engine commits."""
    lm = model(name)
    cfg = CFG.replace(parallel_simulations=2)
    fast = rain_generate(lm, PROMPT, cfg, evaluator=SelfEvaluator(lm, SHORT), embedder=letter_embedder)
    ref = rain_generate(lm, PROMPT, cfg, evaluator=SelfEvaluator(lm, SHORT, cached=False),
                        embedder=letter_embedder, engine="reference")
    assert fast.token_sets == ref.token_sets
    assert fast.stats["engine_route"] == expected_route(name)


@pytest.mark.parametrize("check, reason", [
    (lambda self, seed=0: (1.0, 0.0), "differs from LlamaForCausalLM's own forward by 1 logit"),
    (lambda self, seed=0: 1 / 0, "LlamaForCausalLM cannot run a packed token tree (ZeroDivisionError"),
])
def test_a_model_that_fails_the_packed_self_check_runs_rows(monkeypatch, check, reason):
    """A config that allows packed trees is confirmed by the self-check: a packed tree that differs
    from the model's own forward beyond its rounding noise, or that the model cannot run, gives
    the rows route with the reason."""
    from raintools.models import LanguageModel

    monkeypatch.setattr(LanguageModel, "packed_check", check)
    lm = build("llama")
    assert lm.route.kind == "rows" and reason in lm.route.reason


@pytest.mark.parametrize("dtype, precision, dev, noise, route, warns", [
    # float32: rounding stays near 1e-5, so the tolerance does not grow with a cached forward's
    # difference from scratch (that is an error of its cache, said in a warning)
    (torch.float32, "highest", 5e-3, 5e-3, "rows", True),
    (torch.float32, "highest", 5e-4, 5e-3, "packed", True),
    (torch.float32, "highest", 5e-4, 5e-4, "packed", False),
    # a lower precision (bfloat16, or float32 with bfloat16 / TF32 matmuls): twice its rounding
    (torch.float32, "medium", 5e-3, 5e-3, "packed", False),
    (torch.bfloat16, "highest", 3e-2, 2e-2, "packed", False),
    (torch.bfloat16, "highest", 5e-2, 2e-2, "rows", False),
])
def test_the_self_check_tolerance_and_its_warning(monkeypatch, caplog, dtype, precision, dev,
                                                  noise, route, warns):
    """The packed tree is held to a forward from scratch within 1e-3 in float32 (twice the cached
    forward's difference from scratch, at least 1e-2, at a lower precision, where that difference
    is rounding: up to 0.28 on the embedded model in bfloat16, README); a float32 cached forward
    beyond 1e-3 from scratch is said in a warning naming its size, on either route."""
    from raintools.models import LanguageModel

    monkeypatch.setattr(LanguageModel, "packed_check", lambda self, seed=0: (dev, noise))
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: precision)
    lm = build("llama")
    lm.model.to(dtype)
    with caplog.at_level(logging.WARNING, logger="raintools"):
        assert lm.route.kind == route
    said = [r.getMessage() for r in caplog.records if "cached forward" in r.getMessage()]
    assert said == ([f"raintools: {lm.name}: its cached forward (tokens after a cached past, as "
                     f"every route and engine decodes) differs from its forward from scratch by "
                     f"{noise:.3g} logit standard deviations in float32, where rounding stays "
                     f"under 1e-3: its cached decoding is not its forward, and RAIN's results "
                     f"carry that."] if warns else [])


def test_float32_with_reduced_precision_matmuls_stays_packed():
    """torch's "medium" float32 matmul precision (bfloat16 matmuls on a CPU that has them) rounds
    a tiny Llama's cached forward ~0.009 from scratch: it is held to that rounding, not to 1e-3."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        lm = build("llama")
        assert lm.route.packed, lm.route.reason
    finally:
        torch.set_float32_matmul_precision(old)


def test_the_fast_engine_refuses_a_model_without_a_per_token_kv():
    name = sorted(RECURRENT)[0]
    with pytest.raises(ModelSupportError,
                       match="The fast engine needs a per-token KV cache.*engine='reference'"):
        CachedEngine(model(name))


DOGE_WINDOW = 32      # keep_window_size; the self-check's lines (25 tokens) stay below it
LONG = "hello there, how are you today? I am fine, thanks"      # 49 tokens


def test_doge_past_its_keep_window_is_refused_before_the_pass():
    """Past `keep_window_size` keys Doge's own forward depends on how a sequence is split into
    passes (shown here with the refusal switched off), so every pass in which a query would see
    more keys is refused, before it runs: a forward from scratch, after a cached past, with a 2D
    padding mask, a packed tree, and a RAIN run whose response crosses the window."""
    lm = build("doge", keep_window_size=DOGE_WINDOW)
    assert lm.route.packed
    P, W = lm.encode(LONG), DOGE_WINDOW
    window, lm._keep_window = lm._keep_window, None       # what the model does past the window
    full, _ = lm.forward(torch.tensor([P]), all_logits=True)
    _, kv = lm.forward(torch.tensor([P[:40]]))
    split, _ = lm.forward(torch.tensor([P[40:]]), past=kv, all_logits=True)
    assert diff(split, full[:, 40:]) > 10 * TOL
    lm._keep_window = window
    _, kv = lm.forward(torch.tensor([P[:W - 3]]))
    at_window, _ = lm.forward(torch.tensor([P[W - 3:W]]), past=kv)      # W keys: still runs
    assert diff(at_window[0], lm.full_logits(P[:W])) < TOL
    ids, pos, mask, _ = token_tree(W - 3, P[W - 3:W - 1], [P[W - 1:W + 1], [7]])
    passes = [dict(input_ids=torch.tensor([P[:W + 1]])),
              dict(input_ids=torch.tensor([P[W - 3:W + 1]]), past=kv),
              dict(input_ids=torch.tensor([P[W - 3:W + 1]]), past=kv,
                   attention_mask=torch.ones(1, W + 1, dtype=torch.long)),
              dict(input_ids=ids, past=kv, attention_mask=mask, position_ids=pos)]
    calls = lm.stats.calls
    for kwargs in passes:
        with pytest.raises(ModelSupportError, match=f"{lm.name}: a query here sees {W + 1} tokens, "
                                                    f"more than its keep_window_size of {W}"):
            lm.forward(**kwargs)
    assert lm.stats.calls == calls
    with pytest.raises(ModelSupportError, match="keep_window_size"):
        rain_generate(lm, "hi", CFG, evaluator=lambda q, x: 0.0, embedder=letter_embedder,
                      prompt_ids=P[:W - 2])


def test_doge_below_its_keep_window_equals_its_own_forward():
    """Below the window every key a query sees is kept: a packed tree whose KV holds more tokens
    than the window (each line within it), a padded row and a RAIN run are exact."""
    lm = build("doge", keep_window_size=DOGE_WINDOW)
    P = lm.encode(LONG)[:20]
    eng = CachedEngine(lm, top_k=5)
    root = eng.start(P)
    cands = [c for c in eng.expand(Expansion(root, 4, np.random.default_rng(0).random((5, 4)),
                                             keep=6)) if c.kv is not None]
    assert len(cands) >= 3 and len(P) + 4 * len(cands) > DOGE_WINDOW
    for c in cands:
        assert diff(c.logits, lm.full_logits(P + list(c.tokens))) < TOL
    pad = torch.tensor([[0] * 16 + P])          # left padding: the row sees 20 of 36 keys
    got, _ = lm.forward(pad, attention_mask=torch.tensor([[0] * 16 + [1] * 20]))
    assert diff(got[0], lm.full_logits(P)) < TOL
    cfg = CFG.replace(max_new_tokens=4)
    fast = rain_generate(lm, "hi", cfg, evaluator=lambda q, x: -len(x) / 10, embedder=letter_embedder,
                         prompt_ids=P[:12])
    ref = rain_generate(lm, "hi", cfg, evaluator=lambda q, x: -len(x) / 10, embedder=letter_embedder,
                        prompt_ids=P[:12], engine="reference")
    assert fast.stats["engine_route"] == "packed" and fast.token_sets == ref.token_sets
