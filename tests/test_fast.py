"""Fast RAIN: the batched forward pass, the packed judge, many prompts at once, memory held by the
live tree only. Everything runs on tiny random models (no download)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from raintools import RainConfig, RainSearch, SelfEvaluator, rain_generate, rain_generate_batch
from raintools.batch import BatchedCall, ForwardBatcher
from raintools.engine import Expansion
from raintools.engines import CachedEngine, Forest
from raintools.models import kv_cat, kv_len, split_common, token_tree
from raintools.testing import complete, tiny_model
from raintools.tree import Node

from test_search import SMALL, letter_embedder, vowel_judge

PROMPTS = ["hello", "how are you today?", "x", "tell me a story about a cat"]


def tree_stats(result):
    """Per commit: the live tree's (uid, tokens, fn, n, q) and the chosen tokens."""
    out = []
    for c in result.trace.commits:
        out.append((tuple(c.tokens),
                    sorted((n.uid, tuple(n.tokens), n.fn, round(n.n, 9), round(n.q, 9)) for n in c.tree)))
    return out


# ------------------------------------------------------------------ the batched forward pass

def test_merged_forward_pass_equals_separate_passes():
    """Requests of different shapes (past lengths, new tokens, rows, a 2D padding mask, a packed
    token tree, all-position logits) answered by one merged pass equal their own passes."""
    lm = tiny_model(seed=2)
    g = torch.Generator().manual_seed(0)
    rand = lambda n: torch.randint(6, 60, (n,), generator=g).tolist()
    _, kv_a = lm.forward(torch.tensor([rand(9)]))
    _, kv_b = lm.forward(torch.tensor([rand(23)]))
    trunk, tails = rand(5), [rand(3), rand(4)]
    ids_t, pos_t, mask_t, ends_t = token_tree(kv_len(kv_b), trunk, tails)
    reqs = [
        dict(input_ids=torch.tensor([rand(1)]), past=kv_a),                          # decode
        dict(input_ids=torch.tensor([rand(1), rand(1), rand(1)]),
             past=[(k.expand(3, -1, -1, -1), v.expand(3, -1, -1, -1)) for k, v in kv_b]),  # rollouts
        dict(input_ids=torch.tensor([rand(4)]), past=kv_a, all_logits=True),          # all logits
        dict(input_ids=torch.tensor([rand(6)])),                                      # no past
        dict(input_ids=ids_t, past=kv_b, attention_mask=mask_t, position_ids=pos_t, logits_at=ends_t),
        dict(input_ids=torch.tensor([rand(3), rand(3)]),
             past=[(k.expand(2, -1, -1, -1), v.expand(2, -1, -1, -1)) for k, v in kv_a],
             attention_mask=torch.tensor([[1] * 12, [1] * 11 + [0]])),               # 2D padding
    ]
    alone = [lm.forward(**r) for r in reqs]
    b = ForwardBatcher(lm, call_cost=1e9)          # merge everything into one pass
    from raintools.batch import _Request
    shapes = [_Request(i, "lm", (r["input_ids"], r.get("past"), r.get("attention_mask"),
                                 r.get("all_logits", False), r.get("position_ids"),
                                 r.get("logits_at"))) for i, r in enumerate(reqs)]
    groups = b._groups(shapes)
    assert len(groups) == 1
    b._run_group(groups[0])
    assert b.stats.merged_calls == 1
    for r, sh, (lg, kv) in zip(reqs, shapes, alone):
        lg2, kv2 = sh.result
        assert lg2.shape == lg.shape
        assert torch.allclose(lg2, lg, atol=1e-4)
        assert kv_len(kv2) == kv_len(kv)
        for (k1, v1), (k2, v2) in zip(kv, kv2):
            # padding rows of the 2D-masked request hold different (unused) values
            assert torch.allclose(k1[..., :kv_len(kv) - 1, :], k2[..., :kv_len(kv) - 1, :], atol=1e-4)


