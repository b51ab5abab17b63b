# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · What RAIN costs, and what each of its parts does
#
# RAIN buys alignment with inference-time search, so its price is paid at every answer. The paper
# reports RAIN taking about 4x the time of vanilla decoding on large LLaMA models (its vanilla
# baseline decodes *without* a KV cache), and an ablation showing that each part of the search
# (similarity update, dynamic node addition, exploration) contributes to the result.
#
# In this notebook you will:
# 1. measure RAIN's time and model work relative to vanilla decoding, beside the paper's table,
#    and see where the search spends its time,
# 2. see how the cost grows with the simulation budget `T`,
# 3. see how the value threshold `V` lets steps stop early (and why they rarely do here),
# 4. rerun the paper's ablation with `RainConfig.ablation(...)`.

# %% tags=["parameters"]
# Parameters: read from the environment (RAINTOOLS_FAST, RAINTOOLS_MODEL, RAINTOOLS_DEVICE,
# RAINTOOLS_SEED) so the same notebook runs on a laptop and on a big model on a GPU.
import os

from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
N_PROMPTS = 1 if FAST else 2           # prompts for the cost measurements and sweeps
N_ABLATION = 1 if FAST else 3          # AdvBench prompts per ablation variant
MAX_NEW_TOKENS = 3 if FAST else 10     # commits of 1, 2 (then 4 and 3) tokens
# RAIN's search budget on a CPU (the rules are the paper's; only the number of tries is smaller).
# On a GPU the paper's HH constants are used and this budget is ignored.
BUDGET = (dict(max_simulations=2, extra_simulations=1, clause_max_tokens=4) if FAST else
          dict(max_simulations=8, extra_simulations=4, clause_max_tokens=12))
T_VALUES = (1, 3) if FAST else (2, 4, 8)             # simulation budgets T to sweep (paper: 50)
V_VALUES = (-1.0, 0.8) if FAST else (-1.0, 0.0, 0.8)      # value thresholds V (paper: 0.8)
V_SWEEP = dict(max_simulations=3, min_visits=1) if FAST else dict(max_simulations=8, min_visits=3)
RUNS = os.environ.get("RAINTOOLS_RUNS") or None   # keep run folders here (resumable); else temporary

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools import RainConfig
from raintools.views.analysis import notebook_config
from raintools.experiments.data import data_root
from raintools.experiments.judges import RefusalJudge
from raintools.experiments.methods import MethodConfig, register_variant
from raintools.views.plots import save_figure
from raintools.experiments.runner import run_eval
from raintools.experiments.stats import rate_ci
from raintools.experiments.tasks import get_task

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 80)

task = get_task("harmless")
lm = rt.load_model(MODEL, device=DEVICE)
on_cpu = lm.device.type == "cpu"
base = notebook_config(lm, **(BUDGET if on_cpu else {}))
config = MethodConfig(rain=base, max_new_tokens=MAX_NEW_TOKENS)
runs = Path(RUNS or tempfile.mkdtemp(prefix="rt-07-"))
print(f"{lm.name} on {lm.device}; RAIN: T={base.max_simulations}, T_m={base.min_visits}, "
      f"V={base.value_threshold}, c={base.c}; {MAX_NEW_TOKENS} new tokens per answer")

# %% [markdown]
# ## 1. RAIN vs vanilla: time and model work
#
# The prompts are our own harmful requests (`demo-harmful`). The evaluation runner answers each
# with both methods and its summary already holds the ratios: wall time, forward calls (model
# invocations) and tokens computed (every token position the model processed, prompts and
# self-evaluations included), each relative to vanilla.

# %%
cost_run = run_eval("demo-harmful", ["vanilla", "rain"], ["refusal"], runs / "cost", limit=N_PROMPTS,
                    lm=lm, seed=SEED, method_config=config, progress=False)
records = pd.DataFrame(cost_run.records)
stats = pd.json_normalize(records.stats).set_index(records.index)
records = pd.concat([records.drop(columns="stats"), stats], axis=1)
s = cost_run.summary.set_index("method")
# what a vanilla decoder WITHOUT a KV cache (the public code's baseline) computes: the whole
# prefix again for every new token, sum over k of (prompt + k)
van = records[records.method == "vanilla"]
uncached = (van.committed_tokens * van.prompt_tokens
            + van.committed_tokens * (van.committed_tokens - 1) / 2).mean()
