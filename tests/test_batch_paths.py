"""`rain_generate_batch`'s paths on tiny random models, each a few short searches: the searches of a
batch commit what they commit alone (tokens, counters, trees) on the batched path, one by one on
the reference engine and for a single prompt, with the model's own judge and with a judge on another
model, the embedder loaded once for the batch; `concurrency` and its default cap, the progress bar,
the checks of the prompts before any work, the config's overrides, one search's error; the
server path (`engine="vllm"`) with an in-process stand-in for the server's client and engine.

Written against the survivors of a mutation run (mutmut 3.8.1 over `rain_generate_batch` against
the fast tests, 2026-12-07: 113 of its 179 mutants alive, its batched path reached by no fast test;
with this file, 2 left, both equivalent: pyproject's [tool.mutmut] note); each test was seen failing
with survivors' mutations applied (mutmut, and some by hand)."""

from __future__ import annotations

import io
import sys
import threading
from collections import Counter

import pytest

import raintools.search as search_mod
from raintools import RainConfig, SelfEvaluator, rain_generate, rain_generate_batch
from raintools.batch import ForwardBatcher
from raintools.engines import CachedEngine
from raintools.errors import PromptError
from raintools.evaluate import self_evaluator
from raintools.testing import tiny_model

from test_fast import tree_stats
from test_search import SMALL, letter_embedder, vowel_judge

CFG = SMALL.replace(max_new_tokens=4)
PROMPTS = ["hello", "how are you today?", "x"]
TIMES = {"wall_time_s"}


def same_stats(a: dict) -> dict:
    """A result's stats without its clocks."""
    return {k: v for k, v in a.items() if k not in TIMES and not k.startswith("time_")}


def assert_same_search(alone, batched, exact=True):
    """The same commits, counters and trees (values up to float rounding unless `exact`: a merged
    pass rounds differently)."""
    assert batched.prompt == alone.prompt and batched.token_sets == alone.token_sets
    assert batched.text == alone.text and batched.config == alone.config
    assert same_stats(batched.stats) == same_stats(alone.stats)
    if exact:
        assert tree_stats(batched) == tree_stats(alone)
        return
    for (chosen, tree), (chosen1, tree1) in zip(tree_stats(batched), tree_stats(alone), strict=True):
        assert chosen == chosen1 and [n[:4] for n in tree] == [n[:4] for n in tree1]
        assert [n[4] for n in tree] == pytest.approx([n[4] for n in tree1], abs=1e-5)


class Judge:
    """`vowel_judge`, recording the threads it ran on (one per search in flight)."""

    def __init__(self):
        self.calls, self.threads = 0, set()

    def __call__(self, query, response):
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        return vowel_judge(query, response)


class Terminal(io.StringIO):
    """A stderr that is a terminal (tqdm draws a bar there unless disabled)."""

    def isatty(self):
        return True


# ------------------------------------------------------------------ the batched path

@pytest.mark.parametrize("k", [1, 2])
def test_each_search_of_a_batch_commits_what_it_commits_alone(k):
    """Prompts of different lengths, raw ids for each (no chat template), K slots per search: each
    result equals that prompt's search alone (tokens, every counter, the tree at each commit), in
    the prompts' order; every pass of the batch ran through the batcher, which merged passes and
    the embedder's calls; each search counts its own requests."""
    cfg = CFG.replace(parallel_simulations=k)
    lm = tiny_model(seed=0)
    ids = [lm.encode(p) for p in PROMPTS]
    alone = [rain_generate(lm, p, cfg, evaluator=vowel_judge, embedder=letter_embedder, prompt_ids=i)
             for p, i in zip(PROMPTS, ids)]
    before, judge, b = lm.stats.snapshot(), Judge(), ForwardBatcher(lm)
    batch = rain_generate_batch(lm, PROMPTS, cfg, evaluator=judge, embedder=letter_embedder,
                                batcher=b, prompt_ids=ids)
    assert [r.prompt for r in batch] == PROMPTS
    for a, r, i in zip(alone, batch, ids):
        assert_same_search(a, r)
        assert r.stats["prompt_tokens"] == len(i)
    made = lm.stats.since(before)
    assert made.calls == b.stats.calls and b.stats.merged_calls > 0
    assert sum(r.stats["forward_calls"] for r in batch) == b.stats.requests > b.stats.calls
    assert 0 < b.stats.fn_calls < b.stats.fn_requests == sum(r.stats["embed_calls"] for r in batch)
    assert judge.calls == sum(r.stats["evaluator_calls"] for r in batch)