def test_token_tree_judge_equals_separate_passes():
    lm = tiny_model(seed=1)
    _, past = lm.forward(torch.tensor([list(range(10, 30))]))
    trunk = [7, 8, 9, 10]
    questions = [[11, 12, 13, 21, 22], [11, 12, 13, 31]]
    common, tails = split_common(questions)
    assert common == [11, 12, 13] and tails == [[21, 22], [31]]
    ids, pos, mask, ends = token_tree(kv_len(past), trunk + common, tails)
    assert ids.shape[1] == len(trunk) + 3 + 2 + 1      # every token once
    logits, _ = lm.forward(ids, past=past, attention_mask=mask, position_ids=pos, logits_at=ends)
    for i, q in enumerate(questions):
        full = lm.full_logits(list(range(10, 30)) + trunk + q)
        assert torch.allclose(logits[0, i], full, atol=1e-4)


def test_packed_self_evaluator_computes_each_token_once():
    lm = tiny_model(seed=1)
    ev = SelfEvaluator(lm, mode="soft")
    ref = SelfEvaluator(lm, mode="soft", cached=False)
    ev("hi", "warm up")
    s0 = lm.stats.snapshot()
    n0 = ev.stats.tokens_needed
    v = ev("hi", "hello there.")
    used = lm.stats.since(s0)
    assert used.calls == 1                                   # response + both endings, one pass
    assert used.tokens == ev.stats.tokens_needed - n0
    assert v == pytest.approx(ref("hi", "hello there."), abs=1e-4)


def test_judge_reuses_the_response_start_it_has_judged():
    """Responses of one search share their start (committed text, tree path): the judge computes
    only what it has not seen, and still equals the reference judge."""
    lm = tiny_model(seed=1)
    ev = SelfEvaluator(lm, mode="soft")
    ref = SelfEvaluator(lm, mode="soft", cached=False)
    common, tails = split_common([lm.encode(ev.template.question_text(o)) for o in ev.orders])
    endings = len(common) + sum(len(t) for t in tails)
    ev("hi", "a first reply")
    for text, new in [("a first reply, longer", 8), ("a first rep", 0), ("another", 6)]:
        s0 = lm.stats.snapshot()
        n0 = ev.stats.tokens_needed
        v = ev("hi", text)
        assert lm.stats.since(s0).tokens == new + endings
        assert ev.stats.tokens_needed - n0 == new + endings
        assert v == pytest.approx(ref("hi", text), abs=1e-4)
        assert torch.allclose(torch.tensor(ev.last_probs), torch.tensor(ref.last_probs), atol=1e-4)



def test_packed_ensure_first_gives_a_parent_without_caches_its_own():
    """A node whose parent lost its caches too (below a plain cached node), then a node
    elsewhere: the parent is ensured first, and all three get the KV of their own tokens and the
    logits of a plain forward over their whole text."""
    lm = tiny_model(seed=0)
    s = RainSearch(lm, "hello", SMALL.replace(max_simulations=12), evaluator=vowel_judge,
                   embedder=letter_embedder)
    s.commit_step()
    for _ in range(12):
        s.simulate()
    deep = next(n for n in s.root.walk() if n.kv is not None and n.parent is not None
                and n.parent.parent is not None)
    parent = deep.parent
    other = next(n for n in s.root.walk() if n.kv is not None and n.parent is not None
                 and parent not in n.path_from_root() and n not in deep.path_from_root())
    for n in (deep, parent, other):
        n.kv = n.logits = None
    s.engine.ensure(deep)
    s.engine.ensure(other)
    for n in (deep, parent, other):
        ids = s.engine.prefix_ids + n.response_tokens()
        logits, kv = lm.forward(torch.tensor([ids]))
        assert n.logits is not None and torch.allclose(n.logits, logits[0], atol=1e-5)
        own = slice(len(ids) - len(n.tokens), None)
        for (k, v), (fk, fv) in zip(n.kv, kv):
            assert torch.allclose(k, fk[:, :, own], atol=1e-5) and torch.allclose(v, fv[:, :, own], atol=1e-5)