ours = pd.DataFrame([
    dict(quantity="wall time", ratio=s.loc["rain", "time_ratio"]),
    dict(quantity="forward calls", ratio=s.loc["rain", "forward_ratio"]),
    dict(quantity="tokens computed", ratio=s.loc["rain", "compute_ratio"]),
    dict(quantity="tokens computed vs uncached vanilla",
         ratio=s.loc["rain", "mean_tokens_computed"] / uncached),
]).assign(model=lm.name, source="measured here")
ours.round(2)

# %% [markdown]
# The paper's time table (HH, RAIN time / vanilla time): **LLaMA 30B 4.36x, LLaMA 65B 3.95x,
# LLaMA-2 70B 3.78x** (reported, not measured here). Two things make our ratios much larger: our
# vanilla decoder keeps a KV cache (the paper's baseline recomputes the prefix for every token,
# which is what the last row above compares against), and on a CPU with a 135M model a forward
# pass costs about the same for 1 or 10 tokens, so RAIN's batching buys less than on a GPU.

# %%
PAPER_TIME = pd.DataFrame([dict(model="LLaMA 30B", ratio=4.36), dict(model="LLaMA 65B", ratio=3.95),
                           dict(model="LLaMA-2 70B", ratio=3.78)]
                          ).assign(quantity="wall time (vanilla without KV cache)",
                                   source="paper (reported)")
phase_cols = [c for c in stats.columns if c.startswith("time_") and c.endswith("_s")]  # search phases
rain_rows = records[records.method == "rain"]
phases = (rain_rows[phase_cols].mean().rename(lambda c: c[len("time_"):-2]).sort_values(ascending=False)
          if phase_cols else pd.Series(dtype=float))

fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), gridspec_kw=dict(width_ratios=[1.2, 1]))
both = pd.concat([ours, PAPER_TIME], ignore_index=True)
both["label"] = both.source + ": " + both.model + "\n" + both.quantity
sns.barplot(data=both, y="label", x="ratio", hue="source", dodge=False, ax=axes[0])
axes[0].set(xlabel="RAIN / vanilla", ylabel="",
            title="Cost of RAIN relative to vanilla decoding")
for cont in axes[0].containers:
    axes[0].bar_label(cont, fmt="%.1fx", fontsize=8, padding=2)
axes[0].get_legend().remove()
if len(phases):
    axes[1].barh(phases.index, phases.values, color="tab:orange")
    axes[1].invert_yaxis()
    axes[1].set(xlabel="seconds per answer (mean)", title=f"Where RAIN's time goes ({lm.name})")
fig.tight_layout()
save_figure(fig, "07_time_ratio", both.drop(columns="label"))
phases.round(3).to_frame("seconds per answer")

# %% [markdown]
# ## 2. Cost as a function of the simulation budget `T`
#
# `T` caps the simulations per step (the paper uses 50; a step also runs at least
# `extra_simulations` new ones). With a self-evaluator at chance, steps never stop early, so every
# step runs its whole budget and the cost grows about linearly with `T`. Each `T` is a *variant*
# of the `rain` method (`register_variant`), so one runner call measures them all against the same
# vanilla answers.

# %%
t_methods = [register_variant(f"rain-T{t}", "rain", max_simulations=t,
                              extra_simulations=min(base.extra_simulations, t)) for t in T_VALUES]
t_run = run_eval("demo-harmful", ["vanilla", *t_methods], ["refusal"], runs / "T", limit=N_PROMPTS,
                 lm=lm, seed=SEED, method_config=config, progress=False)
t_recs = pd.DataFrame([dict(method=r["method"], **r["stats"]) for r in t_run.records])
t_table = (t_run.summary[t_run.summary.method != "vanilla"]
           [["method", "time_ratio", "forward_ratio", "compute_ratio", "mean_time_s"]]
           .merge(t_recs.groupby("method")[["simulations", "committed_tokens"]].mean().reset_index()))
t_table.insert(1, "T", list(T_VALUES))
t_table["simulations_per_token"] = t_table.simulations / t_table.committed_tokens

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
axes[0].plot(t_table["T"], t_table.time_ratio, "o-", label="wall time")
axes[0].plot(t_table["T"], t_table.forward_ratio, "s-", label="forward calls")
axes[0].plot(t_table["T"], t_table.compute_ratio, "^-", label="tokens computed")
axes[0].set(xlabel="T (max simulations per step)", ylabel="RAIN / vanilla",
            title="Cost relative to vanilla, by T")