def test_the_models_own_judge_in_a_batch_rides_the_batched_passes():
    """No evaluator given: the model's own self-evaluator for the config's template and mode, as
    `rain_generate` uses it; each search judges on its own view of it, through the batcher (the
    shared evaluator computes nothing). The batch encodes the judging header before its searches
    start: alone, it is encoded first too, so that no search counts it."""
    cfg = CFG.replace(judge_template="sentiment", eval_mode="soft", max_new_tokens=3)
    lm0 = tiny_model(seed=4, initializer_range=0.5)     # sharp: values far apart (soft mode)
    self_evaluator(lm0, "sentiment", "soft").fork()
    alone = [rain_generate(lm0, p, cfg, embedder=letter_embedder) for p in PROMPTS[:2]]
    lm = tiny_model(seed=4, initializer_range=0.5)
    b, _, before = ForwardBatcher(lm), lm.route, lm.stats.snapshot()
    batch = rain_generate_batch(lm, PROMPTS[:2], cfg, embedder=letter_embedder, batcher=b)
    for a, r in zip(alone, batch):
        assert_same_search(a, r, exact=False)
    values = [v.value for r in batch for v in r.trace.simulations]
    assert len(set(values)) > 2 and not set(values) <= {-1.0, 0.0, 1.0}     # soft values, not votes
    shared = self_evaluator(lm, "sentiment", "soft")
    assert shared.stats.calls == 0
    # every pass but the header's (one, before the searches start) ran through the batcher
    assert lm.stats.since(before).calls == b.stats.calls + 1 and b.stats.merged_calls > 0


def test_a_judge_on_another_model_runs_one_call_at_a_time():
    """A self-evaluator on another model keeps its own weights, out of the batched passes: one
    search at a time calls into it (two searches in step would call it together: the first call
    from a search waits a moment for another search's)."""
    policy, judge_lm = tiny_model(seed=0), tiny_model(seed=7)
    lock, entered = threading.Lock(), threading.Event()
    inside, most, waited = Counter(), [0], []       # threads in a judge pass (a pass may nest)
    forward = judge_lm.forward

    def watched(*a, **kw):
        me = threading.current_thread().name
        with lock:
            inside[me] += 1
            most[0] = max(most[0], len(+inside))
            if len(+inside) > 1:
                entered.set()
        try:
            if me.startswith("rain-search") and not waited:
                waited.append(me)
                entered.wait(0.3)
            return forward(*a, **kw)
        finally:
            with lock:
                inside[me] -= 1

    judge_lm.forward = watched
    judge = SelfEvaluator(judge_lm, mode="soft")
    cfg = CFG.replace(max_new_tokens=2)
    rain_generate_batch(policy, ["Hi", "Hi"], cfg, evaluator=judge, embedder=letter_embedder)
    assert waited and most[0] == 1 and judge.stats.calls == 0


def test_the_embedder_is_loaded_once_for_a_batch_and_only_when_needed(monkeypatch):
    """No embedder given: the default one is loaded once for the whole batch where the config
    reads embeddings, its calls batched; never where it reads none."""
    loads = []
    monkeypatch.setattr(search_mod, "load_embedder", lambda: loads.append(1) or letter_embedder)
    lm = tiny_model(seed=0)
    alone = [rain_generate(lm, p, CFG, evaluator=vowel_judge, embedder=letter_embedder)
             for p in PROMPTS[:2]]
    b = ForwardBatcher(lm)
    batch = rain_generate_batch(lm, PROMPTS[:2], CFG, evaluator=vowel_judge, batcher=b)
    for a, r in zip(alone, batch):
        assert_same_search(a, r)
    assert loads == [1] and 0 < b.stats.fn_calls < b.stats.fn_requests
    plain = CFG.replace(similarity_update=False, node_addition=False, max_new_tokens=2)
    assert not plain.needs_embeddings
    rain_generate_batch(lm, PROMPTS[:2], plain, evaluator=vowel_judge)
    assert loads == [1]


def test_concurrency_caps_the_searches_in_flight():
    """`concurrency`: at most that many searches at once (each on its own thread); by default all
    of them (up to 64, next test)."""
    lm = tiny_model(seed=0)
    cfg = CFG.replace(max_new_tokens=2)
    for concurrency, threads in ((2, 2), (1, 1), (None, 3)):
        judge = Judge()
        batch = rain_generate_batch(lm, PROMPTS, cfg, evaluator=judge, embedder=letter_embedder,
                                    concurrency=concurrency)
        assert len(judge.threads) == threads and [r.prompt for r in batch] == PROMPTS


def test_at_most_64_searches_at_once_by_default():
    lm = tiny_model(seed=0)
    cfg = CFG.replace(max_new_tokens=1, max_simulations=1, extra_simulations=1, similarity_update=False,
                      node_addition=False)
    judge = Judge()
    prompts = [f"p{i}" for i in range(65)]
    batch = rain_generate_batch(lm, prompts, cfg, evaluator=judge)
    assert len(judge.threads) == 64 and [r.prompt for r in batch] == prompts