def test_a_past_from_a_path_lacking_a_cache_is_refused_naming_the_node():
    """A hand-made tree whose middle node lost its KV (the search never leaves one so): growing
    from the leaf below it is refused, naming the node, instead of built from a shorter past."""
    lm = tiny_model(seed=0)
    engine = CachedEngine(lm)
    root = engine.start(lm.encode("hello"))
    mid = Node(tokens=(5,), parent=root, step=1, uid=1)
    leaf = Node(tokens=(6, 7), parent=mid, step=3, uid=2)
    engine.ensure(leaf)
    Forest.from_node(lm.forward, leaf)          # every cache there: accepted
    mid.kv = None
    with pytest.raises(RuntimeError, match=r"Node 1 on the path to node 2 has no KV cache; give it one "
                                           r"first \(CachedEngine\.ensure\)\.$"):   # what to do, too
        Forest.from_node(lm.forward, leaf)
    with pytest.raises(RuntimeError, match="Node 1 "):
        engine.path_kv(leaf)                    # the past of the rows route and of `ensure`
    with pytest.raises(RuntimeError, match="Node 1 "):
        engine.expand(Expansion(leaf, length=2, uniforms=np.zeros((3, 2)), keep=2))


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_completion_of_a_response_that_already_ends_a_clause_draws_nothing(engine):
    """A clause completion asked for a response whose text already ends a clause (or with no
    token budget) draws and feeds nothing, on every engine; `until="turn"` does draw."""
    lm = tiny_model(seed=0)
    s = RainSearch(lm, "hello", SMALL, evaluator=vowel_judge, embedder=letter_embedder, engine=engine)
    response = lm.encode("Sure.")
    rng = lambda: np.random.default_rng(3)    # noqa: E731
    before = lm.stats.snapshot()
    assert complete(s.engine, s.root, response, rng(), 8) == ([], 0)
    assert complete(s.engine, s.root, lm.encode("Sure"), rng(), 0) == ([], 0)
    assert lm.stats.since(before).calls == 0
    out, fed = complete(s.engine, s.root, response, rng(), 8, until="turn")
    assert len(out) >= 1 and fed == len(out) - 1        # every drawn token but the last is fed


# ------------------------------------------------------------------ many prompts at once

def test_batch_equals_one_by_one():
    singles = [rain_generate(tiny_model(seed=0), p, SMALL, evaluator=vowel_judge,
                             embedder=letter_embedder) for p in PROMPTS]
    lm = tiny_model(seed=0)
    b = ForwardBatcher(lm)
    batch = rain_generate_batch(lm, PROMPTS, SMALL, evaluator=vowel_judge, embedder=letter_embedder,
                                batcher=b)
    assert [r.prompt for r in batch] == PROMPTS
    for a, c in zip(singles, batch):
        assert a.token_sets == c.token_sets
        assert a.stats["simulations_per_step"] == c.stats["simulations_per_step"]
        assert tree_stats(a) == tree_stats(c)
        # per-search counters: this search's own requests and tokens
        assert a.stats["forward_calls"] == c.stats["forward_calls"]
        assert a.stats["tokens_computed"] == c.stats["tokens_computed"]
        assert a.stats["tokens_needed"] == c.stats["tokens_needed"]
    assert b.stats.merged_calls > 0
    assert b.stats.calls < b.stats.requests                 # fewer passes than requests
    assert b.stats.fn_calls < b.stats.fn_requests           # embedder calls batched too
    assert lm.stats.calls == b.stats.calls


def test_batch_with_the_self_evaluator_and_fewer_workers_than_prompts():
    """The real self-evaluator (packed judge, forked per search) through batched passes."""
    cfg = SMALL.replace(max_new_tokens=8)
    lm0 = tiny_model(seed=4)
    base0 = SelfEvaluator(lm0)
    singles = [rain_generate(lm0, p, cfg, evaluator=base0, embedder=letter_embedder) for p in PROMPTS]
    lm = tiny_model(seed=4)
    base = SelfEvaluator(lm)
    batch = rain_generate_batch(lm, PROMPTS, cfg, evaluator=base, embedder=letter_embedder,
                                concurrency=3)
    for a, c in zip(singles, batch):
        assert a.token_sets == c.token_sets
        assert tree_stats(a) == tree_stats(c)
        assert c.stats["tokens_computed"] / c.stats["tokens_needed"] < 1.3
    assert base.stats.calls == 0            # the evaluations ran on the per-search views


