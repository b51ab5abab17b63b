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
from .cli_options import (add_engine_args, add_model_args, add_rain_args, apply_engine_args,
                          planned_device, rain_config_from_args)


def quiet_libraries(verbose: bool = False) -> None:
    """Outside verbose mode: no weight-loading progress bars ("Loading weights", also the
    embedder's) and no library chatter below errors, so the CLI's output is its own. Verbose:
    the libraries' defaults (bars on, warnings shown)."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    if verbose:
        hf_logging.enable_progress_bar()
        hf_logging.set_verbosity_warning()
        enable_progress_bars()
    else:
        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        disable_progress_bars()


def cmd_generate(args) -> int:
    from .errors import ConfigError
    from .models import load_model
    from .search import rain_generate
    from .vanilla import generate_vanilla

    if not args.prompt or not args.prompt.strip():
        raise RainToolsError("--prompt is empty: give the request to answer.")
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}.")
    # the configuration is checked before the model loads (the preset depends on the device)
    cfg = rain_config_from_args(args, planned_device(args.device)) if args.method == "rain" else None
    lm = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.method == "vanilla":
        r = generate_vanilla(lm, args.prompt, max_new_tokens=args.max_new_tokens, seed=args.seed)
    else:
        if lm.device.type != planned_device(args.device):   # e.g. device_map="auto" stayed on CPU
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
    from .experiments.demo import run_demo

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
    add_model_args(g)
    add_rain_args(g)
    g.set_defaults(func=cmd_generate)

    d = sub.add_parser("demo", help="vanilla vs RAIN on the project's demo prompts")
    d.add_argument("--prompts", type=int, default=3)
    d.add_argument("--max-new-tokens", type=int, default=32)
    d.add_argument("--simulations", type=int, default=None)
    d.add_argument("--out", default="figures")
    add_model_args(d)
    add_engine_args(d)
    d.set_defaults(func=cmd_demo)

    from .attacks.run import add_attack_parser
    from .experiments.runner import add_eval_parser

    add_eval_parser(sub)
    add_attack_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_engine_args(args)
    try:
        quiet_libraries(getattr(args, "verbose", False))
        return int(args.func(args) or 0)
    except RainToolsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
