"""RAIN with its forward passes on a vLLM server (`engine="vllm"`, server mode) beside the
transformers fast engine, on the same demo prompts, constants and seed.

Per variant: wall time, prompts per hour, simulations, engine requests per simulation (vLLM) or
forward passes per simulation (transformers), and for vLLM the HTTP requests per simulation, the
sequential engine calls per simulation (the calls a search waits on, one after the other: node
distributions, expansions with their completions, judgements; the requests inside one call go out
together) and the tokens the server computed per committed token (prompt tokens its prefix cache
missed + generated tokens, from its Prometheus counters `vllm:prefix_cache_queries_total`,
`vllm:prefix_cache_hits_total`, `vllm:generation_tokens_total`; the judge's and the search's
requests together: run it on a server nothing else uses). Each row records the machine, torch
threads and the load average before and after.

    .venv/bin/python -m raintools.vllm_server --port 8000 --max-logprobs -1 &   # or any vLLM server
    .venv/bin/python bench/vllm_speed.py --server http://127.0.0.1:8000 --concurrency 1,8,32

`--skip-transformers` leaves out the in-process baseline. Every number printed comes from this run;
a CSV goes to bench/results/vllm_speed.csv (or --csv).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from raintools import RainConfig, load_model  # noqa: E402
from raintools.evaluate import self_evaluator  # noqa: E402
from raintools.experiments.demo import demo_prompt_texts  # noqa: E402
from raintools.search import rain_generate_batch  # noqa: E402
from raintools.vllm_engine import shared_client  # noqa: E402


def prompts_for(n: int) -> list[str]:
    """n demo prompts (the demo set repeated when it has fewer)."""
    texts = demo_prompt_texts(n)
    return [texts[i % len(texts)] for i in range(n)]


def server_counters(client) -> dict:
    c = client.prefix_cache()
    return {"computed": c["queries"] - c["hits"] + c["generation_tokens"], **c}


class WaitCounter:
    """Counts the engine calls the searches wait on (VllmEngine's start / ensure / expand and
    VllmJudge's judgements): summed over the searches of a batch, each of which
    makes its calls one after the other."""

    def __init__(self):
        import threading
        from raintools.vllm_engine import VllmEngine, VllmJudge

        self.n, self.lock = 0, threading.Lock()
        for cls, names in ((VllmEngine, ("start", "ensure", "expand")),
                           (VllmJudge, ("__call__",))):
            for name in names:
                setattr(cls, name, self.counted(getattr(cls, name), name == "ensure"))

    def counted(self, fn, ensure=False):
        def call(engine, *args, **kwargs):
            # ensure(node) waits only when the node lacks its distribution
            if not ensure or args[0].logits is None:
                with self.lock:
                    self.n += 1
            return fn(engine, *args, **kwargs)
        return call


def machine() -> dict:
    import platform
    import torch

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return {"machine": f"{platform.node()} {cpu} x{os.cpu_count()}", "torch_threads": torch.get_num_threads()}


def run(lm, prompts, cfg, engine, concurrency, client=None, waits=None):
    ev = self_evaluator(lm, "harm", cfg.eval_mode)
    before = server_counters(client) if client else None
    req0 = client.stats.requests if client else 0
    wait0 = waits.n if waits else 0
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = rain_generate_batch(lm, prompts, cfg, evaluator=ev, engine=engine,
                                  concurrency=concurrency)
    wall = time.perf_counter() - t0
    sims = sum(r.stats["simulations"] for r in results)
    committed = sum(r.stats["committed_tokens"] for r in results)
    row = {"engine": engine, "prompts": len(prompts), "concurrency": concurrency, "wall_s": round(wall, 1),
           "prompts_per_hour": round(3600 * len(prompts) / wall, 1), "simulations": sims,
           "committed_tokens": committed,
           "engine_calls_per_sim": round(sum(r.stats["forward_calls"] for r in results) / max(sims, 1), 2)}
    if client:
        after = server_counters(client)
        row["http_requests"] = client.stats.requests - req0
        row["requests_per_sim"] = round(row["http_requests"] / max(sims, 1), 2)
        row["sequential_calls_per_sim"] = round((waits.n - wait0) / max(sims, 1), 2)
        row["server_tokens_per_committed"] = round((after["computed"] - before["computed"]) / max(committed, 1), 1)
        q = after["queries"] - before["queries"]
        row["prefix_hit_rate"] = round((after["hits"] - before["hits"]) / q, 3) if q else None
    row.update(load_1m_before=round(load0, 2), load_1m_after=round(os.getloadavg()[0], 2),
               date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **machine())
    return row, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default=os.environ.get("RAINTOOLS_SERVER", "http://127.0.0.1:8000"))
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--concurrency", default="1,8", help="prompts in flight, e.g. 1,8,32")
    ap.add_argument("--simulations", type=int, default=10, help="T (the paper's HH setting: 50)")
    ap.add_argument("--commits", type=int, default=2)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "vllm_speed.csv"))
    args = ap.parse_args()
    os.environ["RAINTOOLS_SERVER"] = args.server     # what engine="vllm" talks to
    levels = [int(x) for x in args.concurrency.split(",") if x]
    cfg = RainConfig.hh(max_commits=args.commits, max_simulations=args.simulations,
                        extra_simulations=max(args.simulations // 5, 1))
    lm = load_model(args.model, device="cpu")
    client = shared_client(lm, args.server)
    waits = WaitCounter()
    print(f"server {args.server} ({client.model}); RainConfig.hh with T={cfg.max_simulations}, "
          f"commits={cfg.max_commits}; concurrency {levels}", flush=True)
    rows = []
    if not args.skip_transformers:
        row, _ = run(lm, prompts_for(1), cfg, "fast", 1)
        rows.append(row)
        print(row, flush=True)
        write(args.csv, rows)
    for n in levels:
        row, _ = run(lm, prompts_for(n), cfg, "vllm", n, client, waits)
        rows.append(row)
        print(row, flush=True)
        write(args.csv, rows)             # after each variant: a cut-off run keeps what it measured
    print(f"wrote {args.csv}")


def write(path, rows) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows[::-1] for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


if __name__ == "__main__":
    main()
