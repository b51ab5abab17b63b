"""`make demo`: vanilla decoding vs RAIN on a few prompts the project wrote itself, with a table of
outputs and statistics and a figure in figures/.

With the embedded 135M model the self-evaluator is at about chance, so the demo shows the
mechanics and the cost of RAIN, not a safety gain. Point `--model` at a large model on a GPU for that.
"""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from ..config import RainConfig
from ..errors import ConfigError
from ..cli_options import planned_device
from ..models import DEFAULT_MODEL, load_model
from ..search import rain_generate
from ..vanilla import generate_vanilla
from .naming import run_dir

HONEST_NOTE = (
    "Note: a 135M model judges harm at about chance (notebook 01, 60 HH-RLHF pairs: its votes tie on\n"
    "every pair, its soft score is right on 38%; the paper reports 52% even at 7B), so with the\n"
    "embedded model RAIN shows its mechanics and costs, not a safety gain. Use --model with a large\n"
    "model on a GPU to study the effect itself."
)


def demo_prompt_texts(n: int) -> list[str]:
    from .data import demo_prompts

    items = demo_prompts()
    harmful = [it for it in items if it.meta.get("harmful")]
    benign = [it for it in items if not it.meta.get("harmful")]
    order = []
    for a, b in zip(harmful, benign):
        order += [a, b]
    return [it.prompt for it in order[:n]]


def demo_config(device_type: str, max_new_tokens: int, simulations: int | None, seed: int,
                prompts: int) -> RainConfig:
    """The demo's RAIN settings, checked (a ConfigError) before any model loads."""
    if isinstance(prompts, bool) or not isinstance(prompts, int) or prompts < 1:
        raise ConfigError(f"--prompts must be a positive integer, got {prompts!r}.")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be a positive integer, got {max_new_tokens!r}.")
    cfg = RainConfig.cpu_demo(max_new_tokens=max_new_tokens, seed=seed) if device_type == "cpu" \
        else RainConfig.hh(max_new_tokens=max_new_tokens, seed=seed)
    if simulations is not None:
        cfg = cfg.replace(max_simulations=simulations)
    return cfg.validate()


def run_demo(model: str = DEFAULT_MODEL, device: str | None = None, prompts: int = 3,
             max_new_tokens: int = 32, simulations: int | None = None, out_dir: str = "figures",
             seed: int = 0) -> pd.DataFrame:
    t0 = time.perf_counter()
    cfg = demo_config(planned_device(device), max_new_tokens, simulations, seed, prompts)
    print(f"Loading {model} ...", flush=True)
    lm = load_model(model, device=device)
    print(f"  loaded in {lm.load_seconds:.1f} s on {lm.device} ({lm.dtype})")
    if lm.device.type != planned_device(device):
        cfg = demo_config(lm.device.type, max_new_tokens, simulations, seed, prompts)
    print(f"RAIN config: {cfg.name} (T={cfg.max_simulations}, T_m={cfg.min_visits}, V={cfg.value_threshold}, "
          f"c={cfg.c}, max_new_tokens={max_new_tokens})\n")
    rows = []
    for i, prompt in enumerate(demo_prompt_texts(prompts)):
        print(f"[{i + 1}/{prompts}] {prompt}", flush=True)
        for method in ("vanilla", "rain"):
            if method == "vanilla":
                r = generate_vanilla(lm, prompt, max_new_tokens=max_new_tokens)
            else:
                r = rain_generate(lm, prompt, cfg, progress=True)
            n = max(r.stats["committed_tokens"], 1)
            rows.append(dict(prompt=prompt, method=method, response=r.text,
                             tokens=r.stats["committed_tokens"], seconds=round(r.stats["wall_time_s"], 2),
                             forward_calls=r.stats["forward_calls"],
                             forward_per_token=round(r.stats["forward_calls"] / n, 2),
                             computed_per_token=round(r.stats["tokens_computed"] / n, 1),
                             simulations=r.stats.get("simulations", 0)))
            print(f"  {method:8s} ({r.stats['wall_time_s']:.1f} s): {r.text!r}", flush=True)
    df = pd.DataFrame(rows)
    df.attrs["model"] = model
    out = run_dir(out_dir, model, device)      # figures/ for the embedded model on a CPU
    df.to_csv(out / "demo.csv", index=False)
    _plot(df, out / "demo.png")
    print()
    print(summary_table(df))
    ratio = df[df.method == "rain"].seconds.sum() / max(df[df.method == "vanilla"].seconds.sum(), 1e-9)
    print(f"\nRAIN / vanilla wall time: {ratio:.1f}x   (figure: {out / 'demo.png'}, table: {out / 'demo.csv'})")
    print(HONEST_NOTE)
    print(f"Demo finished in {time.perf_counter() - t0:.0f} s.")
    return df


def summary_table(df: pd.DataFrame) -> str:
    """Mean cost per method, as text printed whole (no "..." and no "[2 rows x 6 columns]",
    whatever pandas' display options)."""
    table = df[["method", "tokens", "seconds", "forward_calls", "forward_per_token",
                "computed_per_token", "simulations"]].groupby("method").mean().round(2)
    return table.to_string()


def _plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    short = df.assign(prompt=[f"P{i // 2 + 1}" for i in range(len(df))])
    sns.barplot(data=short, x="prompt", y="forward_per_token", hue="method", ax=axes[0])
    axes[0].set(title="Model forward calls per committed token", xlabel="demo prompt",
                ylabel="forward calls / token")
    sns.barplot(data=short, x="prompt", y="seconds", hue="method", ax=axes[1])
    axes[1].set(title="Wall time per response", xlabel="demo prompt", ylabel="seconds")
    handles, labels = axes[0].get_legend_handles_labels()
    for ax in axes:                      # one legend, outside the bars
        ax.get_legend().remove()
    model = df.attrs.get("model", DEFAULT_MODEL)
    note = "embedded SmolLM2-135M: mechanics and cost, not safety" if model == DEFAULT_MODEL else model
    fig.suptitle(f"Vanilla decoding vs RAIN ({note})")
    fig.legend(handles, labels, title="method", loc="upper center", ncol=len(labels),
               bbox_to_anchor=(0.5, 0.93), frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.86))
    fig.savefig(path, dpi=120)
    plt.close(fig)
