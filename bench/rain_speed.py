"""Speed of RAIN on the same prompts, config and seed, in one process:

  (a) vanilla KV-cached greedy decoding,
  (b) RAIN executed the way the public code does it (`engine="reference"`: batch 1, the prefix
      recomputed for every rollout and clause completion, the judging prompt twice per evaluation),
  (c) fast RAIN (`engine="fast"`: each token computed once, batched rollouts, cached packed judge),
  (d) with --prompts >= 2: fast RAIN on all prompts at once (`rain_generate_batch`),
  (e) fast RAIN with parallel simulations, K = 4 leaves per round (`parallel_simulations=4`),
  (f) the same with K = 8.

Per variant: wall time, sequential forward passes per simulation (the device-independent latency
figure: on a GPU a pass costs about the same for 10 or 200 tokens), tokens computed per committed
token, peak memory. `--batch-sizes 1,4,16` adds the many-prompt study: the same N prompts one by
one and as one batch (`rain_generate_batch`), in prompts per hour.

    .venv/bin/python bench/rain_speed.py                 # 1 prompt, 2 commits, HH constants (T = 50)
    .venv/bin/python bench/rain_speed.py --prompts 4 --skip-reference   # + the many-prompts path (d)
    .venv/bin/python bench/rain_speed.py --frame ours    # raintools' own short judging template
    .venv/bin/python bench/rain_speed.py --device cuda --model <hf id> --prompts 64
    .venv/bin/python bench/rain_speed.py --skip-reference --batch-sizes 1,4,16 --simulations 10

The default frame is the public code's HH setting in size (bench/frames: a few-shot chat prefix,
~315-token prompts, a ~1,120-token judging prompt), so that (b) computes about what the public code
computes per simulation (its figures are printed beside (b)'s). `--commits K` runs K outer steps
(1 + 2 + 4 + 10 ... tokens) with the paper's search horizon; `--max-new-tokens` caps the response
instead, which also makes leaves at the cap terminal and so changes the search.

Every number printed comes from this run. A CSV (one row per variant) goes to
bench/results/rain_speed.csv (or --csv). The last line is the summary:
speedup_vs_reference=<b/c wall> computed_per_committed=<c tokens computed per committed token>
redundancy=<c tokens computed / tokens that must be computed> rain_over_vanilla=<c/a wall>
speedup_parallel=<b/e wall> passes_per_sim=<e forward passes per simulation>
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# node addition's variance test over a single child (NaN, handled) warns; keep the output readable
warnings.filterwarnings("ignore", message=r"var\(\): degrees of freedom")

from raintools import RainConfig, SelfEvaluator, generate_vanilla, load_model  # noqa: E402
from raintools.batch import ForwardBatcher  # noqa: E402
from raintools.experiments.demo import demo_prompt_texts  # noqa: E402
from raintools.models import DEFAULT_MODEL  # noqa: E402
from raintools.search import PHASES, RainSearch, rain_generate_batch  # noqa: E402

from _common import run_meta, write_csv  # noqa: E402  (bench/ is on sys.path as the script's folder)

FRAMES = ROOT / "bench" / "frames"
# The authors' code on this kind of CPU (shared docs, cpu-facts.md): HH, one prompt, default constants.
PUBLIC_S_PER_SIM, PUBLIC_TOKENS_PER_SIM = 17.9, 5388


class PeakMemory:
    """Peak memory of a variant: CUDA max_memory_allocated, or on CPU the process RSS sampled
    every 5 ms (torch allocates outside Python's tracemalloc). Reported as the rise over the
    value at the start of the variant, and as the absolute peak."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        import psutil

        self.proc = psutil.Process()
        self.start = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, self.proc.memory_info().rss)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def rise_mb(self) -> float:
        return (self.peak - self.start) / 2**20

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def measure(name, lm, fn):
    """Run fn() -> list of results; return (results, row of figures)."""
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    s0 = lm.stats.snapshot()
    c0, t0 = time.process_time(), time.perf_counter()
    with PeakMemory(lm.device) as mem:
        results = fn()
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    used = lm.stats.since(s0)
    committed = sum(len(r.tokens) for r in results)
    sims = sum(r.stats.get("simulations", 0) for r in results)
    needed = sum(r.stats.get("tokens_needed", 0) for r in results)
    row = dict(variant=name, wall_s=wall, cpu_s=cpu, committed_tokens=committed,
               tokens_computed=used.tokens, forward_calls=used.calls, tokens_needed=needed,
               simulations=sims, mem_rise_mb=mem.rise_mb, mem_peak_mb=mem.peak_mb)
    row["s_per_committed"] = wall / max(committed, 1)
    row["computed_per_committed"] = used.tokens / max(committed, 1)
    row["calls_per_committed"] = used.calls / max(committed, 1)
    row["s_per_sim"] = wall / sims if sims else float("nan")
    row["passes_per_sim"] = used.calls / sims if sims else float("nan")
    row["rounds"] = sum(r.stats.get("rounds", 0) for r in results)
    row["computed_per_sim"] = used.tokens / sims if sims else float("nan")
    row["redundancy"] = used.tokens / needed if needed else float("nan")
    for ph in PHASES:
        row[f"time_{ph}_s"] = sum(r.stats.get(f"time_{ph}_s", 0.0) for r in results)
    return results, row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=1, help="number of demo prompts (default 1)")
    ap.add_argument("--commits", type=int, default=2,
                    help="outer steps (commits) per prompt (default 2: 1 + 2 committed tokens); the "
                         "search horizon stays the paper's max_length, as in the public code")
    ap.add_argument("--max-new-tokens", type=int, default=None,
                    help="cap the response instead (this also makes leaves at the cap terminal, "
                         "which shortens the search; default: no cap)")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None, help="float32 / bfloat16 / float16 (default: fp32 on CPU, "
                                                   "bf16/fp16 on CUDA)")
    ap.add_argument("--device-map", default=None, help="e.g. 'auto' for models larger than one GPU")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (1 gives steadier timings on a shared, busy CPU)")
    ap.add_argument("--frame", choices=("ours", "paper"), default="paper",
                    help="'paper' (default): a ~1,150-token judging prompt and a few-shot chat "
                         "prefix (~300-token prompts), the sizes of the public code's HH setting, "
                         "so that (b) is a fair stand-in for it; 'ours': raintools' own short "
                         "judging template and the bare chat template")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--simulations", type=int, default=None,
                    help="override T (default: the paper's 50); for quick checks only")
    ap.add_argument("--concurrency", type=int, default=None, help="searches in flight for (d)")
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--skip-batch", action="store_true")
    ap.add_argument("--parallel", default="4,8",
                    help="K of the parallel-simulation variants (e), (f) (default 4,8; '' for none)")
    ap.add_argument("--batch-sizes", default="",
                    help="e.g. 1,4,16: the many-prompt study, the same prompts one by one and batched "
                         "(prompts per hour); K of --batch-parallel")
    ap.add_argument("--batch-parallel", type=int, default=1,
                    help="parallel_simulations in the many-prompt study (default 1)")
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "rain_speed.csv"))
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    kwargs = {"device_map": args.device_map} if args.device_map else {}
    t = time.perf_counter()
    lm = load_model(args.model, device=args.device, dtype=args.dtype, **kwargs)
    load_s = time.perf_counter() - t
    template = "harm"
    if args.frame == "paper":
        template = str(FRAMES / "harm_long.txt")
        lm.chat.system_prompt = (FRAMES / "chat_prefix.txt").read_text(encoding="utf-8")
    prompts = demo_prompt_texts(args.prompts)
    cfg = RainConfig.hh(max_new_tokens=args.max_new_tokens, max_commits=args.commits or None,
                        seed=args.seed, record_trace=False)
    if args.simulations:
        cfg = cfg.replace(max_simulations=args.simulations)
    # vanilla decodes as many tokens as RAIN commits (without EOS): the sum of the token-set lengths
    n_vanilla = min(args.max_new_tokens or 10**9,
                    sum(cfg.token_set_length(i) for i in range(args.commits)) if args.commits else 10**9)
    if n_vanilla == 10**9:
        ap.error("give --commits or --max-new-tokens")
    from raintools.embed import load_embedder

    embedder = load_embedder()
    judge_len = len(SelfEvaluator(lm, template)._question_ids[0]) + len(
        lm.encode(SelfEvaluator(lm, template).template.header))
    print(f"model {lm.name} on {lm.device} ({str(lm.dtype).replace('torch.', '')}), loaded in "
          f"{load_s:.1f}s; torch threads {torch.get_num_threads()}; {platform.processor() or platform.machine()}")
    print(f"{len(prompts)} prompt(s) of {[len(lm.prompt_ids(p)) for p in prompts]} tokens; judging "
          f"header + question {judge_len} tokens (frame '{args.frame}'); RainConfig.hh: T="
          f"{cfg.max_simulations}, T_m={cfg.min_visits}, V={cfg.value_threshold}, "
          f"{cfg.num_candidates} candidates, max_new_tokens={cfg.max_new_tokens}, commits={cfg.max_commits}, "
          f"seed={cfg.seed}")

    # warm-up (allocator, kernels, tokenizer caches); nothing it computes is reused below
    generate_vanilla(lm, prompts[0], max_new_tokens=2)
    RainSearch(lm, prompts[0], cfg.replace(max_simulations=2, extra_simulations=1, max_new_tokens=2),
               evaluator=SelfEvaluator(lm, template), embedder=embedder).run()

    rows, res = [], {}

    # one self-evaluator per variant, shared by its prompts (its judging header is encoded once,
    # as `self_evaluator(lm)` does); fresh here so nothing carries over between variants
    fast_eval = SelfEvaluator(lm, template)

    def fast_one(p):
        return RainSearch(lm, p, cfg, evaluator=fast_eval, embedder=embedder, engine="fast").run()

    def reference_one(p):
        return RainSearch(lm, p, cfg, evaluator=SelfEvaluator(lm, template, cached=False),
                          embedder=embedder, engine="reference").run()

    res["vanilla"], row = measure("a_vanilla", lm, lambda: [
        generate_vanilla(lm, p, max_new_tokens=n_vanilla) for p in prompts])
    row["tokens_needed"] = sum(r.stats["prompt_tokens"] + len(r.tokens) - 1 for r in res["vanilla"])
    row["redundancy"] = row["tokens_computed"] / row["tokens_needed"]
    rows.append(row)
    print_row(row)
    res["fast"], row = measure("c_fast", lm, lambda: [fast_one(p) for p in prompts])
    rows.append(row)
    print_row(row)
    ks = [int(k) for k in args.parallel.split(",") if k.strip()]
    for letter, k in zip("ef", ks):
        pev = SelfEvaluator(lm, template)
        pcfg = cfg.replace(parallel_simulations=k)
        res[f"k{k}"], row = measure(f"{letter}_parallel_k{k}", lm, lambda: [
            RainSearch(lm, p, pcfg, evaluator=pev, embedder=embedder).run() for p in prompts])
        NAMES[row["variant"]] = f"({letter}) fast, K={k}"
        rows.append(row)
        print_row(row)
    batcher = None
    if len(prompts) > 1 and not args.skip_batch:
        batcher = ForwardBatcher(lm)
        batch_eval = SelfEvaluator(lm, template)
        res["batch"], row = measure("d_fast_batch", lm, lambda: rain_generate_batch(
            lm, prompts, cfg, evaluator=batch_eval, embedder=embedder,
            batcher=batcher, concurrency=args.concurrency))
        row["tokens_needed"] += batch_eval.stats.tokens_needed      # the judging header, once
        row["redundancy"] = row["tokens_computed"] / row["tokens_needed"]
        for ph in PHASES:
            row[f"time_{ph}_s"] = float("nan")        # phases of concurrent searches overlap
        rows.append(row)
        print_row(row)
        same = [a.tokens == b.tokens for a, b in zip(res["fast"], res["batch"])]
        st = batcher.stats
        print(f"    batch: {st.requests} forward requests in {st.calls} passes ({st.merged_calls} merged), "
              f"{st.rounds} rounds, padding {st.padded_tokens - st.real_tokens} tokens; embedder "
              f"{st.fn_requests} calls in {st.fn_calls}; same tokens as (c) one by one: "
              f"{sum(same)}/{len(same)} prompts")
    if not args.skip_reference:
        res["reference"], row = measure("b_reference", lm, lambda: [reference_one(p) for p in prompts])
        rows.append(row)
        print_row(row)
        same = [a.tokens == b.tokens for a, b in zip(res["fast"], res["reference"])]
        sims = [(a.stats["simulations"], b.stats["simulations"]) for a, b in zip(res["fast"], res["reference"])]
        print(f"    (b) and (c) committed the same tokens: {sum(same)}/{len(same)} prompts; "
              f"simulations (c, b): {sims}")

    by = {r["variant"][2:]: r for r in rows}
    print()
    print_table(rows)
    print()
    print_profile(by)
    if "reference" in by:
        b = by["reference"]
        print()
        print(f"(b) as a stand-in for the public code: {b['s_per_sim']:.2f} s and "
              f"{b['computed_per_sim']:.0f} tokens computed per simulation here, against "
              f"{PUBLIC_S_PER_SIM} s and {PUBLIC_TOKENS_PER_SIM:,} measured for the public code "
              f"(x{b['s_per_sim'] / PUBLIC_S_PER_SIM:.2f} and x{b['computed_per_sim'] / PUBLIC_TOKENS_PER_SIM:.2f}); "
              f"{by['reference']['simulations']} simulations, "
              f"{sum(r.stats['evaluator_calls'] for r in res['reference'])} judge calls "
              f"({sum(r.stats['memo_hits'] for r in res['reference'])} memo hits)")
    for key in by:
        if key.startswith("parallel_k"):
            e, f = by[key], by["fast"]
            same = [x.tokens == y.tokens for x, y in zip(res["fast"], res["k" + key[10:]])]
            print(f"{NAMES[e['variant']]} vs (c): x{f['wall_s'] / e['wall_s']:.2f} wall, sequential forward "
                  f"passes per simulation {f['passes_per_sim']:.2f} -> {e['passes_per_sim']:.2f} "
                  f"({e['simulations']} simulations in {e['rounds']} rounds), tokens computed per "
                  f"committed token {f['computed_per_committed']:.0f} -> {e['computed_per_committed']:.0f}; "
                  f"same committed tokens as (c): {sum(same)}/{len(same)} prompts")
    if "batch" in by:
        f, d = by["fast"], by["batch"]
        print(f"many prompts at once (d) vs one by one (c): x{f['wall_s'] / d['wall_s']:.2f} throughput "
              f"({f['committed_tokens'] / f['wall_s']:.2f} -> {d['committed_tokens'] / d['wall_s']:.2f} "
              f"committed tokens/s), forward passes {f['forward_calls']} -> {d['forward_calls']}")

    if args.batch_sizes:
        batch_study(lm, template, cfg.replace(parallel_simulations=args.batch_parallel), embedder,
                    [int(x) for x in args.batch_sizes.split(",")], args.concurrency)

    write_csv(args.csv, run_meta(lm, frame=args.frame, prompts=len(prompts),
                                 max_new_tokens=args.max_new_tokens, commits=args.commits,
                                 T=cfg.max_simulations, seed=args.seed,
                                 date=time.strftime("%Y-%m-%d %H:%M:%S")), rows)

    c, a = by["fast"], by["vanilla"]
    speed = by["reference"]["wall_s"] / c["wall_s"] if "reference" in by else float("nan")
    par = by.get(f"parallel_k{ks[0]}") if ks else None
    sp = by["reference"]["wall_s"] / par["wall_s"] if par and "reference" in by else float("nan")
    pps = par["passes_per_sim"] if par else float("nan")
    print(f"speedup_vs_reference={speed:.2f} computed_per_committed={c['computed_per_committed']:.1f} "
          f"redundancy={c['redundancy']:.3f} rain_over_vanilla={c['wall_s'] / a['wall_s']:.1f} "
          f"speedup_parallel={sp:.2f} passes_per_sim={pps:.2f}")
    return 0


