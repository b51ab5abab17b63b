"""Command line: `python -m raintools {generate,demo,eval,attack} ...`.

Errors of input (empty prompt, bad config, unknown model, malformed data) print one clear line
and exit with status 2; no traceback soup.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .errors import RainToolsError


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="embedded alias (smollm2-135m), local folder or Hugging Face id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, or auto (spread a large model over all GPUs); default: cuda if available")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: by device)")
    p.add_argument("--seed", type=int, default=0)


def _add_rain_args(p: argparse.ArgumentParser) -> None:
    from .config import PRESETS

    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="RAIN constants (default: hh on GPU, cpu-demo on CPU)")
    p.add_argument("--simulations", type=int, default=None, help="T, max simulations per step")
    p.add_argument("--min-visits", type=int, default=None, help="T_m")
    p.add_argument("--value-threshold", type=float, default=None, help="V")
    p.add_argument("--c", type=float, default=None, help="exploration constant")
    p.add_argument("--no-similarity", action="store_true", help="ablation: no similarity update")
    p.add_argument("--no-node-addition", action="store_true", help="ablation: no dynamic node addition")
    p.add_argument("--engine", default="fast", choices=["fast", "reference"])


def rain_config_from_args(args, device: str):
    from .config import PRESETS

    preset = args.preset or ("cpu-demo" if str(device) == "cpu" else "hh")
    over = {"seed": args.seed}
    if getattr(args, "max_new_tokens", None):
        over["max_new_tokens"] = args.max_new_tokens
    for arg, field in (("simulations", "max_simulations"), ("min_visits", "min_visits"),
                       ("value_threshold", "value_threshold"), ("c", "c")):
        if getattr(args, arg, None) is not None:
            over[field] = getattr(args, arg)
    if getattr(args, "no_similarity", False):
        over["similarity_update"] = False
    if getattr(args, "no_node_addition", False):
        over["node_addition"] = False
    return PRESETS[preset](**over)


def cmd_generate(args) -> int:
    from .models import load_model
    from .search import rain_generate
    from .vanilla import generate_vanilla

    if not args.prompt or not args.prompt.strip():
        raise RainToolsError("--prompt is empty: give the request to answer.")
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.method == "vanilla":
        r = generate_vanilla(lm, args.prompt, max_new_tokens=args.max_new_tokens, seed=args.seed)
    else:
        cfg = rain_config_from_args(args, lm.device.type)
        r = rain_generate(lm, args.prompt, cfg, engine=args.engine, progress=not args.json)
    if args.json:
        d = {"text": r.text, "method": r.method, "prompt": r.prompt, "stats": r.stats,
             "token_sets": r.token_sets, "model": args.model}
        if args.trace and r.trace is not None:
            d["trace"] = r.trace.to_dict()
        print(json.dumps(d))
    else:
        print(r.text)
        s = r.stats
        print(f"\n[{r.method}] {s['committed_tokens']} tokens in {s['wall_time_s']:.1f} s, "
              f"{s['forward_calls']} forward calls, {s['tokens_computed']} tokens computed"
              + (f", {s['simulations']} simulations" if "simulations" in s else ""), file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(model=args.model, device=args.device, prompts=args.prompts,
             max_new_tokens=args.max_new_tokens, simulations=args.simulations, out_dir=args.out,
             seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m raintools",
                                     description="RAIN: rewindable auto-regressive inference.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="answer one prompt with vanilla decoding or RAIN")
    g.add_argument("--method", choices=["vanilla", "rain"], default="rain")
    g.add_argument("--prompt", required=True)
    g.add_argument("--max-new-tokens", type=int, default=64)
    g.add_argument("--json", action="store_true", help="print one JSON object (text, method, stats)")
    g.add_argument("--trace", action="store_true", help="with --json: include the search trace")
    _add_model_args(g)
    _add_rain_args(g)
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="vanilla vs RAIN on the project's demo prompts")
    d.add_argument("--prompts", type=int, default=3)
    d.add_argument("--max-new-tokens", type=int, default=32)
    d.add_argument("--simulations", type=int, default=None)
    d.add_argument("--out", default="figures")
    _add_model_args(d)
    d.set_defaults(func=cmd_demo)

    try:
        from .runner import add_eval_parser
        add_eval_parser(sub)
    except ImportError:
        pass
    try:
        from .attack_run import add_attack_parser
        add_attack_parser(sub)
    except ImportError:
        pass
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RainToolsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
