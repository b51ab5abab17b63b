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
# # 06 · Harmlessness: vanilla vs RAIN on Anthropic HH
#
# The paper's headline experiment: take prompts from Anthropic's HH-RLHF *harmless* test split,
# answer each with plain (vanilla) decoding and with RAIN, let a judge rate every answer as
# harmless / helpful or not, and compare the rates. The paper used GPT-4 as the judge and reports,
# for example, LLaMA 30B going from 82.2% to 97.0% harmless with helpfulness about unchanged.
#
# In this notebook you will:
# 1. load a handful of HH prompts and pick a judge (and check what that judge can tell apart),
# 2. run the evaluation with the project's runner (`raintools.experiments.runner.run_eval`, the same code as
#    `python -m raintools eval`): vanilla, RAIN and best-of-N with RAIN's own self-evaluator,
# 3. draw harmless vs helpful rates with bootstrap 95% intervals, beside the paper's numbers,
# 4. read win rates (RAIN vs vanilla on the same prompts),
# 5. compare best-of-N and RAIN at equal compute (the paper's sample-efficiency table).
#
# **Content warning:** HH-RLHF prompts include offensive and harmful requests.

# %% tags=["parameters"]
# Parameters: read from the environment (RAINTOOLS_FAST, RAINTOOLS_MODEL, RAINTOOLS_DEVICE,
# RAINTOOLS_SEED) so the same notebook runs on a laptop and on a big model on a GPU.
import os

from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
N_PROMPTS = 2 if FAST else 6           # HH prompts answered by every method
N_PAIRS = 2 if FAST else 10            # preference pairs for the judge check
MAX_NEW_TOKENS = 3 if FAST else 16     # commits of 1, 2 (then 4 and 9) tokens
# RAIN's search budget on a CPU (the rules are the paper's; only the number of tries is smaller).
# On a GPU the paper's HH constants are used and this budget is ignored.
BUDGET = (dict(max_simulations=2, extra_simulations=1, clause_max_tokens=4) if FAST else
          dict(max_simulations=8, extra_simulations=4, clause_max_tokens=12))
BON_NS = (2,) if FAST else (2, 6)      # best-of-N sample counts
DATA = "hh-harmless"                   # a data set name or a file; our demo prompts if absent
# The judge. "llm" asks an OpenAI-compatible endpoint when JUDGE_URL is set (e.g. a 70B model
# behind vLLM: RAINTOOLS_JUDGE_URL=http://host:8000/v1, RAINTOOLS_JUDGE_MODEL=<its name>);
# otherwise it runs locally, on JUDGE_MODEL if given, else on the model being evaluated.
# "refusal" adds the offline refusal-phrase check.
JUDGES = ("llm", "refusal")
JUDGE_URL = os.environ.get("RAINTOOLS_JUDGE_URL") or None
JUDGE_MODEL = os.environ.get("RAINTOOLS_JUDGE_MODEL") or None
RUNS = os.environ.get("RAINTOOLS_RUNS") or None   # keep run folders here (resumable); else temporary

# %%
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.views.analysis import load_self_eval_pairs, notebook_config, pair_query
from raintools.experiments.data import data_root
from raintools.experiments.judges import LLMJudge
from raintools.experiments.methods import MethodConfig, register_variant
from raintools.views.plots import save_figure
from raintools.experiments.runner import build_judges, run_eval
from raintools.experiments.stats import bootstrap_ci
from raintools.experiments.tasks import get_task

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 80)

# %% [markdown]
# ## 1. Prompts, model and judge
#
# The prompts are the first human turns of HH-RLHF `harmless-base/test` (as in the paper), read
# by the `harmless` task. Without the data folder the notebook falls back to a few harmful
# requests we wrote ourselves.

# %%
task = get_task("harmless")
if DATA in ("hh-harmless",) and data_root() is None:
    DATA = "demo-harmful"
items = task.load(DATA, limit=N_PROMPTS)
print(f"{len(items)} prompts from {DATA}:")
for it in items:
    print(f"  {it.id}: {it.prompt[:100]!r}")

lm = rt.load_model(MODEL, device=DEVICE)
print(f"\n{lm.name} on {lm.device} ({lm.dtype}), loaded in {lm.load_seconds:.1f} s")

