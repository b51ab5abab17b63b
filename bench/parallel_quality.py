"""Quality of simulations in flight (K > 1) against the sequential search (K = 1) on data the
rules were not tuned on (issue 26): fresh sum questions (`SumTruth`, not notebook 11's
`SumTruth.make(n=40, seed=0)` set: its questions are left out), two new seeds, a SIMULATED judge
right with probability p = 0.8, the same simulation budget (notebook 11's constants on this
device: `notebook_config`, max_new_tokens 17). Paired difference K = 4 minus K = 1 in the share
of good answers, each K's share of good answers and its passes per simulation, every one with a
95% bootstrap interval that resamples questions (a question's seeds together, never as independent
runs): `raintools.views.analysis.parallel_quality_table`, what notebook 11 shows.

Resumable: one CSV row per (question, seed, K) as it finishes; a rerun skips the rows there.

    python bench/parallel_quality.py                   # runs, then prints the summary
    python bench/parallel_quality.py --summary-only    # the summary of what the CSV holds, run nothing
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=r"var\(\): degrees of freedom")

import pandas as pd  # noqa: E402

FIELDS = ["question", "seed", "k", "p", "good", "response", "simulations", "forward_calls", "wall_s",
          "load1", "threads"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--questions", type=int, default=120)
    ap.add_argument("--question-seed", type=int, default=26)
    ap.add_argument("--seeds", default="2,3")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--p", type=float, default=0.8)
    ap.add_argument("--max-new-tokens", type=int, default=17)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--csv", default=str(ROOT / "bench" / "results" / "parallel_quality_runs.csv"))
    ap.add_argument("--summary-csv", default=str(ROOT / "bench" / "results" / "parallel_quality_summary.csv"))
    ap.add_argument("--summary-only", action="store_true")
    args = ap.parse_args(argv)

    from raintools.views.analysis import SumTruth

    old = set(SumTruth.make(n=40, seed=0).prompts)          # notebook 11's questions: left out
    pool = SumTruth.make(n=args.questions + len(old), seed=args.question_seed)
    fresh = [q for q in pool.prompts if q not in old][:args.questions]
    truth = SumTruth({q: pool.pairs[q] for q in fresh})
    seeds = [int(s) for s in args.seeds.split(",")]
    path = Path(args.csv)
    if not args.summary_only:
        run(args, truth, fresh, seeds, path)
    runs = pd.read_csv(path)
    summary = summarize(runs[runs.question.isin(fresh)], k=args.k)
    summary["questions_planned"], summary["seeds"] = len(fresh), args.seeds
    summary.to_csv(args.summary_csv, index=False)
    print(summary.round(3).to_string(index=False))
    return 0


def summarize(runs: pd.DataFrame, k: int, n_boot: int = 4000) -> pd.DataFrame:
    """One row per p from the runs (`question`, `seed`, `k`, `p`, `good`, `simulations`,
    `forward_calls`) of K = k and K = 1, over the (question, seed) pairs both finished: each K's
    share of good answers (`good_k<K>`, `_lo`, `_hi`) and passes per simulation
    (`passes_per_sim_k<K>`, `_lo`, `_hi`), the paired difference K = k minus K = 1
    (`difference`, `_lo`, `_hi`), all from `parallel_quality_table` (every interval a 95% bootstrap
    over questions, a question's seeds together), and the discordant pair counts `a_only` (only
    K = k good) and `b_only` (only K = 1 good) from `paired_quality`."""
    from raintools.views.analysis import paired_quality, parallel_quality_table

    table = parallel_quality_table(runs, a=k, b=1, n_boot=n_boot)
    pairs = paired_quality(runs.rename(columns={"question": "prompt"}), a=k, b=1, n_boot=n_boot)
    names = {("share good", str(j)): f"good_k{j}" for j in (1, k)}
    names.update({("passes per simulation", str(j)): f"passes_per_sim_k{j}" for j in (1, k)})
    names[("difference", f"{k} - 1")] = "difference"
    out = []
    for p, g in table.groupby("p"):
        row = dict(p=p, pairs=int(g.pairs.iloc[0]), questions=int(g.questions.iloc[0]),
                   interval_unit="question")
        for _, r in g.iterrows():
            name = names[(r.measure, r.k)]
            row.update({name: r.estimate, f"{name}_lo": r.lo, f"{name}_hi": r.hi})
        counts = pairs[pairs.p == p].iloc[0]
        row.update(a_only=int(counts.a_only), b_only=int(counts.b_only))
        out.append(row)
    return pd.DataFrame(out)


def run(args, truth, questions, seeds, path: Path) -> None:
    import torch

    import raintools as rt
    from raintools.embed import load_embedder
    from raintools.views.analysis import notebook_config

    torch.set_num_threads(args.threads)
    done = set()
    if path.exists():
        done = {(r["question"], int(r["seed"]), int(r["k"])) for r in csv.DictReader(open(path))}
    lm = rt.load_model("smollm2-135m")
    embedder = load_embedder()
    new = not path.exists()
    with open(path, "a", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=FIELDS)
        if new:
            w.writeheader()
        for q in questions:               # question by question: a partial run stays paired
            for seed in seeds:
                for k in (1, args.k):
                    if (q, seed, k) in done:
                        continue
                    cfg = notebook_config(lm, max_new_tokens=args.max_new_tokens, seed=seed,
                                          parallel_simulations=k)
                    judge = rt.SimulatedJudge(truth, accuracy=args.p, seed=seed)
                    t0 = time.perf_counter()
                    r = rt.rain_generate(lm, q, cfg, evaluator=judge, embedder=embedder)
                    w.writerow(dict(question=q, seed=seed, k=k, p=args.p, good=bool(truth(q, r.text)),
                                    response=r.text, simulations=r.stats["simulations"],
                                    forward_calls=r.stats["forward_calls"],
                                    wall_s=round(time.perf_counter() - t0, 2),
                                    load1=round(os.getloadavg()[0], 1), threads=torch.get_num_threads()))
                    fh.flush()


if __name__ == "__main__":
    raise SystemExit(main())
