"""Command-line options for the model and the RAIN search, shared by every subcommand
(`generate`, `demo`, `eval`, `attack`): one definition, so the flags mean the same everywhere.
Decoder level: imports nothing from experiments, attacks or views."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="smollm2-135m",
                   help="embedded alias (smollm2-135m), local folder or Hugging Face id")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, or auto (spread a large model over all GPUs); default: cuda if available")
    p.add_argument("--dtype", default=None, help="float32, float16 or bfloat16 (default: by device)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-v", "--verbose", action="store_true",
                   help="show the libraries' progress bars (weight loading) and messages")


def planned_device(device: str | None) -> str:
    """The device type a model will load on ('cpu', 'cuda', 'mps'), known before it loads, so that
    a configuration can be checked first."""
    from .models import default_device

    d = default_device() if device in (None, "", "auto") else str(device)
    return d.split(":")[0]


def add_rain_args(p: argparse.ArgumentParser) -> None:
    from .config import PRESETS

    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="RAIN constants and judging template (default: hh, or the task's preset for eval; on a CPU with the CPU budget: fewer simulations, same rules)")
    p.add_argument("--simulations", type=int, default=None, help="T, max simulations per step")
    p.add_argument("--min-visits", type=int, default=None, help="T_m")
    p.add_argument("--value-threshold", type=float, default=None, help="V")
    p.add_argument("--c", type=float, default=None, help="exploration constant")
    p.add_argument("--no-similarity", action="store_true", help="ablation: no similarity update")
    p.add_argument("--no-node-addition", action="store_true", help="ablation: no dynamic node addition")
    add_engine_args(p)


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", default="auto", choices=["auto", "fast", "reference", "vllm", "vllm-keyed"],
                   help="auto (default): RAINTOOLS_ENGINE if set, else fast on models with a per-token "
                        "KV cache, reference on recurrent / state-space ones; vllm: the forward passes "
                        "on a vLLM server, which samples; vllm-keyed: on the server with raintools' "
                        "own keyed draws (the same tokens as fast, one request per token)")
    p.add_argument("--server", default=None,
                   help="the vLLM server for --engine vllm / vllm-keyed (default RAINTOOLS_SERVER, "
                        "else http://127.0.0.1:8000); it must serve the same model as --model")


def apply_engine_args(args) -> None:
    """--engine vllm* and --server reach every search of the command (the demo's and the eval
    runner's too) through RAINTOOLS_ENGINE / RAINTOOLS_SERVER."""
    import os

    if getattr(args, "server", None):
        os.environ["RAINTOOLS_SERVER"] = args.server
    if str(getattr(args, "engine", "")).startswith("vllm"):
        os.environ["RAINTOOLS_ENGINE"] = args.engine


def rain_config_from_args(args, device: str, default: str = "hh"):
    """The RAIN config the flags ask for: `--preset`, else `default` (a preset name); without
    `--preset` on a CPU, the preset with the CPU budget (`RainConfig.with_cpu_budget`: T, T_m,
    the clause length; its rules stay). The flags (--simulations, ...) then override."""
    from .config import PRESETS

    cfg = PRESETS[args.preset or default]()
    if args.preset is None and str(device).startswith("cpu"):
        cfg = cfg.with_cpu_budget()
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
    return cfg.replace(**over)