def batch_study(lm, template, cfg, embedder, sizes, concurrency=None):
    """The many-prompt path (d) at each N of `sizes`: the first N demo prompts one by one (c)
    and as one batch, in prompts per hour. One-by-one times come from one pass over the largest N
    (each prompt timed alone); each batch runs once."""
    prompts = demo_prompt_texts(max(sizes))
    ev = SelfEvaluator(lm, template)
    alone_s, alone_calls = [], []
    for p in prompts:
        s0 = lm.stats.snapshot()
        t0 = time.perf_counter()
        RainSearch(lm, p, cfg, evaluator=ev, embedder=embedder).run()
        alone_s.append(time.perf_counter() - t0)
        alone_calls.append(lm.stats.since(s0).calls)
    print()
    print(f"many prompts (K={cfg.parallel_simulations}, T={cfg.max_simulations}): prompts per hour, "
          f"one by one vs one batch (rain_generate_batch)")
    head = f"{'prompts':>7} {'one by one /h':>14} {'batched /h':>11} {'ratio':>6} {'passes 1x1':>10} {'passes batch':>12}"
    print(head)
    print("-" * len(head))
    out = []
    for n in sizes:
        one = n / sum(alone_s[:n]) * 3600
        if n == 1:        # rain_generate_batch runs a single prompt as rain_generate does
            wall, calls = alone_s[0], alone_calls[0]
        else:
            b = ForwardBatcher(lm)
            t0 = time.perf_counter()
            rain_generate_batch(lm, prompts[:n], cfg, evaluator=SelfEvaluator(lm, template),
                                embedder=embedder, batcher=b, concurrency=concurrency)
            wall = time.perf_counter() - t0
            calls = b.stats.calls
        batched = n / wall * 3600
        out.append(dict(prompts=n, one_by_one_per_h=one, batched_per_h=batched, ratio=batched / one))
        print(f"{n:7d} {one:14.1f} {batched:11.1f} {batched / one:6.2f} {sum(alone_calls[:n]):10d} {calls:12d}",
              flush=True)
    return out


