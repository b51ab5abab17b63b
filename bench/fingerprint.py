"""A fingerprint of what the decoder computes: per case the committed tokens, every stats counter
(forward passes, tokens computed, simulations, evaluations, ...; no wall times) and two
hashes of the trace (exact floats, and floats rounded to 6 decimals), for a refactoring that must
change none of them.

Cases: the embedded model at the bench's constants (`RainConfig.hh`, as bench/rain_speed.py's
(b), (c), (e), (f), with fewer simulations and commits so that the run takes minutes): fast K = 1,
the reference engine, K = 4, K = 8, a batch of 3 prompts (K = 1) and of 2 prompts (K = 4); tiny
random models on each route (packed, rows, reference) with a simulated judge.

    python bench/fingerprint.py --out bench/results/fingerprint_before.json
    python bench/fingerprint.py --compare bench/results/fingerprint_before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=r"var\(\): degrees of freedom")

from raintools import RainConfig, RainSearch, SelfEvaluator, load_model, rain_generate_batch  # noqa: E402

try:
    from raintools.testing import tiny_model  # noqa: E402
except ImportError:             # before the refactoring of issue 23
    from raintools.models import tiny_model  # noqa: E402

PROMPTS = ["How do I pick a lock?", "What is a good way to learn to cook?",
           "Tell me how to hurt someone."]


def _round(x):
    if isinstance(x, float):
        return round(x, 6)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def fingerprint(result) -> dict:
    stats = {k: v for k, v in result.stats.items()
             if not (k.startswith("time_") or k == "wall_time_s")}
    out = {"tokens": list(result.tokens), "stats": stats}
    if result.trace is not None:
        d = result.trace.to_dict()
        out["trace_exact"] = hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]
        out["trace_rounded"] = hashlib.sha256(json.dumps(_round(d), sort_keys=True).encode()).hexdigest()[:16]
    return out


def vowel_judge(query, response):
    """A simulated judge: more vowels is better (deterministic, in [-1, 1])."""
    if not response:
        return 0.0
    v = sum(c in "aeiou" for c in response.lower()) / len(response)
    return max(-1.0, min(1.0, 4 * v - 1))


def letter_embedder(texts):
    rows = []
    for t in texts:
        e = torch.zeros(26)
        for c in t.lower():
            if "a" <= c <= "z":
                e[ord(c) - 97] += 1
        rows.append(e + 1e-3)
    return torch.stack(rows)


def tiny_cases() -> dict:
    from model_families import build

    cases = {}
    cfg = RainConfig(max_new_tokens=40, max_simulations=24, extra_simulations=8, min_visits=2,
                     clause_max_tokens=6, max_commits=3, record_trace=True)
    models = {"tiny-llama": tiny_model(seed=0), "tiny-falcon-alibi": build("falcon-alibi", seed=0),
              "tiny-mamba": build("mamba", seed=0)}
    for name, lm in models.items():
        for k in (1, 4):
            c = cfg.replace(parallel_simulations=k)
            r = RainSearch(lm, "hello", c, evaluator=vowel_judge, embedder=letter_embedder).run()
            cases[f"{name}/K{k}"] = fingerprint(r)
        if name == "tiny-llama":
            r = RainSearch(lm, "hello", cfg, evaluator=vowel_judge, embedder=letter_embedder,
                           engine="reference").run()
            cases[f"{name}/reference"] = fingerprint(r)
            for k in (1, 4):
                rs = rain_generate_batch(lm, ["hello", "tell me", "why"], cfg.replace(parallel_simulations=k),
                                         evaluator=vowel_judge, embedder=letter_embedder)
                for i, r in enumerate(rs):
                    cases[f"{name}/batch3-K{k}/{i}"] = fingerprint(r)
            # the model's own judge (the packed judge; at K = 4 its passes ride with the slots')
            for k in (1, 4):
                ev = SelfEvaluator(lm, "harm")
                r = RainSearch(lm, "hello", cfg.replace(parallel_simulations=k, max_commits=2),
                               evaluator=ev, embedder=letter_embedder).run()
                cases[f"{name}/selfjudge-K{k}"] = fingerprint(r)
    return cases


def embedded_cases(simulations: int, commits: int) -> dict:
    from raintools.embed import load_embedder

    lm = load_model("smollm2-135m", device="cpu")
    embedder = load_embedder()
    cfg = RainConfig.hh(max_commits=commits, max_simulations=simulations, seed=0, record_trace=True)
    cases = {}
    p = PROMPTS[0]
    cases["smollm/fast-K1"] = fingerprint(RainSearch(lm, p, cfg, evaluator=SelfEvaluator(lm, "harm"),
                                                     embedder=embedder, engine="fast").run())
    cases["smollm/reference"] = fingerprint(RainSearch(
        lm, p, cfg, evaluator=SelfEvaluator(lm, "harm", cached=False), embedder=embedder,
        engine="reference").run())
    for k in (4, 8):
        cases[f"smollm/K{k}"] = fingerprint(RainSearch(
            lm, p, cfg.replace(parallel_simulations=k), evaluator=SelfEvaluator(lm, "harm"),
            embedder=embedder).run())
    for n, k in ((3, 1), (2, 4)):
        rs = rain_generate_batch(lm, PROMPTS[:n], cfg.replace(parallel_simulations=k),
                                 evaluator=SelfEvaluator(lm, "harm"), embedder=embedder)
        for i, r in enumerate(rs):
            cases[f"smollm/batch{n}-K{k}/{i}"] = fingerprint(r)
    return cases


RETIRED = {"rounds"}        # counters removed on purpose: "rounds" (issue 28) always equalled "simulations"


def compare(a: dict, b: dict) -> bool:
    ok = True
    for case in sorted(set(a) | set(b)):
        x, y = a.get(case), b.get(case)
        if x is None or y is None:
            print(f"{case}: only in {'after' if x is None else 'before'}")
            ok = False
            continue
        diffs = []
        if x["tokens"] != y["tokens"]:
            diffs.append("tokens")
        for k in sorted((set(x["stats"]) | set(y["stats"])) - RETIRED):
            if x["stats"].get(k) != y["stats"].get(k):
                diffs.append(f"{k}: {x['stats'].get(k)} -> {y['stats'].get(k)}")
        for k in ("trace_exact", "trace_rounded"):
            if x.get(k) != y.get(k):
                diffs.append(k)
        s = y["stats"]
        print(f"{case}: {'SAME' if not diffs else 'DIFF ' + '; '.join(diffs)}  "
              f"(tokens {len(y['tokens'])}, forward_calls {x['stats'].get('forward_calls')} -> "
              f"{s.get('forward_calls')}, tokens_computed {s.get('tokens_computed')}, "
              f"simulations {s.get('simulations')})")
        ok = ok and not diffs
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None)
    ap.add_argument("--compare", default=None, help="a fingerprint JSON to compare this run with")
    ap.add_argument("--simulations", type=int, default=8)
    ap.add_argument("--commits", type=int, default=2)
    ap.add_argument("--skip-embedded", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cases = {} if args.skip_tiny else tiny_cases()
    print(f"tiny cases: {time.perf_counter() - t0:.0f}s", flush=True)
    if not args.skip_embedded:
        cases.update(embedded_cases(args.simulations, args.commits))
    print(f"all cases: {time.perf_counter() - t0:.0f}s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(cases, indent=1, sort_keys=True))
        print(f"wrote {args.out}")
    if args.compare:
        before = json.loads(Path(args.compare).read_text())
        if args.skip_embedded or args.skip_tiny:
            before = {k: v for k, v in before.items() if k.startswith("smollm/") != args.skip_embedded}
        same = compare(before, cases)
        print("FINGERPRINT", "SAME" if same else "DIFFERENT")
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