axes[0].legend(fontsize=8)
axes[1].plot(t_table["T"], t_table.simulations_per_token, "o-", color="tab:purple")
axes[1].set(xlabel="T (max simulations per step)", ylabel="simulations per committed token",
            title="Search effort per token")
fig.tight_layout()
save_figure(fig, "07_cost_vs_T", t_table)
t_table.round(2)

# %% [markdown]
# ## 3. The value threshold `V` and early stopping
#
# A step stops early once the most visited child has more than `T_m` visits and a value above `V`.
# A lower `V` stops sooner. With a self-evaluator whose two option orders mostly disagree (value
# 0) or that is at chance, values seldom exceed a high `V`, so at the paper's `V = 0.8` the budget
# is almost always spent in full; only `V` at or below the typical value makes steps stop early.

# %%
v_methods = [register_variant(f"rain-V{v:+.1f}", "rain", value_threshold=v, **(V_SWEEP if on_cpu else {}))
             for v in V_VALUES]
v_run = run_eval("demo-harmful", ["vanilla", *v_methods], ["refusal"], runs / "V", limit=N_PROMPTS,
                 lm=lm, seed=SEED, method_config=config, progress=False)
v_recs = pd.DataFrame([dict(method=r["method"], **r["stats"]) for r in v_run.records])
v_table = (v_run.summary[v_run.summary.method != "vanilla"][["method", "time_ratio", "compute_ratio"]]
           .merge(v_recs.groupby("method")[["simulations", "commits", "early_stops"]].mean().reset_index()))
v_table.insert(1, "V", list(V_VALUES))
v_table["simulations_per_step"] = v_table.simulations / v_table.commits
v_table["early_stop_share"] = v_table.early_stops / v_table.commits

fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
axes[0].plot(v_table.V, v_table.simulations_per_step, "o-")
axes[0].axhline(V_SWEEP["max_simulations"] if on_cpu else base.max_simulations, color="grey", ls="--",
                lw=1, label="budget T (visits kept from the last step count)")
axes[0].set(xlabel="value threshold V", ylabel="simulations per step",
            title=f"Early stopping (T_m = {V_SWEEP['min_visits'] if on_cpu else base.min_visits})")
axes[0].legend(fontsize=8)
axes[1].plot(v_table.V, v_table.time_ratio, "s-", color="tab:red")
axes[1].set(xlabel="value threshold V", ylabel="RAIN / vanilla wall time", title="Time relative to vanilla")
fig.tight_layout()
save_figure(fig, "07_cost_vs_V", v_table)
v_table.round(2)

# %% [markdown]
# ## 4. The paper's ablation
#
# The paper removes RAIN's parts one after another and measures the attack success rate (ASR) on
# AdvBench under GCG attacks, LLaMA-2-chat 13B: **full 19%, without the similarity update 22%,
# also without dynamic node addition 25%, also without exploration (c = 0) 27%** (reported, not
# measured here). `RainConfig.ablation(which)` builds each variant from any base configuration.
#
# We run the four variants on plain AdvBench requests (no adversarial suffix; notebook 08 covers
# GCG) and count, from each search's trace, how often the switched-off parts acted: similarity
# updates (siblings whose value moved because their text was similar) and added nodes. "Attack
# success" is the refusal judge's criterion: a non-empty answer without a refusal phrase.

# %%
ABLATIONS = ("full", "no-sim", "no-sim-no-add", "no-sim-no-add-c0")
PAPER_ABLATION = pd.DataFrame(dict(variant=ABLATIONS, asr=[0.19, 0.22, 0.25, 0.27])
                              ).assign(source="paper (reported, GCG, LLaMA-2-chat 13B)")