# ------------------------------------------------------------------ one by one

def test_a_single_prompt_and_the_reference_engine_run_one_by_one():
    """One prompt, or the reference engine: each prompt's `rain_generate` (its config, judge,
    embedder, engine and ids), no batcher; two prompts on the fast engine: batched."""
    lm = tiny_model(seed=0)
    ids = [lm.encode(p) for p in PROMPTS[:2]]
    cfg = CFG.replace(max_new_tokens=3)
    for prompts, engine in ((PROMPTS[:1], "fast"), (PROMPTS[:2], "reference")):
        given = ids[:len(prompts)]
        alone = [rain_generate(lm, p, cfg, evaluator=vowel_judge, embedder=letter_embedder, engine=engine,
                               prompt_ids=i) for p, i in zip(prompts, given)]
        b, judge = ForwardBatcher(lm), Judge()
        batch = rain_generate_batch(lm, prompts, cfg, evaluator=judge, embedder=letter_embedder,
                                    engine=engine, batcher=b, prompt_ids=given)
        for a, r, i in zip(alone, batch, given):
            assert_same_search(a, r)
            assert (r.stats["engine"], r.stats["prompt_tokens"]) == (engine, len(i))
        assert b.stats.requests == 0 and judge.calls > 0
    b = ForwardBatcher(lm)
    rain_generate_batch(lm, PROMPTS[:2], cfg, evaluator=vowel_judge, embedder=letter_embedder, batcher=b)
    assert b.stats.merged_calls > 0


def test_the_engine_asked_for_is_the_engine_each_search_runs(monkeypatch):
    """An engine named for the batch is the one each of its searches runs, whatever "auto" would
    resolve to (RAINTOOLS_ENGINE)."""
    monkeypatch.setenv("RAINTOOLS_ENGINE", "reference")
    lm = tiny_model(seed=0)
    batch = rain_generate_batch(lm, PROMPTS[:2], CFG.replace(max_new_tokens=2), evaluator=vowel_judge,
                                embedder=letter_embedder, engine="fast")
    assert [r.stats["engine"] for r in batch] == ["fast", "fast"]
    monkeypatch.setenv("RAINTOOLS_ENGINE", "fast")
    batch = rain_generate_batch(lm, PROMPTS[:2], CFG.replace(max_new_tokens=2), evaluator=vowel_judge,
                                embedder=letter_embedder, engine="reference")
    assert [r.stats["engine"] for r in batch] == ["reference", "reference"]


def test_a_config_and_its_overrides_reach_every_search():
    lm = tiny_model(seed=0)
    batch = rain_generate_batch(lm, PROMPTS[:2], CFG, evaluator=vowel_judge, embedder=letter_embedder,
                                max_new_tokens=2, seed=3)
    assert all(r.config == CFG.replace(max_new_tokens=2, seed=3).to_dict() for r in batch)
    assert all(r.stats["committed_tokens"] == 2 for r in batch)


@pytest.mark.parametrize("how", ["one", "batch"])
def test_a_progress_bar_of_prompts_only_when_asked(how, monkeypatch):
    """Even on a terminal (tqdm draws one there unless disabled), no bar unless asked; asked, a bar
    of the prompts, one by one or batched."""
    lm = tiny_model(seed=0)
    prompts = PROMPTS[:1] if how == "one" else PROMPTS[:2]
    cfg = CFG.replace(max_new_tokens=2)
    for progress in (None, False, True):
        term = Terminal()
        monkeypatch.setattr(sys, "stderr", term)
        kw = {} if progress is None else {"progress": progress}
        rain_generate_batch(lm, prompts, cfg, evaluator=vowel_judge, embedder=letter_embedder, **kw)
        monkeypatch.undo()
        if progress:
            assert f"RAIN prompts: 100%" in term.getvalue() and f"{len(prompts)}/{len(prompts)}" in term.getvalue()
        else:
            assert term.getvalue() == ""


# ------------------------------------------------------------------ bad input, errors

def test_prompt_ids_one_row_per_prompt_each_checked_before_any_work():
    lm = tiny_model(seed=0)
    before = lm.stats.calls
    with pytest.raises(PromptError, match=r"^prompt_ids has 1 rows for 2 prompts\.$"):
        rain_generate_batch(lm, PROMPTS[:2], CFG, evaluator=vowel_judge, prompt_ids=[[5, 6]])
    cfg = CFG.replace(max_length=40)
    long_ids = lm.encode("a" * 60)[:cfg.max_length]           # the prompt's text alone is short
    for engine in ("fast", "reference"):
        with pytest.raises(PromptError, match=r"^Prompt 1 of 2: The prompt is 40 tokens") as err:
            rain_generate_batch(lm, PROMPTS[:2], cfg, evaluator=vowel_judge, engine=engine,
                                prompt_ids=[[5, 6], long_ids])
        assert err.value.__cause__ is None and err.value.__suppress_context__
    assert lm.stats.calls == before


