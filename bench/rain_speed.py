"""Speed of RAIN on bench prompts from HH and AdvBench with full answers, in one process:

  (a) vanilla KV-cached greedy decoding (as many tokens as RAIN commits),
  (c) fast RAIN, K = 1 (the paper's sequential search: each token computed once, packed passes),
  (e), (f), ... fast RAIN with K = 4, 8 simulations in flight (`--ks`; no round barrier),
  (b) RAIN executed the way the public code does it (`engine="reference"`) on fewer prompts and
      commits (`--reference-prompts`, `--reference-commits`: its hours), compared with the fast
      variants at the same commit of the same prompts,
  bf16: with `--bf16-prompts N`, fast K = 1 with bfloat16 weights on the first N prompts: its
      committed tokens and judge votes against fp32's.

Each prompt uses its dataset's constants (`RainConfig.hh`, `RainConfig.advbench`) for `--commits`
outer steps (default 6: 1 + 2 + 4 + 10 + 10 + 10 = 37 tokens unless the answer ends). Per prompt and
variant one CSV row as it finishes (bench/results/rain_speed_prompts.csv): wall and CPU seconds,
sequential forward passes per simulation, tokens computed per committed token, peak memory, the
time in forward passes, the machine's load. At the end one row per variant (bench/results/
rain_speed.csv): means and spreads over the prompts, and the memory bandwidth measured in the same
run (a large array copy): each variant's time per forward pass against the floor of reading the
weights once (weight bytes / bandwidth).

    .venv/bin/python bench/rain_speed.py                        # 8 prompts (4 HH + 4 AdvBench)
    .venv/bin/python bench/rain_speed.py --prompts 2 --commits 3 --reference-prompts 0

Long runs: every row carries the run's name (`--run`, default the start time); a rerun with the
same `--run` skips the (variant, prompt) rows that run already wrote, and `--shard I/N` runs only
prompts I, I + N, ... (the reference and bf16 checks on the shard's own prompts), so N processes
of one torch thread each can share the prompts. `--summary-only --run NAME` writes the summary
from the rows of that run (the summary of a run is always computed from its rows in the CSV).

The default frame is the public code's HH setting in size (bench/frames: a few-shot chat prefix,
a judging prompt of 1,140-1,148 tokens before the response on the 8 bench prompts:
bench/results/judge_prompt_tokens.csv). The last line is the summary: speedup_vs_reference=<b/c wall>
computed_per_committed=<c> redundancy=<c computed / needed> rain_over_vanilla=<c/a wall>
speedup_parallel=<b/e wall> passes_per_sim=<e, mean over prompts> bandwidth_floor_ratio=<e s per
forward pass / floor>
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
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# node addition's variance test over a single child (NaN, handled) warns; keep the output readable
warnings.filterwarnings("ignore", message=r"var\(\): degrees of freedom")

from raintools import RainConfig, SelfEvaluator, generate_vanilla, load_model  # noqa: E402
from raintools.experiments.data import load_advbench, load_hh_rlhf  # noqa: E402
from raintools.models import DEFAULT_MODEL  # noqa: E402
from raintools.observe import Observer  # noqa: E402
from raintools.search import PHASES, RainSearch  # noqa: E402

from _common import append_row, run_meta  # noqa: E402  (bench/ is on sys.path as the script's folder)

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


class CommitClock(Observer):
    """Wall seconds at each commit of a search (to compare variants at the same commit)."""

    def __init__(self):
        self.t0, self.at = time.perf_counter(), []

    def committed(self, search, child):
        self.at.append(time.perf_counter() - self.t0)


class TimedForward:
    """`lm.forward` with the seconds spent inside it (the forward passes' own time)."""

    def __init__(self, lm):
        self.inner, self.seconds = lm.forward, 0.0
        lm.forward = self

    def __call__(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - t0


def bandwidth_gbs(mb: int = 1024, repeats: int = 5) -> float:
    """Memory bandwidth in GB/s: the best of `repeats` copies of an `mb` MB array (bytes read +
    bytes written per second)."""
    src = torch.ones(mb * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def measure(variant, lm, fn, timed: TimedForward):
    """Run fn() -> one result; return (result, row of figures)."""
    s0, f0 = lm.stats.snapshot(), timed.seconds
    load0 = os.getloadavg()[0]
    c0, t0 = time.process_time(), time.perf_counter()
    with PeakMemory(lm.device) as mem:
        r = fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    used = lm.stats.since(s0)
    committed, sims = len(r.tokens), r.stats.get("simulations", 0)
    row = dict(variant=variant, wall_s=wall, cpu_s=cpu, committed_tokens=committed,
               tokens_computed=used.tokens, forward_calls=used.calls, forward_s=timed.seconds - f0,
               simulations=sims, tokens_needed=r.stats.get("tokens_needed", 0),
               mem_rise_mb=mem.rise_mb, mem_peak_mb=mem.peak_mb,
               load1_start=load0, load1_end=os.getloadavg()[0], same_tokens_as_fp32="")
    row["computed_per_committed"] = used.tokens / max(committed, 1)
    row["passes_per_sim"] = used.calls / sims if sims else float("nan")
    row["s_per_pass"] = row["forward_s"] / max(used.calls, 1)
    row["redundancy"] = used.tokens / row["tokens_needed"] if row["tokens_needed"] else float("nan")
    return r, row


def bench_prompts(args, n: int) -> list[tuple[str, str]]:
    """(dataset, prompt): the first prompts of HH (harmless-base test) and AdvBench, alternating."""
    hh = [it.prompt for it in load_hh_rlhf(args.hh, limit=n)]
    adv = [it.prompt for it in load_advbench(args.advbench, limit=n)]
    out = []
    for i in range(n):
        out.append(("hh", hh[i // 2]) if i % 2 == 0 else ("advbench", adv[i // 2]))
    return out


@dataclass
class Done:
    """A (variant, prompt) row of this run: written now (`tokens`: the committed tokens) or by an
    earlier process (read from the CSV: `tokens` None, the count only)."""
    committed: int
    simulations: int
    tokens: list[int] | None = None


def main(argv=None) -> int:
    data = Path(os.environ.get("RAINTOOLS_DATA", "/work/shared/data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8, help="bench prompts, HH and AdvBench alternating")
    ap.add_argument("--hh", default=str(data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"))
    ap.add_argument("--advbench", default=str(data / "advbench" / "harmful_behaviors.csv"))
    ap.add_argument("--commits", type=int, default=6, help="outer steps per prompt (default 6: 37 tokens)")
    ap.add_argument("--ks", default="1,4,8", help="K of the fast variants (default 1,4,8)")
    ap.add_argument("--reference-prompts", type=int, default=1)
    ap.add_argument("--reference-commits", type=int, default=2)
    ap.add_argument("--bf16-prompts", type=int, default=0)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--frame", choices=("ours", "paper"), default="paper")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--simulations", type=int, default=None, help="override T; for quick checks only")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"), help="folder of the CSVs")
    ap.add_argument("--bandwidth-mb", type=int, default=1024, help="size of the copied array (MB)")
    ap.add_argument("--run", default=None, help="the run's name (default: its start time); a rerun "
                    "with the same name skips the rows it already wrote")
    ap.add_argument("--shard", default="0/1", help="I/N: run prompts I, I + N, ... only")
    ap.add_argument("--summary-only", action="store_true", help="summarize the rows of --run, run nothing")
    args = ap.parse_args(argv)
    per_prompt = Path(args.out) / "rain_speed_prompts.csv"
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if args.summary_only:
        if not args.run:
            ap.error("--summary-only needs --run")
        return summarize(args.run, ks, args.out)
    try:
        shard, shards = (int(x) for x in args.shard.split("/"))
        assert 0 <= shard < shards
    except (ValueError, AssertionError):
        ap.error(f"--shard takes I/N with 0 <= I < N, not {args.shard!r}")
    args.run = args.run or time.strftime("%Y-%m-%dT%H:%M:%S")

    if args.threads:
        torch.set_num_threads(args.threads)
    t = time.perf_counter()
    lm = load_model(args.model)
    load_s = time.perf_counter() - t
    template = "harm"
    if args.frame == "paper":
        template = str(FRAMES / "harm_long.txt")
        lm.chat.system_prompt = (FRAMES / "chat_prefix.txt").read_text(encoding="utf-8")
    prompts = bench_prompts(args, args.prompts)
    mine = [i for i in range(len(prompts)) if i % shards == shard]
    done = {}
    if per_prompt.exists():
        import pandas as pd

        old = pd.read_csv(per_prompt)
        if "run" in old:
            done = {(r.variant, int(r.prompt)): Done(int(r.committed_tokens), int(r.simulations))
                    for r in old[old.run == args.run].itertuples()}

    def config(dataset, **kw):
        cfg = (RainConfig.advbench if dataset == "advbench" else RainConfig.hh)(
            **{"max_commits": args.commits, "seed": args.seed, "record_trace": False, **kw})
        return cfg.replace(max_simulations=args.simulations) if args.simulations else cfg

    from raintools.embed import load_embedder

    embedder = load_embedder()
    weight_bytes = sum(p.numel() * p.element_size() for p in lm.model.parameters())
    gbs = bandwidth_gbs(args.bandwidth_mb)
    floor = weight_bytes / (gbs * 1e9)
    meta = run_meta(lm, frame=args.frame, commits=args.commits, seed=args.seed, machine=platform.processor()
                    or platform.machine(), cpus=os.cpu_count(), bandwidth_gbs=round(gbs, 2),
                    weight_mb=round(weight_bytes / 2**20, 1), floor_s=round(floor, 5),
                    date=time.strftime("%Y-%m-%d %H:%M:%S"), run=args.run, shard=args.shard)
    print(f"model {lm.name} ({str(lm.dtype).replace('torch.', '')}, {weight_bytes / 2**20:.0f} MB of weights), "
          f"loaded in {load_s:.1f}s; torch threads {torch.get_num_threads()}; {meta['machine']}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; memory bandwidth {gbs:.1f} GB/s "
          f"({args.bandwidth_mb} MB copy): reading the weights once takes {1000 * floor:.1f} ms")
    print(f"{len(prompts)} prompts ({sum(d == 'hh' for d, _ in prompts)} HH, "
          f"{sum(d == 'advbench' for d, _ in prompts)} AdvBench) of "
          f"{[len(lm.prompt_ids(p)) for _, p in prompts]} tokens; {args.commits} commits each; "
          f"K = {ks}; reference on {args.reference_prompts} prompt(s), {args.reference_commits} commits; "
          f"run {args.run!r}, shard {args.shard}: prompts {mine}, {sum(i in mine for _, i in done)} of its rows already written")

    # warm-up (allocator, kernels, tokenizer caches); nothing it computes is reused below
    generate_vanilla(lm, prompts[0][1], max_new_tokens=2)
    RainSearch(lm, prompts[0][1], config("hh").replace(max_simulations=2, extra_simulations=1, max_commits=1),
               evaluator=SelfEvaluator(lm, template), embedder=embedder).run()
    timed = TimedForward(lm)
    evaluators = {}          # one self-evaluator per variant (its judging header encoded once)

    def run_one(variant, i, fn, clock=None) -> Done:
        if (variant, i) in done:
            return done[variant, i]
        r, row = measure(variant, lm, fn, timed)
        row.update(prompt=i, dataset=prompts[i][0], commits_made=len(getattr(r, "token_sets", [])),
                   commit_s=";".join(f"{t:.3f}" for t in (clock.at if clock else [])))
        append_row(per_prompt, meta, row)
        done[variant, i] = Done(row["committed_tokens"], row["simulations"], list(r.tokens))
        print(f"  prompt {i} ({prompts[i][0]}) {variant:<10} {row['wall_s']:8.1f} s wall ({row['cpu_s']:.1f} CPU), "
              f"{row['committed_tokens']} tokens, {row['simulations']} sims, {row['passes_per_sim']:.2f} "
              f"passes/sim, {row['s_per_pass'] * 1000:.0f} ms/pass, load {row['load1_end']:.1f}", flush=True)
        return r

    def fast(variant, i, k, **kw):
        ds, p = prompts[i]
        ev = evaluators.setdefault(variant, SelfEvaluator(lm, template))
        clock = CommitClock()
        return run_one(variant, i, lambda: RainSearch(lm, p, config(ds, parallel_simulations=k, **kw),
                                                       evaluator=ev, embedder=embedder,
                                                       observers=[clock]).run(), clock)

    for i in mine:
        ds, p = prompts[i]
        for k in sorted(ks, key=lambda k: (k == ks[0], k)):      # the K > 1 variants first
            fast(f"fast_k{k}", i, k)
        n_tokens = done[f"fast_k{ks[0]}", i].committed
        run_one("vanilla", i, lambda: generate_vanilla(lm, p, max_new_tokens=max(n_tokens, 1)))
    for i in mine:
        if i < args.reference_prompts:
            ds, p = prompts[i]
            ref_cfg = config(ds, max_commits=args.reference_commits)
            run_one("reference", i, lambda: RainSearch(lm, p, ref_cfg, evaluator=SelfEvaluator(
                lm, template, cached=False), embedder=embedder, engine="reference").run())
    b16 = None
    for i in mine:
        if i < args.bf16_prompts and ("bf16_k1", i) not in done:
            ds, p = prompts[i]
            fp32 = done[f"fast_k{ks[0]}", i]
            if fp32.tokens is None:        # written by an earlier process: its tokens again
                again = RainSearch(lm, p, config(ds), evaluator=SelfEvaluator(lm, template), embedder=embedder).run()
                fp32 = Done(len(again.tokens), again.stats["simulations"], list(again.tokens))
                print(f"  prompt {i} ({ds}) fp32 K = 1 searched again (its row is an earlier process's): "
                      f"{fp32.committed} tokens, {fp32.simulations} simulations", flush=True)
            if b16 is None:
                b16 = load_model(args.model, dtype="bfloat16")
                b16.chat.system_prompt = lm.chat.system_prompt
                timed16 = TimedForward(b16)
            r, row = measure("bf16_k1", b16, lambda: RainSearch(b16, p, config(ds), evaluator=SelfEvaluator(
                b16, template), embedder=embedder).run(), timed16)
            row.update(prompt=i, dataset=ds, commits_made=len(r.token_sets), commit_s="",
                       same_tokens_as_fp32=r.tokens == fp32.tokens)
            append_row(per_prompt, meta, row)
            print(f"  prompt {i} ({ds}) bf16 K = 1: {row['wall_s']:.1f} s wall, same committed tokens as fp32: "
                  f"{row['same_tokens_as_fp32']}; simulations {r.stats['simulations']} vs "
                  f"{fp32.simulations} (fp32)", flush=True)
    return summarize(args.run, ks, args.out)


def summarize(run: str, ks: list[int], out) -> int:
    """One row per variant of run `run` (its rows in rain_speed_prompts.csv, from every shard):
    means and spreads over the prompts; the floor from the best bandwidth any shard measured."""
    import pandas as pd

    per_prompt = Path(out) / "rain_speed_prompts.csv"
    df = pd.read_csv(per_prompt)
    df = df[df.run == run] if "run" in df else df.iloc[:0]
    if df.empty:
        raise SystemExit(f"no rows of run {run!r} in {per_prompt}")
    floor = df.weight_mb.iloc[0] * 2**20 / (df.bandwidth_gbs.max() * 1e9)
    rows = []
    for variant, g in df.groupby("variant", sort=False):
        row = dict(variant=variant, prompts=len(g), committed_tokens=int(g.committed_tokens.sum()),
                   committed_min=int(g.committed_tokens.min()), wall_s=g.wall_s.sum(), cpu_s=g.cpu_s.sum(),
                   simulations=int(g.simulations.sum()), forward_calls=int(g.forward_calls.sum()),
                   passes_per_sim_mean=g.passes_per_sim.mean(), passes_per_sim_sd=g.passes_per_sim.std(),
                   passes_per_sim_min=g.passes_per_sim.min(), passes_per_sim_max=g.passes_per_sim.max(),
                   computed_per_committed=g.tokens_computed.sum() / max(g.committed_tokens.sum(), 1),
                   redundancy=g.tokens_computed.sum() / max(g.tokens_needed.sum(), 1),
                   s_per_committed=g.wall_s.sum() / max(g.committed_tokens.sum(), 1),
                   s_per_pass=g.forward_s.sum() / max(g.forward_calls.sum(), 1),
                   mem_peak_mb=g.mem_peak_mb.max(), load1_mean=g[["load1_start", "load1_end"]].mean().mean())
        row["floor_ratio"] = row["s_per_pass"] / floor
        if variant == "bf16_k1":
            row["same_tokens_as_fp32"] = int(g.same_tokens_as_fp32.astype(str).eq("True").sum())
        rows.append(row)
    summary = pd.DataFrame(rows)
    # the reference against each fast variant at the same commit of the same prompts
    ref = df[df.variant == "reference"]
    for k in ks:
        fast = df[df.variant == f"fast_k{k}"].set_index("prompt")
        same = []
        for r in ref.itertuples():
            at = str(fast.commit_s.get(r.prompt, "") or "").split(";")
            if r.prompt in fast.index and len(at) >= r.commits_made and at[0]:
                same.append(float(at[r.commits_made - 1]))
        summary.loc[summary.variant == f"fast_k{k}", "speedup_vs_reference"] = (
            ref.wall_s.sum() / sum(same) if len(same) == len(ref) and len(ref) else float("nan"))
    meta = ["run", "model", "device", "dtype", "host", "threads", "frame", "commits", "seed", "machine", "cpus",
            "weight_mb", "code"]
    for key in reversed(meta):
        if key in df:
            summary.insert(0, key, ";".join(sorted(set(map(str, df[key])))))
    summary.insert(len(meta), "bandwidth_gbs", df.bandwidth_gbs.max())
    summary.insert(len(meta) + 1, "floor_s", floor)
    summary.insert(len(meta) + 2, "dates", f"{df.date.min()} to {df.date.max()}")
    path = Path(out) / "rain_speed.csv"
    summary.to_csv(path, index=False, float_format="%.5g")
    print()
    cols = ["variant", "prompts", "committed_tokens", "wall_s", "cpu_s", "passes_per_sim_mean",
            "passes_per_sim_sd", "computed_per_committed", "s_per_pass", "floor_ratio", "mem_peak_mb",
            "speedup_vs_reference"]
    print(summary[[c for c in cols if c in summary]].round(3).to_string(index=False))
    print(f"wrote {path}")
    by = summary.set_index("variant")
    get = lambda v, c: by[c].get(v, float("nan")) if c in by else float("nan")  # noqa: E731
    c, e = f"fast_k{ks[0]}", f"fast_k{ks[1]}" if len(ks) > 1 else f"fast_k{ks[0]}"
    van = df[(df.variant == "vanilla")].wall_s.sum()
    print(f"speedup_vs_reference={get(c, 'speedup_vs_reference'):.2f} "
          f"computed_per_committed={get(c, 'computed_per_committed'):.1f} redundancy={get(c, 'redundancy'):.3f} "
          f"rain_over_vanilla={get(c, 'wall_s') / van if van else float('nan'):.1f} "
          f"speedup_parallel={get(e, 'speedup_vs_reference'):.2f} passes_per_sim={get(e, 'passes_per_sim_mean'):.2f} "
          f"bandwidth_floor_ratio={get(e, 'floor_ratio'):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