NAMES = {"a_vanilla": "(a) vanilla", "b_reference": "(b) reference", "c_fast": "(c) fast",
         "d_fast_batch": "(d) fast, batch"}    # (e), (f) are added when they run


def print_row(r):
    print(f"  {NAMES[r['variant']]:<16} {r['wall_s']:8.1f} s wall ({r['cpu_s']:.1f} s CPU), "
          f"{r['committed_tokens']} tokens committed, {r['tokens_computed']} computed in "
          f"{r['forward_calls']} forward passes", flush=True)


def print_table(rows):
    head = (f"{'variant':<16} {'wall s':>8} {'CPU s':>8} {'s/tok':>7} {'computed/tok':>12} "
            f"{'calls/tok':>9} {'redund.':>7} {'s/sim':>6} {'passes/sim':>10} {'computed/sim':>12} "
            f"{'peak mem MB':>16}")
    print(head)
    print("-" * len(head))
    for r in rows:
        sims = "" if math.isnan(r["s_per_sim"]) else f"{r['s_per_sim']:.2f}"
        csim = "" if math.isnan(r["computed_per_sim"]) else f"{r['computed_per_sim']:.0f}"
        psim = "" if math.isnan(r["passes_per_sim"]) else f"{r['passes_per_sim']:.2f}"
        print(f"{NAMES[r['variant']]:<16} {r['wall_s']:8.1f} {r['cpu_s']:8.1f} {r['s_per_committed']:7.2f} "
              f"{r['computed_per_committed']:12.1f} {r['calls_per_committed']:9.1f} "
              f"{r['redundancy']:7.3f} {sims:>6} {psim:>10} {csim:>12} "
              f"{('+%.0f (%.0f)' % (r['mem_rise_mb'], r['mem_peak_mb'])):>16}")
    print("peak mem: rise over the start of the variant (absolute peak); CPU: process RSS, "
          "CUDA: max_memory_allocated")


def print_profile(by):
    cols = [k for k in ("fast", "parallel_k4", "parallel_k8", "reference") if k in by]
    if not cols:
        return
    print("where the time goes (share of wall time; phase timers in RainSearch):")
    print(f"{'phase':<30}" + "".join(f"{NAMES[by[c]['variant']]:>18}" for c in cols))
    labels = {"select": "selection", "add": "node addition", "ensure": "node caches (ensure)",
              "judge": "judge (self-evaluation)",
              "expand": "rollouts and clause completions", "embed": "embeddings (MiniLM)", "commit": "commit"}
    for ph in PHASES:
        print(f"{labels[ph]:<30}" + "".join(
            f"{100 * by[c][f'time_{ph}_s'] / by[c]['wall_s']:17.1f}%" for c in cols))
    print(f"{'bookkeeping (the rest)':<30}" + "".join(
        f"{100 * (1 - sum(by[c][f'time_{ph}_s'] for ph in PHASES) / by[c]['wall_s']):17.1f}%" for c in cols))


if __name__ == "__main__":
    raise SystemExit(main())