def test_a_bad_prompt_stops_the_batch_and_no_job_starts_after_it():
    """One search at a time: the prompt before the bad one is answered, the one after it never
    starts, and the caller gets the bad prompt's error."""
    lm = tiny_model(seed=0)
    done = []
    b = ForwardBatcher(lm)

    def job(p):
        def run(client):
            r = rain_generate(lm, p, SMALL.replace(max_new_tokens=4), evaluator=vowel_judge,
                              embedder=letter_embedder)
            done.append(p)
            return r
        return run

    from raintools.errors import PromptError
    with pytest.raises(PromptError):
        b.run([job("hello"), job("   "), job("x")], workers=1)
    assert done == ["hello"]


@pytest.mark.parametrize("engine", ["fast", "reference"])
def test_a_batch_checks_every_prompt_before_any_work(engine):
    """Bad input in a batch: one clear error naming the prompt, before any forward pass (nothing
    computed is lost)."""
    from raintools.errors import PromptError
    lm = tiny_model(seed=0)
    before = lm.stats.calls
    with pytest.raises(PromptError, match="Prompt 2 of 3"):
        rain_generate_batch(lm, ["hello", "x", "   "], SMALL.replace(max_new_tokens=4), engine=engine,
                            evaluator=vowel_judge, embedder=letter_embedder)
    assert lm.stats.calls == before


STOPS = r"""
import faulthandler, json, os, signal, sys, threading, time
import torch
from raintools import rain_generate_batch
from raintools import batch
from raintools.batch import ForwardBatcher
from raintools.testing import tiny_model
from test_fast import PROMPTS
from test_search import SMALL, letter_embedder, vowel_judge

torch.set_num_threads(1)
signal.signal(signal.SIGINT, signal.default_int_handler)     # a background job starts with it ignored
for where, k in [("judge", 1), ("judge", 4), ("pass", 1), ("round", 1), ("forward", 1), ("job", 4)]:
    faulthandler.dump_traceback_later(60, exit=True)      # a hang: every thread's stack, then exit
    lm, judged, passes, mark, late = tiny_model(seed=0), [], [], [], []
    forward, groups, client = lm.forward, ForwardBatcher._groups, batch.Client
    batcher = ForwardBatcher(lm)

    def stop():
        mark.extend([len(passes), batcher.stats.rounds])
        if where in ("judge", "pass"):                  # Ctrl-C
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.2)        # taken while the scheduler waits ("judge") or runs a pass
        else:
            raise ValueError(where)

    def judge(q, x):
        judged.append(x)
        if where in ("judge", "job") and len(judged) == 9:
            stop()
        return vowel_judge(q, x)

    def counted(*a, **kw):
        passes.append(1)
        if where in ("pass", "forward") and len(passes) == 12:
            stop()
        return forward(*a, **kw)

    def grouping(self, shapes):
        if where == "round" and self.stats.rounds == 6:
            stop()
        return groups(self, shapes)

    def started(*a):                   # a job starts: its search's client
        late.extend([1] if mark else [])
        return client(*a)
    lm.forward, ForwardBatcher._groups, batch.Client = counted, grouping, started
    try:
        rain_generate_batch(lm, PROMPTS, SMALL.replace(parallel_simulations=k), evaluator=judge,
                            embedder=letter_embedder, concurrency=2, batcher=batcher)
        got = None
    except BaseException as exc:  # noqa: BLE001
        got = repr(exc)
    ForwardBatcher._groups, batch.Client = groups, client
    print(json.dumps(dict(where=where, k=k, got=got, after=len(passes) - mark[0],
                          rounds=batcher.stats.rounds - mark[1], late=len(late), left=[
        t.name for t in threading.enumerate() if t.name.startswith("rain-search")])), flush=True)
"""


