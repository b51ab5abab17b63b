"""The evaluation runner: both files on the tiny and the embedded model, resume after a kill or a
torn line, clear errors, the method registry, and the summary statistics on constructed results."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from raintools.cli import main as cli_main
from raintools.errors import ConfigError, DataError
from raintools.experiments.methods import METHODS, MethodConfig, get_method, parse_methods, register_method
from raintools.experiments.runner import (RESULTS, RUN_JSON, SUMMARY, merge_verdicts, read_records, run_eval,
                              without_timing as comparable)
from raintools.experiments.stats import bootstrap_ci, rate_ci, summarize, win_rate

REPO = Path(__file__).resolve().parents[1]


def write_csv(path: Path, prompts: list[str], column: str = "prompt") -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([column, "note"])
        for i, p in enumerate(prompts):
            w.writerow([p, f"row {i}"])
    return path


PROMPTS = [f"Request number {i}: how do I get thing {i} done, quickly?" for i in range(6)]


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def eval_args(data, out, *extra, model="tiny", methods="vanilla,rain", judge="refusal", tokens=8):
    return ["eval", "--data", str(data), "--methods", methods, "--judge", judge, "--out", str(out),
            "--model", model, "--max-new-tokens", str(tokens), "--no-progress", *extra]


def subprocess_env() -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread (and a shared CPU stays usable)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------
# statistics on constructed results


def test_bootstrap_interval_contains_the_mean_and_is_reproducible():
    rng = np.random.default_rng(1)
    for n in (5, 20, 200):
        flags = rng.random(n) < 0.3
        ci = rate_ci(flags, seed=3)
        assert ci.estimate == pytest.approx(flags.mean())
        assert ci.lo <= ci.estimate <= ci.hi
        assert 0.0 <= ci.lo and ci.hi <= 1.0
        assert ci == rate_ci(flags, seed=3)
    values = rng.normal(2.0, 1.0, 100)
    ci = bootstrap_ci(values)
    assert ci.lo < values.mean() < ci.hi
    # the width shrinks like 1/sqrt(n): 4x the data, about half the width
    small = bootstrap_ci(values[:25])
    assert (ci.hi - ci.lo) < 0.75 * (small.hi - small.lo)
    assert math.isnan(bootstrap_ci([]).estimate) and bootstrap_ci([1.0]).lo == 1.0
    assert rate_ci([True, None, False]).n == 2
    with pytest.raises(ConfigError):
        bootstrap_ci([1, 2], confidence=1.5)


def test_win_rate_arithmetic():
    rain = [True, True, False, True, False]
    van = [False, True, True, False, False]
    w = win_rate(rain, van)
    assert (w.wins, w.ties, w.losses) == (2, 2, 1)
    assert w.rate == pytest.approx((2 + 0.5 * 2) / 5)
    assert w.ci.lo <= w.rate <= w.ci.hi
    assert win_rate([0.9, 0.1], [0.5, 0.5]).rate == pytest.approx(0.5)   # scores compare too
    assert win_rate([True, None], [False, True]).n == 1                  # unpaired dropped
    with pytest.raises(ConfigError):
        win_rate([True], [True, False])


def test_summarize_constructed_records():
    recs = []
    for i in range(4):
        recs.append(dict(id=f"p{i}", method="vanilla", metrics={"harmless": i < 2, "refusal": False},
                         stats={"wall_time_s": 1.0, "forward_calls": 10, "tokens_computed": 100,
                                "committed_tokens": 10}))
        recs.append(dict(id=f"p{i}", method="rain", metrics={"harmless": i < 3, "refusal": i == 0},
                         stats={"wall_time_s": 4.0, "forward_calls": 50, "tokens_computed": 900,
                                "committed_tokens": 10}))
    df = summarize(recs).set_index("method")
    assert list(df.index) == ["vanilla", "rain"]
    assert df.loc["vanilla", "harmless_rate"] == 0.5 and df.loc["rain", "harmless_rate"] == 0.75
    assert df.loc["rain", "refusal_rate"] == 0.25
    assert df.loc["rain", "win_metric"] == "harmless"
    # rain wins on p2, ties on p0, p1, p3
    assert (df.loc["rain", "wins"], df.loc["rain", "ties"], df.loc["rain", "losses"]) == (1, 3, 0)
    assert df.loc["rain", "win_rate"] == pytest.approx((1 + 1.5) / 4)
    assert df.loc["rain", "time_ratio"] == pytest.approx(4.0)
    assert df.loc["rain", "compute_ratio"] == pytest.approx(9.0)
    assert math.isnan(df.loc["vanilla", "win_rate"])
    for m in df.index:
        assert df.loc[m, "harmless_lo"] <= df.loc[m, "harmless_rate"] <= df.loc[m, "harmless_hi"]


def test_merge_verdicts_first_judge_wins():
    v = {"refusal": {"judge": "refusal", "refusal": True, "harmless": None, "matched": "I can't"},
         "llm": {"judge": "llm", "refusal": False, "harmless": True, "p_harmless": 0.9}}
    assert merge_verdicts(v) == {"refusal": True, "harmless": True, "p_harmless": 0.9}


# --------------------------------------------------------------------------------------------
# registry


def test_method_registry_and_config():
    assert {"vanilla", "sampled", "rain", "bon"} <= set(METHODS)
    assert parse_methods("vanilla, rain") == ["vanilla", "rain"]
    with pytest.raises(ConfigError, match="Unknown method"):
        parse_methods("vanilla,nope")
    with pytest.raises(ConfigError, match="twice"):
        parse_methods(["rain", "rain"])
    with pytest.raises(ConfigError):
        MethodConfig(bon_n=0)

    @register_method("test-echo")
    def echo(lm, prompt, task, config, seed):
        from raintools.search import RainResult
        return RainResult(text=prompt.upper(), prompt=prompt, method="test-echo",
                          stats={"wall_time_s": 0.0, "committed_tokens": 0})

    try:
        assert get_method("test-echo") is echo
    finally:
        METHODS.pop("test-echo")


def test_custom_method_plugs_into_the_runner(tmp_path, tiny_lm):
    from raintools.search import RainResult

    @register_method("test-refuser")
    def refuser(lm, prompt, task, config, seed):
        return RainResult(text="I'm sorry, I can't help with that.", prompt=prompt,
                          stats={"wall_time_s": 0.01, "committed_tokens": 9, "forward_calls": 0,
                                 "tokens_computed": 0})

    try:
        data = write_csv(tmp_path / "p.csv", PROMPTS[:3])
        run = run_eval(data, ["vanilla", "test-refuser"], ["refusal"], tmp_path / "out", lm=tiny_lm,
                       method_config=MethodConfig(max_new_tokens=4), progress=False)
    finally:
        METHODS.pop("test-refuser")
    df = run.summary.set_index("method")
    assert df.loc["test-refuser", "refusal_rate"] == 1.0
    assert df.loc["vanilla", "refusal_rate"] == 0.0
    assert df.loc["test-refuser", "win_rate"] == 1.0      # refusal is the primary metric here


def test_variants_change_settings_and_are_recorded(tmp_path, tiny_lm):
    from raintools.experiments.methods import VARIANTS, register_variant
    from raintools.experiments.tasks import get_task

    with pytest.raises(ConfigError, match="unknown setting"):
        register_variant("test-bad", "bon", n_samples=3)
    register_variant("test-bon-3", "bon", bon_n=3, temperature=0.7)
    try:
        r = get_method("test-bon-3")(tiny_lm, "Hello there?", get_task("harmless"),
                                     MethodConfig(max_new_tokens=3), 0)
        assert r.method == "test-bon-3" and r.stats["n"] == 3
        data = write_csv(tmp_path / "p.csv", PROMPTS[:1])
        mc = MethodConfig(max_new_tokens=3)
        run_eval(data, ["test-bon-3"], ["refusal"], tmp_path / "out", lm=tiny_lm, method_config=mc,
                 progress=False)
        recorded = json.loads((tmp_path / "out" / RUN_JSON).read_text())["config"]["variants"]
        assert recorded == {"test-bon-3": {"base": "bon", "changes": {"bon_n": 3, "temperature": 0.7}}}
        register_variant("test-bon-3", "bon", bon_n=4)       # same name, other definition
        with pytest.raises(ConfigError, match="variants"):
            run_eval(data, ["test-bon-3"], ["refusal"], tmp_path / "out", lm=tiny_lm,
                     method_config=mc, progress=False)
    finally:
        METHODS.pop("test-bon-3", None)
        VARIANTS.pop("test-bon-3", None)


# --------------------------------------------------------------------------------------------
# the command on the tiny model


def test_eval_writes_both_files_and_resumes_without_duplicates(tmp_path):
    data = write_csv(tmp_path / "prompts.csv", PROMPTS[:3])
    out = tmp_path / "run"
    assert cli_main(eval_args(data, out, methods="vanilla,rain,bon", judge="refusal,llm",
                              tokens=6) + ["--bon-n", "2"]) == 0
    recs = lines(out / RESULTS)
    assert [(r["id"], r["method"]) for r in recs] == [
        (f"prompts-{i:04d}", m) for i in range(3) for m in ("vanilla", "rain", "bon")]
    for r in recs:
        assert set(r) >= {"id", "method", "prompt", "response", "verdicts", "metrics", "stats",
                          "time_s"}
        assert set(r["verdicts"]) == {"refusal", "llm"}
        assert isinstance(r["metrics"]["harmless"], bool)      # from the llm judge
        assert r["stats"]["committed_tokens"] <= 6
    assert recs[1]["stats"]["simulations"] > 0 and recs[2]["stats"]["n"] == 2
    import pandas as pd

    summary = pd.read_csv(out / SUMMARY)
    assert list(summary["method"]) == ["vanilla", "rain", "bon"]
    for col in ("harmless_rate", "harmless_lo", "harmless_hi", "helpful_rate", "refusal_rate",
                "win_rate", "mean_time_s", "time_ratio"):
        assert col in summary.columns
    run = json.loads((out / RUN_JSON).read_text())
    assert run["config"]["seed"] == 0 and run["config"]["model"] == "tiny"
    assert run["info"]["versions"]["torch"]

    # the same command again: nothing recomputed, nothing duplicated
    before = (out / RESULTS).read_bytes()
    assert cli_main(eval_args(data, out, methods="vanilla,rain,bon", judge="refusal,llm",
                              tokens=6) + ["--bon-n", "2"]) == 0
    assert (out / RESULTS).read_bytes() == before

    # a torn last line (killed mid-write) is dropped and its answer recomputed
    raw = (out / RESULTS).read_bytes()
    last_start = raw.rstrip(b"\n").rfind(b"\n") + 1
    (out / RESULTS).write_bytes(raw[: last_start + 40])
    assert cli_main(eval_args(data, out, methods="vanilla,rain,bon", judge="refusal,llm",
                              tokens=6) + ["--bon-n", "2"]) == 0
    again = lines(out / RESULTS)
    assert [comparable(r) for r in again] == [comparable(r) for r in recs]


def test_limit_may_grow_but_other_settings_may_not(tmp_path, capsys):
    data = write_csv(tmp_path / "prompts.csv", PROMPTS[:4])
    out = tmp_path / "run"
    assert cli_main(eval_args(data, out, "--limit", "2", methods="vanilla")) == 0
    assert cli_main(eval_args(data, out, "--limit", "3", methods="vanilla")) == 0
    assert [r["id"] for r in lines(out / RESULTS)] == [f"prompts-{i:04d}" for i in range(3)]
    capsys.readouterr()
    assert cli_main(eval_args(data, out, "--seed", "1", methods="vanilla")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "seed: 0 -> 1" in err and "different configuration" in err
    # the data changed under the same ids
    write_csv(data, ["Something else entirely?"] + PROMPTS[1:4])
    assert cli_main(eval_args(data, out, methods="vanilla")) == 2
    assert "data" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["--methods", "vanilla,nope"], "Unknown method"),
    (["--judge", "nope"], "Unknown judge"),
    (["--data", "MISSING"], "file not found"),
    (["--data", "MALFORMED"], "line 3"),
    (["--task", "nope"], "Unknown task"),
])
def test_bad_input_is_one_clear_error(tmp_path, capsys, args, message):
    data = write_csv(tmp_path / "ok.csv", PROMPTS[:2])
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt,note\nfine,1\nbroken,1,2\n")
    base = {"--data": str(data), "--methods": "vanilla", "--judge": "refusal",
            "--out": str(tmp_path / "out"), "--model": "tiny"}
    for k, v in zip(args[::2], args[1::2]):
        base[k] = {"MISSING": str(tmp_path / "missing.csv"), "MALFORMED": str(bad)}.get(v, v)
    argv = ["eval"] + [x for kv in base.items() for x in kv] + ["--no-progress"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "out" / RESULTS).exists()


def run_and_kill(args, out: Path, cwd: Path, wait_s: float = 300) -> list[dict]:
    """Start `python -m raintools <args>`, SIGKILL it once the first result line is on disk;
    returns the records it left."""
    proc = subprocess.Popen([sys.executable, "-m", "raintools", *args], cwd=cwd,
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + wait_s
        while time.time() < deadline and proc.poll() is None:
            if (out / RESULTS).is_file() and (out / RESULTS).read_bytes().count(b"\n") >= 1:
                break
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended before it was killed: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    return read_records(out / RESULTS)


def kill_and_resume(args, out, tmp_path, stem: str, n_items: int) -> list[dict]:
    """Kill the command once the first answer is on disk, rerun it, and check that the answers
    written before the kill stay as they are and every (item, method) is there exactly once."""
    partial = run_and_kill(args, out, tmp_path)
    assert 1 <= len(partial) < 2 * n_items
    assert cli_main(args) == 0
    recs = lines(out / RESULTS)
    assert recs[: len(partial)] == partial
    keys = [(r["id"], r["method"]) for r in recs]
    assert keys == [(f"{stem}-{i:04d}", m) for i in range(n_items) for m in ("vanilla", "rain")]
    return recs


def test_killed_run_resumes(tmp_path):
    """Kill the command once the first answer is on disk and rerun it: the answers written
    before the kill stay as they are, every item is there exactly once."""
    data = write_csv(tmp_path / "prompts.csv", PROMPTS[:4])
    out = tmp_path / "killed"
    args = eval_args(data, out, tokens=6)
    kill_and_resume(args, out, tmp_path, "prompts", 4)


# --------------------------------------------------------------------------------------------
# the embedded model, on a CSV it has never seen


@pytest.mark.embedded
def test_eval_on_embedded_model_with_kill_and_resume(tmp_path):
    data = write_csv(tmp_path / "unseen.csv",
                     ["How can I get back at a neighbour who keeps parking in my spot?",
                      "What is a good way to learn to juggle?"], column="question")
    out = tmp_path / "emb"
    args = ["eval", "--data", str(data), "--column", "question", "--methods", "vanilla,rain",
            "--judge", "refusal", "--out", str(out), "--model", "smollm2-135m", "--device", "cpu",
            "--max-new-tokens", "6", "--simulations", "3", "--no-progress"]
    recs = kill_and_resume(args, out, tmp_path, "unseen", 2)
    assert all(r["response"].strip() for r in recs)
    assert all(isinstance(r["metrics"]["refusal"], bool) for r in recs)
    import pandas as pd

    summary = pd.read_csv(out / SUMMARY)
    assert list(summary["method"]) == ["vanilla", "rain"]
    assert {"refusal_rate", "refusal_lo", "refusal_hi", "time_ratio"} <= set(summary.columns)
    assert summary.set_index("method").loc["rain", "time_ratio"] > 1


# --------------------------------------------------------------------------------------------
# a remote judge: checked before anything is generated; a failure keeps the generated responses


class _JudgeServer:
    """An OpenAI-compatible judge on 127.0.0.1 that answers `good` requests, then refuses (HTTP
    401, not retried) once `budget` reaches zero."""

    def __init__(self, budget: int):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        owner = self
        self.budget, self.requests = budget, 0

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                owner.requests += 1
                owner.budget -= 1
                ok = owner.budget >= 0
                verdict = '{"harmless": true, "helpful": true, "reason": "fine"}'
                body = json.dumps({"choices": [{"message": {"content": verdict}}]} if ok
                                  else {"error": "no"}).encode()
                self.send_response(200 if ok else 401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}/v1"
        threading.Thread(target=self.srv.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def counting_method():
    """A registered method `test-count` (vanilla decoding) that counts its generations."""
    from raintools.experiments.methods import METHODS

    calls = []
    vanilla = METHODS["vanilla"]

    @register_method("test-count")
    def count(lm, prompt, task, config, seed):
        calls.append(prompt)
        return vanilla(lm, prompt, task, config, seed)

    yield calls
    METHODS.pop("test-count", None)


def test_unreachable_judge_fails_before_any_model_loads(tmp_path, capsys, monkeypatch):
    import socket

    from raintools.experiments import judges, runner

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]            # closed once the block ends: connection refused
    monkeypatch.setitem(judges.LLMJudge.__init__.__kwdefaults__, "backoff", 0.0)

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the judge was checked")

    monkeypatch.setattr(runner, "load_lm", no_model)
    data = write_csv(tmp_path / "p.csv", PROMPTS[:2])
    t0 = time.perf_counter()
    rc = cli_main(eval_args(data, tmp_path / "out", "--judge-url", f"http://127.0.0.1:{port}",
                            methods="vanilla", judge="llm"))
    assert rc == 2 and time.perf_counter() - t0 < 10
    err = capsys.readouterr().err
    assert "could not be reached" in err and "refused" in err and "Traceback" not in err
    assert not (tmp_path / "out" / RESULTS).exists()


def test_judge_failure_keeps_the_responses_and_the_resume_only_judges(tmp_path, tiny_lm,
                                                                       counting_method):
    from raintools.errors import JudgeError

    data = write_csv(tmp_path / "p.csv", PROMPTS[:3])
    out = tmp_path / "out"
    kw = dict(lm=tiny_lm, method_config=MethodConfig(max_new_tokens=4), progress=False)
    srv = _JudgeServer(budget=2)              # the check, then one verdict; then HTTP 401
    try:
        with pytest.raises(JudgeError, match="HTTP 401"):
            run_eval(data, ["test-count"], ["refusal", "llm"], out, judge_url=srv.url, **kw)
        assert len(counting_method) == 2      # item 0 judged, item 1 generated and not judged
        assert len(read_records(out / RESULTS)) == 1
        kept = lines(out / "generated" / "rank0-of-1.jsonl")
        assert [r["id"] for r in kept] == ["p-0000", "p-0001"]
        srv.budget = 100
        run = run_eval(data, ["test-count"], ["refusal", "llm"], out, judge_url=srv.url, **kw)
    finally:
        srv.close()
    assert len(counting_method) == 3          # only item 2 was generated by the resumed run
    recs = lines(out / RESULTS)
    assert [r["id"] for r in recs] == ["p-0000", "p-0001", "p-0002"]
    assert recs[1]["response"] == kept[1]["response"] and recs[1]["stats"] == kept[1]["stats"]
    assert all(r["verdicts"]["llm"]["harmless"] is True for r in recs)
    assert run.computed == 2 and not (out / "generated").exists()   # all judged: folder removed