abl_data = "advbench" if data_root() is not None else "demo-harmful"
abl_items = task.load(abl_data, limit=N_ABLATION)
refusal = RefusalJudge()
evaluator = task.evaluator(lm, base.eval_mode)
rows = []
for which in ABLATIONS:
    cfg = RainConfig.ablation(which, base=base).replace(max_new_tokens=MAX_NEW_TOKENS, seed=SEED,
                                                        record_trace=True)
    for it in abl_items:
        r = rt.rain_generate(lm, task.prompt(it), cfg, evaluator=evaluator)
        sims = r.trace.simulations
        rows.append(dict(variant=which, id=it.id, response=r.text,
                         attack_success=refusal.judge(it.prompt, r.text)["attack_success"],
                         similarity_updates=sum(len(x.similarity) for x in sims),
                         nodes_added=r.stats["nodes_added"], simulations=r.stats["simulations"],
                         seconds=r.stats["wall_time_s"]))
ablation = pd.DataFrame(rows)
full_answers = ablation[ablation.variant == "full"].set_index("id").response
ablation["differs_from_full"] = ablation.response != ablation.id.map(full_answers)
abl = ablation.groupby("variant", sort=False).agg(
    differs_from_full=("differs_from_full", "mean"),
    n=("id", "size"), similarity_updates=("similarity_updates", "mean"),
    nodes_added=("nodes_added", "mean"), simulations=("simulations", "mean"),
    seconds=("seconds", "mean")).reset_index()
cis = [rate_ci(ablation[ablation.variant == w].attack_success) for w in ABLATIONS]
abl["asr"], abl["asr_lo"], abl["asr_hi"] = ([c.estimate for c in cis], [c.lo for c in cis],
                                            [c.hi for c in cis])
abl.round(2)

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
x = np.arange(len(ABLATIONS))
axes[0].bar(x - 0.2, 100 * abl.asr, 0.4, yerr=[100 * (abl.asr - abl.asr_lo), 100 * (abl.asr_hi - abl.asr)],
            capsize=4, label=f"measured here ({lm.name}, plain {abl_data}, n={N_ABLATION})")
axes[0].bar(x + 0.2, 100 * PAPER_ABLATION.asr, 0.4, color="tab:grey", label=PAPER_ABLATION.source[0])
labels = [w.replace("-no-", "\nno-").replace("-c0", "\nc = 0") for w in ABLATIONS]
axes[0].set(xticks=x, xticklabels=labels, ylabel="attack success rate (%)", ylim=(0, 119),
            title="Ablation: attack success (lower is better)")
axes[0].legend(fontsize=7, loc="upper left")
axes[1].bar(x, 100 * abl.differs_from_full, 0.5, color="tab:purple")
for i, r in enumerate(abl.itertuples()):
    axes[1].text(i, 2, f"sim. updates {r.similarity_updates:.1f}\nnodes added {r.nodes_added:.1f}\n"
                 f"{r.simulations:.0f} simulations", ha="center", va="bottom", fontsize=8)
axes[1].set(xticks=x, xticklabels=labels, ylim=(0, 105), ylabel="answers differing from full RAIN (%)",
            title="Effect on the answers; what the parts did (per answer, from traces)")
fig.tight_layout()
save_figure(fig, "07_ablation", pd.concat([abl.assign(source="measured"), PAPER_ABLATION],
                                          ignore_index=True))

# %% [markdown]
# Similarity updates need two visited siblings whose texts embed almost alike (cosine >= 0.95),
# and node addition needs every child of a node valued below 0 with little spread among them; with
# a few simulations per step and values that are mostly 0, a search on this CPU may see neither,
# so switching them off changes nothing. Exploration (`c`) steers which children are tried at all,
# so `c = 0` is the switch most likely to change an answer here.

# %% [markdown]
# ## What to take away
#
# * RAIN's price is search: simulations per committed token times the work of each (clause
#   completion, self-evaluation, expansion, embeddings). It scales with `T` and falls only when
#   steps stop early, which needs a self-evaluator confident enough to clear `V`.
# * Against a vanilla decoder with a KV cache the ratio is much larger than the paper's ~4x,
#   which was measured against a decoder without one; against such a decoder (last row of the
#   first table) the comparison is closer to the paper's setting.
# * **Honest note.** With the embedded 135M model the ablation's attack-success rates are noise:
#   the model neither refuses reliably nor judges harm better than chance, and a handful of
#   prompts gives wide intervals. What *is* measured here is the mechanics: how often each part
#   acted, whether switching it off changes the answers, and what it costs. The paper's ordering
#   (full < no-sim < no-add < c = 0) needs a large model: set `RAINTOOLS_MODEL` and
#   `RAINTOOLS_DEVICE=cuda`.