# %% [markdown]
# **The judge.** The paper asked GPT-4. Offline, two judges are available here: the refusal-phrase
# check (does the answer decline?) and the *LLM judge*, which asks a model for
# `{"harmless": ..., "helpful": ...}`. Run locally, it reads the two probabilities of `true` /
# `false` right after the opening of that JSON answer, so it always gives a verdict.
#
# A judge is only as good as the model behind it. Before trusting its rates, a direct check: on
# HH-RLHF preference pairs (one answer chosen by people as less harmful), does the judge give the
# chosen answer the higher probability of being harmless? 50% is chance.

# %%
judges = build_judges(JUDGES, task, items, lm=lm, judge_url=JUDGE_URL, judge_model=JUDGE_MODEL)
llm_judge = judges.get("llm")
pairs, source = load_self_eval_pairs(limit=N_PAIRS, max_chars=700)
rows = []
if isinstance(llm_judge, LLMJudge):
    for pr in pairs:
        q = pair_query(pr)
        a, b = llm_judge.judge(q, pr.chosen), llm_judge.judge(q, pr.rejected)
        rows.append(dict(id=pr.id, p_chosen=a.get("p_harmless"), p_rejected=b.get("p_harmless"),
                         harmless_chosen=a["harmless"], harmless_rejected=b["harmless"]))
judge_check = pd.DataFrame(rows)
if len(judge_check) and judge_check.p_chosen.notna().all():
    judge_acc = float((judge_check.p_chosen > judge_check.p_rejected).mean())
    print(f"judge {llm_judge.name}: chosen answer rated more harmless in {100 * judge_acc:.0f}% of "
          f"{len(judge_check)} pairs ({source}); chance is 50%")
elif len(judge_check):   # an endpoint judge gives verdicts, not probabilities
    judge_acc = float((judge_check.harmless_chosen & ~judge_check.harmless_rejected).mean())
    print(f"judge {llm_judge.name}: chosen harmless and rejected harmful in {100 * judge_acc:.0f}% "
          f"of {len(judge_check)} pairs ({source})")
judge_check.head()

# %% [markdown]
# With the embedded 135M model as its own judge, expect a number near 50%: **a 135M model cannot
# tell a harmful answer from a harmless one**, so the harmless and helpful rates below measure the
# judge's noise as much as the answers. That is why the judge is a parameter: set
# `RAINTOOLS_JUDGE_URL` (and `RAINTOOLS_JUDGE_MODEL`) to a strong model's endpoint and this
# notebook scores the same answers the way the paper did.

# %% [markdown]
# ## 2. Run the evaluation
#
# Methods come from one registry (`raintools.experiments.methods`): every method is a function
# `(lm, prompt, task, config, seed) -> RainResult`. Besides `vanilla` (greedy) and `rain`, we add
# best-of-N with several N as *variants* of the built-in `bon`: sample N answers and keep the one
# the model's own self-evaluator (the same judge RAIN searches with) likes best, the paper's
# "cherry-pick" baseline.
#
# `run_eval` writes `results.jsonl` (one line per prompt and method, verdicts and statistics
# included) and `summary.csv`, and resumes if its folder already holds finished answers.

# %%
bon_methods = [register_variant(f"bon-{n}", "bon", bon_n=n) for n in BON_NS]
methods = ["vanilla", "rain", *bon_methods]
rain_cfg = notebook_config(lm, **(BUDGET if lm.device.type == "cpu" else {}))
config = MethodConfig(rain=rain_cfg, max_new_tokens=MAX_NEW_TOKENS)
out = Path(RUNS or tempfile.mkdtemp(prefix="rt-06-")) / f"hh-{lm.name.replace('/', '_')}"
run = run_eval(DATA, methods, JUDGES, out, task="harmless", limit=N_PROMPTS, lm=lm, seed=SEED,
               method_config=config, judge_url=JUDGE_URL, judge_model=JUDGE_MODEL, progress=False)
print(f"{run.computed} answers computed, {run.skipped} reused; files in {out}")
summary = run.summary
summary[["method", "n", "harmless_rate", "harmless_lo", "harmless_hi", "helpful_rate",
         "refusal_rate", "win_rate", "mean_time_s", "time_ratio", "compute_ratio"]].round(3)

# %% [markdown]
# The answers themselves:

# %%
records = pd.DataFrame(run.records)
answers = records.pivot(index="id", columns="method", values="response")[methods]
answers.insert(0, "prompt", records.groupby("id").prompt.first())
answers

# %% [markdown]
# ## 3. Harmless vs helpful
#
# The paper's first figure puts every method at a point (harmless rate, helpful rate): an aligned
# method moves right without dropping. Left: what we measured here, with bootstrap 95% intervals
# over prompts (with a handful of prompts they span most of the axis; that is the honest size of
# the uncertainty). Right: the harmless rates the paper reports for LLaMA models (GPT-4 judge),
# vanilla to RAIN. Those are **the paper's numbers, not measured here**; the paper gives the
# helpfulness of the larger models as about unchanged, without numbers we could plot.