def test_a_batch_stops_on_ctrl_c_or_an_error_with_no_search_left_waiting():
    """A real SIGINT while the scheduler (the calling thread) waits for a search's request or runs
    a pass, an error of the scheduler itself, of a pass, or of a search's judge: the batch stops
    (no round after it, no pass but the rest of the failing pass's round, no job started after
    it), every search unwinds (no thread left), then the caller gets that error. 4 prompts, 2 at
    once; in a subprocess (a hang is a timeout)."""
    from conftest import run_json_lines

    # a case that hangs exits after 60 s; ~20 s in all on a loaded CPU
    got = {(r["where"], r["k"]): r for r in run_json_lines(STOPS, timeout=400)}
    assert len(got) == 6
    for (where, k), r in got.items():
        assert r["got"] == ("KeyboardInterrupt()" if where in ("judge", "pass") else f"ValueError('{where}')")
        assert r["left"] == [] and r["rounds"] == r["late"] == 0, r
        assert r["after"] == 0 or where == "forward", r


def test_batched_call_groups_embedder_calls():
    lm = tiny_model(seed=0)
    b = ForwardBatcher(lm)
    calls = []

    def emb(texts):
        calls.append(len(texts))
        return letter_embedder(texts)

    out = b.run([lambda client, i=i: BatchedCall(client, emb)(["a" * (i + 1), "b"]) for i in range(3)])
    assert calls == [6]
    assert torch.equal(out[2], letter_embedder(["aaa", "b"]))


# ------------------------------------------------------------------ caches and memory

def kv_bytes(kv) -> int:
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in kv)


def test_live_caches_hold_each_token_once():
    """After commits, the KV held by the tree is the prefix (at the root) plus each live node's
    own tokens: memory is bounded by the live tree."""
    lm = tiny_model(seed=0)
    s = RainSearch(lm, "hello", SMALL, evaluator=vowel_judge, embedder=letter_embedder)
    for _ in range(3):
        s.commit_step()
        held = 0
        for node in s.root.walk():
            if node.kv is not None:
                assert kv_len(node.kv) == (len(s.engine.prefix_ids) if node is s.root else len(node.tokens))
                held += kv_bytes(node.kv)
        per_token = kv_bytes(s.root.kv) / kv_len(s.root.kv)
        live_tokens = len(s.engine.prefix_ids) + sum(len(n.tokens) for n in s.root.walk() if n is not s.root)
        assert held <= per_token * live_tokens + 1e-6


def test_fast_and_reference_agree_with_the_self_evaluator():
    """Cached judge (packed token tree) vs the reference judge (two full prompts), cached
    engine vs reference engine: same tree statistics, same committed tokens."""
    cfg = SMALL.replace(max_new_tokens=8)
    lm = tiny_model(seed=5)
    fast = RainSearch(lm, "hello", cfg, evaluator=SelfEvaluator(lm), embedder=letter_embedder).run()
    ref = RainSearch(lm, "hello", cfg, evaluator=SelfEvaluator(lm, cached=False),
                     embedder=letter_embedder, engine="reference").run()
    assert fast.token_sets == ref.token_sets
    assert tree_stats(fast) == tree_stats(ref)
    assert ref.stats["tokens_computed"] > 3 * fast.stats["tokens_computed"]


def test_phase_timings_are_reported():
    r = rain_generate(tiny_model(seed=0), "hello", SMALL, evaluator=vowel_judge, embedder=letter_embedder)
    phases = {k: v for k, v in r.stats.items() if k.startswith("time_")}
    assert {"time_expand_s", "time_judge_s", "time_embed_s"} <= set(phases)
    # completions share the rollouts' forward passes: no phase of their own (it would read 0)
    assert "time_complete_s" not in phases
    assert sum(phases.values()) <= r.stats["wall_time_s"] + 1e-6