def test_one_searchs_error_is_the_batchs_error():
    lm = tiny_model(seed=0)

    def judge(query, response):
        if query == "x":
            raise ValueError("the judge failed on x")
        return vowel_judge(query, response)

    with pytest.raises(ValueError, match="the judge failed on x"):
        rain_generate_batch(lm, PROMPTS, CFG, evaluator=judge, embedder=letter_embedder)
    assert not [t for t in threading.enumerate() if t.name.startswith("rain-search")]


# ------------------------------------------------------------------ the server path

class StandInClient:
    """The server's shared client, as `rain_generate_batch` uses it: a view per batch with its
    `stop` event."""

    def __init__(self, lm):
        self.lm, self.stop, self.views = lm, None, []

    def stopping(self, stop):
        view = StandInClient(self.lm)
        view.stop = stop
        self.views.append(view)
        return view


class StandInEngine(CachedEngine):
    """A "server" engine computed in process (the fast engine's results), built per search from
    the batch's client; it stops at its next request once the client's `stop` is set."""
    name = "vllm"

    def __init__(self, lm, client, **kw):
        super().__init__(lm, **kw)
        self.client = client

    def expand(self, req):
        if self.client.stop.is_set():
            raise RuntimeError("stopped")
        return super().expand(req)


@pytest.fixture
def server(monkeypatch):
    clients, made = {}, []

    def shared_client(lm):
        return clients.setdefault(id(lm), StandInClient(lm))

    def factory(name, url=None, client=None):
        def make(lm, top_k, temperature, forward=None):
            made.append((name, lm, client, top_k, temperature))
            return StandInEngine(lm, client, top_k=top_k, temperature=temperature, forward=forward)
        return make

    monkeypatch.setattr(search_mod, "shared_client", shared_client)
    monkeypatch.setattr(search_mod, "vllm_engine_factory", factory)
    return clients, made


def test_on_a_server_each_search_runs_its_own_engine_on_the_batchs_client(server, monkeypatch):
    """engine="vllm": one search per prompt on its own thread (`concurrency` of them at once), each
    with its own engine made from the model's shared client (a view that stops with this batch),
    the config's sampling, the judge, the embedder (one call at a time) and the prompt's ids: each
    equals that search alone."""
    clients, made = server
    lm = tiny_model(seed=0)
    cfg = CFG.replace(top_k=12, temperature=0.9)
    ids = [lm.encode(p) for p in PROMPTS]
    alone = [rain_generate(lm, p, cfg, evaluator=vowel_judge, embedder=letter_embedder, engine="fast",
                           prompt_ids=i) for p, i in zip(PROMPTS, ids)]
    inside, most, lock = [0], [0], threading.Lock()

    def embedder(texts):
        with lock:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        try:
            return letter_embedder(texts)
        finally:
            with lock:
                inside[0] -= 1

    judge, term = Judge(), Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    batch = rain_generate_batch(lm, PROMPTS, cfg, evaluator=judge, embedder=embedder, engine="vllm",
                                prompt_ids=ids, concurrency=2, progress=True)
    monkeypatch.undo()
    (view,) = clients[id(lm)].views
    assert isinstance(view.stop, threading.Event) and not view.stop.is_set()
    assert made == [("vllm", lm, view, 12, 0.9)] * 3
    for a, r, i in zip(alone, batch, ids):
        assert r.prompt == a.prompt and r.token_sets == a.token_sets and tree_stats(r) == tree_stats(a)
        assert (r.stats["engine"], r.stats["prompt_tokens"]) == ("vllm", len(i))
        assert r.stats["embed_calls"] == a.stats["embed_calls"] > 0
    assert len(judge.threads) <= 2 and most[0] == 1      # (2 unless a search ends before the next starts)
    assert "RAIN prompts: 100%" in term.getvalue()


def test_on_a_server_one_searchs_error_stops_the_others(server):
    clients, made = server
    lm = tiny_model(seed=0)
    judged = []

    def judge(query, response):
        judged.append(query)
        if query == "x" and judged.count("x") == 2:
            raise ValueError("the judge failed on x")
        return vowel_judge(query, response)

    with pytest.raises(ValueError, match="the judge failed on x"):
        rain_generate_batch(lm, PROMPTS, CFG.replace(max_new_tokens=18), evaluator=judge,
                            embedder=letter_embedder, engine="vllm")
    (view,) = clients[id(lm)].views
    assert view.stop.is_set()
