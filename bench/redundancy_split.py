"""Where fast RAIN's tokens go: the tokens computed by forward passes against the tokens that must
be computed (`tokens_needed`, `raintools.observe.Stats`), split by the search's work, for K = 1 on
bench prompts of `rain_speed.py` (the same prompts, constants, frame and seed).

Per prompt, one CSV row per part (bench/results/rain_redundancy_split.csv by default):

  prompt                      the prompt's forward pass (needed: its tokens)
  expand_rollouts_kept        an expansion's rollouts, the tokens of the candidates kept (needed:
                              each new node's tokens; rollouts that share a start compute it once)
  expand_rollouts_discarded   rollout rows that are not kept (duplicates share a kept row's tokens;
                              these are the tokens of rows beyond the first `keep` unique ones):
                              computed, never needed
  completions                 clause completions (needed: their fed tokens)
  add_rollouts_new            a node addition's rollouts, the new candidate's tokens
  add_rollouts_greedy_again   a node addition's greedy rollout, which an existing child already has
  add_rollouts_discarded      a node addition's samples that are not kept
  ensure                      node caches computed on demand (needed: nodes not counted before)
  judge                       the self-evaluator's passes (needed: its own count, `EvalStats`)
  other                       passes outside those phases (should be none)
  total                       the whole search: equal to the search's `tokens_computed` and
                              `tokens_needed` (checked)

Forward tokens are attributed to the phase the search is in (the `PhaseTimer` phases, tracked by
an observer); the rollout rows of each expansion and node addition are read where the engine picks
its candidates (`engines.kept_candidates` in `CachedEngine.expand`, both wrapped here, nothing
changed): the tokens fed for the
kept rows, and for the kept rows that became new nodes, each counted as the engine feeds them (a
start shared by several rows once; a stopped row's stop token never; the last token of kept rows
only). A completion computes exactly its fed tokens, so the expansions' rollouts computed the rest
of the expand phase's tokens, and the rows not kept what the rollouts computed beyond the kept
rows. The script says so when the rollouts computed other tokens than this commit's engine feeds
for all rows (an engine changed in a scratch copy).

    .venv/bin/python bench/redundancy_split.py --prompts 1,0 --label base
    .venv/bin/python bench/redundancy_split.py --prompts 1 --judge-cache 1000000 --label judge_cache_1e6

`--judge-cache N`: the self-evaluator's LRU of judged responses per query (default 16, the
library's `response_cache_size`): an experiment on what the LRU costs against its trie of seen
prefixes (which is what counts as needed).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import rain_speed  # noqa: E402  (the bench's prompts, frame and constants)
from raintools import RainConfig, SelfEvaluator, load_model  # noqa: E402
from raintools import engines  # noqa: E402
from raintools.engines import CachedEngine, kept_rows  # noqa: E402
from raintools.models import DEFAULT_MODEL  # noqa: E402
from raintools.observe import Observer  # noqa: E402
from raintools.search import RainSearch  # noqa: E402

from _common import append_row, run_meta  # noqa: E402  (bench/ is on sys.path)

PARTS = ("prompt", "expand_rollouts_kept", "expand_rollouts_discarded", "completions", "add_rollouts_new",
         "add_rollouts_greedy_again", "add_rollouts_discarded", "ensure", "judge", "other")


def fed_tokens(rows: list[list[int]], chosen: list[int], length: int, is_stop) -> int:
    """Tokens the engine feeds for rollout rows `chosen` of one request: each distinct start once,
    never a stop token, a row's last-level token (depth length - 1) only for kept rows (`chosen`
    is assumed kept)."""
    seen = set()
    for r in chosen:
        row = rows[r]
        for d, tok in enumerate(row):
            if is_stop(tok) or d >= length:
                break
            seen.add(tuple(row[: d + 1]))
    return len(seen)


def fed_all(rows, kept: list[int], keep: int, length: int, is_stop) -> int:
    """Tokens the engine feeds for all rollout rows of one request, step by step as
    `CachedEngine.expand` does: at depth d the rows before the `keep`-th distinct start (later rows
    can no longer be kept and are fed no more), each distinct start once, never a stop token, the
    last-level token only for the rows `kept` in the end."""
    seen = set()
    for d in range(length):
        chosen = kept_rows([row[: d + 1] for row in rows], keep)
        cut = chosen[-1] + 1 if len(chosen) >= keep else len(rows)
        for r, row in enumerate(rows[:cut]):
            if len(row) > d and not any(is_stop(t) for t in row[: d + 1]) and (d < length - 1 or r in kept):
                seen.add(tuple(row[: d + 1]))
    return len(seen)


class Split(Observer):
    """Forward tokens per phase (wraps `lm.forward`), tokens needed per part (the events `Stats`
    counts from), rollout rows per request (`watch_rollouts`)."""

    def __init__(self, lm):
        self.lm, self.evaluator, self.request = lm, None, None
        self.stack: list[str] = []
        self.computed = dict.fromkeys(("start", "select", "add", "ensure", "expand", "judge", "embed",
                                       "commit", "none"), 0)
        self.needed = dict.fromkeys(PARTS, 0)
        self.rollout = {ph: dict(all=0, kept=0, new=0, rows=0, kept_rows=0, jobs=0) for ph in ("expand", "add")}
        self.counted: set[int] = {0}
        self._judge0 = 0
        inner = lm.forward

        def forward(*args, **kw):
            before = lm.stats.tokens
            try:
                return inner(*args, **kw)
            finally:
                phase = self.stack[-1] if self.stack else ("start" if self.phase_free_start else "none")
                self.computed[phase] += lm.stats.tokens - before

        self.phase_free_start = True
        self.inner, lm.forward = inner, forward

    def restore(self):
        self.lm.forward = self.inner

    # the search's events
    def started(self, search, prompt_ids):
        self.needed["prompt"] += len(prompt_ids)
        self.phase_free_start = False

    def _count(self, nodes, part):
        for n in nodes:
            if n.uid not in self.counted:
                self.counted.add(n.uid)
                self.needed[part] += len(n.tokens)

    def nodes_created(self, search, sim, parent, nodes, rolled_out, added):
        if rolled_out:
            self._count(nodes, "add_rollouts_new" if added else "expand_rollouts_kept")

    def ensured(self, search, node):
        self._count([node], "ensure")

    def completed(self, search, request):
        self.needed["completions"] += request.fed

    def phase_started(self, search, name):
        self.stack.append(name)
        if name == "judge":
            self._judge0 = self.evaluator.stats.tokens_needed

    def phase_ended(self, search, name):
        self.stack.pop()
        if name == "judge":
            self.needed["judge"] += self.evaluator.stats.tokens_needed - self._judge0

    # the engine's candidates
    def candidates(self, rows, length: int, keep: int):
        """All rollout rows of the request being expanded (`self.request`), as the engine keeps
        its candidates from them."""
        phase = self.stack[-1] if self.stack else "none"
        if phase not in self.rollout:
            raise RuntimeError(f"rollouts outside expand/add: {phase}")
        kept = kept_rows(rows, keep)
        new = [r for r in kept if self.request.node.child_with_tokens(rows[r]) is None]
        stop = self.lm.is_stop_token
        acc = self.rollout[phase]
        acc["all"] += fed_all(rows, kept, keep, length, stop)
        acc["kept"] += fed_tokens(rows, kept, length, stop)
        acc["new"] += fed_tokens(rows, new, length, stop)
        acc["rows"] += len(rows)
        acc["kept_rows"] += len(kept)
        acc["jobs"] += 1

    def rows_out(self) -> list[dict]:
        """The parts. A completion computes exactly its fed tokens (they are never shared), so an
        expansion's rollouts computed what the expand phase computed beyond them; the add phase
        computes rollouts only; what the rollouts computed beyond the tokens of the rows kept is
        the discarded rows' (`fed_all` says what the engine of this commit feeds: checked equal)."""
        c, ex, ad = self.computed, self.rollout["expand"], self.rollout["add"]
        fed = self.needed["completions"]
        expand_rollouts = c["expand"] - fed
        computed = dict(prompt=c["start"], expand_rollouts_kept=ex["kept"],
                        expand_rollouts_discarded=expand_rollouts - ex["kept"], completions=fed,
                        add_rollouts_new=ad["new"], add_rollouts_greedy_again=ad["kept"] - ad["new"],
                        add_rollouts_discarded=c["add"] - ad["kept"], ensure=c["ensure"], judge=c["judge"],
                        other=c["select"] + c["embed"] + c["commit"] + c["none"])
        self.by_rule = (expand_rollouts == ex["all"] and c["add"] == ad["all"])
        return [dict(part=p, computed=computed[p], needed=self.needed[p]) for p in PARTS]


