"""Early-ending candidates' priors (issue 25, item 1), before and after the length-matched rule.

A rollout that stops at an end-of-turn token multiplies fewer token probabilities than its
full-length siblings. Under the plain product ("product", the rule before issue 25) its prior can
be orders of magnitude above theirs; under `engines.length_matched` ("length-matched", the rule
now) its missing positions are scored by its own per-token geometric mean.

On the embedded model, preset cpu-demo, 5 short-answer prompts, 24 new tokens, both rules (the
"product" rule by replacing `raintools.engines.length_matched` with the plain product in this
process): in each commit's live tree (at every `committing` event), every node whose children
form a 10-token level and include at least one full-length child, the early-ending children
(shorter than the level's length, ending at a stop token) are counted, with the ratio of their
raw prior to the best full-length sibling's. A child that survives several commits is counted in
each (as the issue counted); `unique_early` counts each once.

The committed CSVs (bench/results/early_priors_*.csv) were measured with item 1's rule alone, before
item 2's tie-break (ties then went to the first child), one process per rule, under load 23-55 on 2
cores (wall time and load in the CSVs).

    python bench/early_priors.py --rules product --out bench/results/early_priors_product.csv
    python bench/early_priors.py --rules length-matched --out bench/results/early_priors_length-matched.csv
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _common import run_meta, write_csv  # noqa: E402

from raintools import RainConfig, RainSearch, SelfEvaluator, load_model  # noqa: E402
from raintools import engines  # noqa: E402
from raintools.embed import load_embedder  # noqa: E402
from raintools.observe import Observer  # noqa: E402

PROMPTS = ["Answer in one word: what color is the sky on a clear day?",
           "What is 2 + 2? Answer with the number only.",
           "Name the capital of France in one word.",
           "How many legs does a spider have? Reply with a number.",
           "Is ice cold? Answer yes or no."]
RULES = {"product": lambda p, n, length: p, "length-matched": engines.length_matched}


class EarlyCounter(Observer):
    """At each commit, the early-ending children among full-length siblings at 10-token levels."""

    def __init__(self):
        self.count, self.uids, self.ratios, self.examples = 0, set(), [], []

    def committing(self, search, child, first, early):
        for node in search.root.walk():
            if not node.children or search.cfg.token_set_length(node.step) != 10:
                continue
            length = search.level_length(node)
            full = [ch for ch in node.children if len(ch.tokens) == length]
            short = [ch for ch in node.children if len(ch.tokens) < length
                     and search.lm.is_stop_token(ch.tokens[-1])]
            if not full or not short:
                continue
            best = max(ch.raw_p for ch in full)
            for ch in short:
                self.count += 1
                self.uids.add(ch.uid)
                ratio = ch.raw_p / best if best > 0 else float("inf")
                self.ratios.append(ratio)
                self.examples.append((ratio, search.lm.decode(list(ch.tokens))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="bench/results/early_priors.csv")
    ap.add_argument("--rules", nargs="+", choices=list(RULES), default=list(RULES))
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m", device="cpu")
    embedder = load_embedder()
    cfg = RainConfig.cpu_demo(max_new_tokens=args.tokens, seed=0)
    rows, t0, load0 = [], time.perf_counter(), round(os.getloadavg()[0], 2)
    for rule in args.rules:
        engines.length_matched = RULES[rule]          # the engines read the module-level name
        for prompt in PROMPTS:
            counter = EarlyCounter()
            r = RainSearch(lm, prompt, cfg, evaluator=SelfEvaluator(lm, cfg.judge_template),
                           embedder=embedder, observers=[counter]).run()
            top = max(counter.examples, default=(float("nan"), ""))
            rows.append(dict(rule=rule, prompt=prompt, early_children=counter.count,
                             unique_early=len(counter.uids),
                             above_best_full=sum(x > 1 for x in counter.ratios),
                             max_ratio=max(counter.ratios, default=float("nan")),
                             max_ratio_text=top[1], response=r.text, commits=r.stats["commits"]))
            print(rows[-1], flush=True)
    engines.length_matched = RULES["length-matched"]
    for rule in args.rules:
        sel = [r for r in rows if r["rule"] == rule]
        rows.append(dict(rule=rule, prompt="ALL", early_children=sum(r["early_children"] for r in sel),
                         unique_early=sum(r["unique_early"] for r in sel),
                         above_best_full=sum(r["above_best_full"] for r in sel),
                         max_ratio=max((r["max_ratio"] for r in sel if r["max_ratio"] == r["max_ratio"]),
                                       default=float("nan")),
                         max_ratio_text="", response="", commits=sum(r["commits"] for r in sel)))
    wall = time.perf_counter() - t0
    write_csv(args.out, run_meta(lm, preset="cpu-demo", max_new_tokens=args.tokens, wall_s=round(wall),
                                 load_start=load0, load_end=round(os.getloadavg()[0], 2)), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