# %%
PAPER_HH = pd.DataFrame([
    dict(model="LLaMA 7B", vanilla=64.4, rain=69.3),
    dict(model="LLaMA-2 7B", vanilla=81.2, rain=86.6),
    dict(model="LLaMA 30B", vanilla=82.2, rain=97.0),
    dict(model="LLaMA 65B (approx.)", vanilla=90.0, rain=100.0),
]).assign(source="paper (reported, GPT-4 judge)")

fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw=dict(width_ratios=[1, 1.1]))
palette = dict(zip(methods, sns.color_palette("tab10", len(methods))))
# distinct markers, largest first, so that methods at the same point stay visible
marker = {m: (mk, 13 - 2.5 * i) for i, (m, mk) in enumerate(zip(methods, "osD^vP"))}
for _, r in summary.iterrows():
    x, y = 100 * r.harmless_rate, 100 * r.helpful_rate
    ax.errorbar(x, y, xerr=[[x - 100 * r.harmless_lo], [100 * r.harmless_hi - x]],
                yerr=[[y - 100 * r.helpful_lo], [100 * r.helpful_hi - y]], fmt=marker[r.method][0],
                ms=marker[r.method][1], capsize=4, color=palette[r.method], label=r.method)
v, rn = summary.set_index("method").loc["vanilla"], summary.set_index("method").loc["rain"]
ax.annotate("", xy=(100 * rn.harmless_rate, 100 * rn.helpful_rate),
            xytext=(100 * v.harmless_rate, 100 * v.helpful_rate),
            arrowprops=dict(arrowstyle="->", color="grey", lw=1.5))
if summary[["harmless_rate", "helpful_rate"]].nunique().max() == 1:
    ax.text(50, 50, "all methods at the same point:\nthe judge rated every answer alike",
            ha="center", va="center", fontsize=9, color="grey")
ax.set(xlim=(-5, 105), ylim=(-5, 105), xlabel="harmless rate (%)", ylabel="helpful rate (%)",
       title=f"Measured here: {lm.name}, n={int(v.n)} prompts\njudge: {llm_judge.name if llm_judge else JUDGES[0]}")
ax.legend(loc="lower left", fontsize=8)
paper_long = PAPER_HH.melt(id_vars=["model", "source"], value_vars=["vanilla", "rain"],
                           var_name="method", value_name="harmless")
sns.barplot(data=paper_long, y="model", x="harmless", hue="method", ax=ax2,
            palette=[palette["vanilla"], palette["rain"]])
for cont in ax2.containers:
    ax2.bar_label(cont, fmt="%.1f", fontsize=8, padding=2)
ax2.set(xlim=(0, 112), xlabel="harmless rate (%)", ylabel="",
        title="The paper's reported numbers (HH, GPT-4 judge)\nnot measured here")
fig.tight_layout()
figdata = pd.concat([
    summary[["method", "n", "harmless_rate", "harmless_lo", "harmless_hi", "helpful_rate",
             "helpful_lo", "helpful_hi"]].assign(model=lm.name, source="measured"),
    paper_long.assign(harmless_rate=paper_long.harmless / 100).drop(columns="harmless"),
], ignore_index=True)
save_figure(fig, "06_harmless_helpful", figdata)

# %% [markdown]
# ## 4. Win rates
#
# Rates compare methods across prompts; a *win rate* compares them on each prompt. For every
# prompt, RAIN wins when the judge calls its answer harmless and vanilla's not, loses in the
# opposite case, and ties otherwise; win rate = (wins + ties / 2) / prompts, so 0.5 means no
# difference. The interval bootstraps over prompts.

# %%
wins = summary[summary.method != "vanilla"][["method", "win_metric", "win_rate", "win_lo", "win_hi",
                                             "wins", "ties", "losses"]]
fig, ax = plt.subplots(figsize=(6.5, 0.6 + 0.6 * len(wins)))
ax.errorbar(wins.win_rate, range(len(wins)), xerr=[wins.win_rate - wins.win_lo, wins.win_hi - wins.win_rate],
            fmt="o", capsize=4, color="k")
ax.axvline(0.5, color="grey", ls="--", lw=1)
ax.set(yticks=range(len(wins)), yticklabels=wins.method, xlim=(-0.02, 1.02),
       xlabel=f"win rate over vanilla on '{wins.win_metric.iloc[0]}' (0.5 = no difference)",
       title="Paired comparison with vanilla decoding (bootstrap 95% CI)")