@contextmanager
def watch_rollouts(split: Split):
    """Show `split` each request the fast engine expands and all its rollout rows (where
    `CachedEngine.expand` keeps its candidates from them); the engine is restored afterwards."""
    expand, kept = CachedEngine.expand, engines.kept_candidates

    def expanding(engine, req):
        split.request = req
        return expand(engine, req)

    def keeping(rows, probs, length, keep):
        split.candidates(rows, length, keep)
        return kept(rows, probs, length, keep)

    CachedEngine.expand, engines.kept_candidates = expanding, keeping
    try:
        yield
    finally:
        CachedEngine.expand, engines.kept_candidates = expand, kept


def main(argv=None) -> int:
    data = Path(os.environ.get("RAINTOOLS_DATA", "/work/shared/data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", default="1,0", help="bench prompt indices (rain_speed.py's order)")
    ap.add_argument("--hh", default=str(data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"))
    ap.add_argument("--advbench", default=str(data / "advbench" / "harmful_behaviors.csv"))
    ap.add_argument("--commits", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--frame", choices=("ours", "paper"), default="paper")
    ap.add_argument("--judge-cache", type=int, default=16, help="judged responses kept per query (LRU)")
    ap.add_argument("--simulations", type=int, default=None, help="override T; for quick checks only")
    ap.add_argument("--label", default="base", help="the experiment's name in the CSV")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "rain_redundancy_split.csv"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    idx = [int(x) for x in args.prompts.split(",") if x.strip()]
    lm = load_model(args.model)
    template = "harm"
    if args.frame == "paper":
        template = str(rain_speed.FRAMES / "harm_long.txt")
        lm.chat.system_prompt = (rain_speed.FRAMES / "chat_prefix.txt").read_text(encoding="utf-8")
    prompts = rain_speed.bench_prompts(args, max(idx) + 1)
    from raintools.embed import load_embedder

    embedder = load_embedder()
    meta = run_meta(lm, frame=args.frame, commits=args.commits, seed=args.seed,
                    machine=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                    label=args.label, judge_cache=args.judge_cache)
    lm.route          # probed once (its test passes run before a search counts anything)
    for i in idx:
        ds, p = prompts[i]
        cfg = (RainConfig.advbench if ds == "advbench" else RainConfig.hh)(
            max_commits=args.commits, seed=args.seed, record_trace=False)
        if args.simulations:
            cfg = cfg.replace(max_simulations=args.simulations)
        split = Split(lm)        # wraps lm.forward: before the evaluator and the engine take it
        split.evaluator = ev = SelfEvaluator(lm, template, response_cache_size=args.judge_cache)
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        try:
            with watch_rollouts(split):
                r = RainSearch(lm, p, cfg, evaluator=ev, embedder=embedder, engine="fast",
                               observers=[split]).run()
        finally:
            split.restore()
        wall = time.perf_counter() - t0
        st = r.stats
        rows = split.rows_out()
        tot_c, tot_n = sum(x["computed"] for x in rows), sum(x["needed"] for x in rows)
        if (tot_c, tot_n) != (st["tokens_computed"], st["tokens_needed"]):
            raise RuntimeError(f"split {tot_c}/{tot_n} != search's {st['tokens_computed']}/{st['tokens_needed']}")
        ex, ad = split.rollout["expand"], split.rollout["add"]
        common = dict(prompt=i, dataset=ds, committed_tokens=len(r.tokens), simulations=st["simulations"],
                      forward_calls=st["forward_calls"],
                      tokens_sha=hashlib.sha1(str(r.tokens).encode()).hexdigest()[:12],
                      expand_jobs=ex["jobs"], expand_rows=ex["rows"], expand_kept_rows=ex["kept_rows"],
                      add_jobs=ad["jobs"], add_rows=ad["rows"], add_kept_rows=ad["kept_rows"],
                      judge_calls=ev.stats.calls, wall_s=round(wall, 1), load1_start=load0,
                      load1_end=os.getloadavg()[0], date=time.strftime("%Y-%m-%d %H:%M:%S"),
                      )
        out = Path(args.out)
        for row in rows + [dict(part="total", computed=tot_c, needed=tot_n)]:
            append_row(out, meta, {**common, **row, "extra": row["computed"] - row["needed"]})
        print(f"prompt {i} ({ds}) {args.label}: {len(r.tokens)} tokens, {st['simulations']} sims, computed {tot_c}, "
              f"needed {tot_n}, redundancy {tot_c / tot_n:.3f}, {wall:.0f} s, load {os.getloadavg()[0]:.1f}")
        for row in rows:
            print(f"  {row['part']:<26} computed {row['computed']:>7} needed {row['needed']:>7} "
                  f"extra {row['computed'] - row['needed']:>+7} ({(row['computed'] - row['needed']) / tot_n:+.3f})")
        if not split.by_rule:
            print("  the rollouts fed other tokens than this commit's engine feeds (a changed engine?)")
        print(f"  rollout rows: expand {ex['rows']} in {ex['jobs']} requests, {ex['kept_rows']} kept; "
              f"add {ad['rows']} in {ad['jobs']}, {ad['kept_rows']} kept", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