for i, r in enumerate(wins.itertuples()):
    ax.text(1.0, i, f"{int(r.wins)}W {int(r.ties)}T {int(r.losses)}L", ha="right", va="bottom", fontsize=8)
fig.tight_layout()
save_figure(fig, "06_win_rates", wins)
wins.round(3)

# %% [markdown]
# ## 5. Best-of-N vs RAIN at equal compute
#
# Is RAIN just an expensive way of sampling many answers and keeping the best? The paper tests
# this with best-of-N using the same self-evaluator: with N = 500, LLaMA 30B reaches 88.1%
# harmless against RAIN's 97.0% (LLaMA 7B: 64.4% vs 69.3%). Below, each method is a point at its
# cost (tokens the model computed per answer, counted by the model wrapper) and its harmless rate;
# a best-of-N point at the same cost as RAIN is the fair comparison.

# %%
cost = summary[["method", "mean_tokens_computed", "compute_ratio", "harmless_rate", "harmless_lo",
                "harmless_hi", "mean_time_s", "time_ratio"]]
fig, ax = plt.subplots(figsize=(7, 4.2))
for r in cost.itertuples():
    ax.errorbar(r.mean_tokens_computed, 100 * r.harmless_rate,
                yerr=[[100 * (r.harmless_rate - r.harmless_lo)], [100 * (r.harmless_hi - r.harmless_rate)]],
                fmt=marker[r.method][0], ms=marker[r.method][1], capsize=4, color=palette[r.method],
                label=f"{r.method} ({r.compute_ratio:.0f}x)")
ax.set(xscale="log", ylim=(-5, 105), xlabel="tokens computed per answer (log scale)",
       ylabel="harmless rate (%)", title=f"Harmlessness against compute ({lm.name}, n={int(v.n)})")
ax.legend(fontsize=8, title="method (compute vs vanilla)", title_fontsize=8)
fig.tight_layout()
save_figure(fig, "06_bon_vs_rain", cost)

PAPER_BON = pd.DataFrame([dict(model="LLaMA 30B", best_of_500=88.1, rain=97.0),
                          dict(model="LLaMA 7B", best_of_500=64.4, rain=69.3)]
                         ).assign(source="paper (reported)")
PAPER_BON

# %%
ratio = cost.set_index("method").compute_ratio
n_equal = ratio["rain"] / max(ratio[bon_methods[0]] / BON_NS[0], 1e-9)
print(f"RAIN computed {ratio['rain']:.0f}x the tokens of vanilla decoding; one best-of-N sample "
      f"with its self-evaluation costs about {ratio[bon_methods[0]] / BON_NS[0]:.1f}x, so "
      f"best-of-{n_equal:.0f} would match RAIN's compute here.")

# %% [markdown]
# What did the self-evaluator see among the best-of-N candidates? With two option orders, a value
# is +1 (both orders say harmless), -1 (both say harmful) or 0 (they disagree). When all N values
# tie, best-of-N keeps its first sample, which is why a larger N can return the same answer.

# %%
bon_values = pd.DataFrame([dict(method=r["method"], id=r["id"], values=r["stats"].get("values"),
                                chosen=r["stats"].get("chosen"))
                           for r in run.records if r["method"] in bon_methods])
all_values = pd.Series([v for vs in bon_values["values"] for v in vs])
print("self-evaluation values of best-of-N candidates:", all_values.value_counts().sort_index().to_dict())
bon_values

# %% [markdown]
# ## What to take away
#
# * The runner produces the paper's comparison end to end: answers, verdicts, rates with
#   intervals, win rates and cost, in two files that resume after an interruption. The same call
#   (or `python -m raintools eval --data ... --methods vanilla,rain,bon --judge llm,refusal`) runs
#   on a GPU with a large model, sharded over GPUs with `torchrun`.
# * **Honest note.** With the embedded 135M model both the search's self-evaluation and the local
#   judge are at about chance (section 1), and a handful of prompts gives intervals as wide as the
#   axis. Differences between methods here are noise, not evidence for or against RAIN. The
#   paper's gains (right panel of the first figure) need a model whose self-evaluation is
#   informative (30B and up) and a judge that can tell harm apart: set `RAINTOOLS_MODEL`,
#   `RAINTOOLS_DEVICE=cuda` and `RAINTOOLS_JUDGE_URL`.
# * Cost is real at any size: see notebook 07 for where it goes and how it scales with the budget.
