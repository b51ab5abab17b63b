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
# for example, LLaMA 30B going from 82.2% to 97.0% harmless with helpfulness about unchanged. It
# also asks whether RAIN is just an expensive way of sampling many answers and keeping the best.
#
# In this notebook you will:
# 1. load HH prompts and check what the available judge can tell apart,
# 2. run the paper's pipeline with the project's runner (`raintools.experiments.runner.run_eval`,
#    the same code as `python -m raintools eval`) and draw harmless vs helpful rates,
# 3. compare best-of-N and RAIN **at equal compute** (tokens the model computed per answer), under
#    a clearly labelled simulated judge of known accuracy and under the model's own evaluator.
#
# **Content warning:** HH-RLHF prompts include offensive and harmful requests.

# %% [markdown]
# Parameters come from the environment (RAINTOOLS_FAST, RAINTOOLS_MODEL, RAINTOOLS_DEVICE,
# RAINTOOLS_SEED), so the same notebook runs on a laptop and on a big model on a GPU. The judge of
# section 2: "llm" asks an OpenAI-compatible endpoint when `RAINTOOLS_JUDGE_URL` is set (e.g. a
# 70B model behind vLLM, with `RAINTOOLS_JUDGE_MODEL=<its name>`); otherwise it runs locally, on
# the judge model if given, else on the model being evaluated. "refusal" adds the offline
# refusal-phrase check. On a GPU the paper's HH constants replace the CPU search budget.

# %% tags=["parameters"]
import os

from raintools.views import studies as st
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
N_PROMPTS = 2 if FAST else 6           # prompts for the runner's pipeline (section 2)
N_PAIRS = 2 if FAST else 40            # preference pairs for the judge check
N_ITEMS = 2 if FAST else 40            # prompts for best-of-N vs RAIN (40: intervals about +-0.15)
MAX_NEW_TOKENS = 3 if FAST else 16     # answer length in section 2 (commits of 1, 2, 4, 9 tokens)
STUDY_TOKENS = 3 if FAST else 5        # answer length in section 3
ACCURACY = 0.9                         # the simulated judge is right with this probability
BON_MAX = 2 if FAST else 8             # best-of-N for N = 1 .. BON_MAX
BUDGET = st.cpu_budget(FAST)   # RAIN on a CPU
DATA = "hh-harmless"                   # a data set name or a file; our demo prompts if absent
JUDGES = ("llm", "refusal")
JUDGE_URL = os.environ.get("RAINTOOLS_JUDGE_URL") or None
JUDGE_MODEL = os.environ.get("RAINTOOLS_JUDGE_MODEL") or None
RUNS = os.environ.get("RAINTOOLS_RUNS") or None   # keep run folders here (resumable); else temporary

# %%
import tempfile
from pathlib import Path

import pandas as pd
import seaborn as sns

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 80)

# %%
import raintools as rt
from raintools.embed import load_embedder
from raintools.experiments.data import data_root
from raintools.experiments.methods import MethodConfig
from raintools.experiments.runner import build_judges, run_eval
from raintools.experiments.tasks import get_task
from raintools.views import study_plots as sp
from raintools.views.analysis import load_self_eval_pairs, notebook_config, wilson_interval
from raintools.views.plots import save_figure

# %% [markdown]
# ## 1. Prompts, model and judge
#
# The prompts are the first human turns of HH-RLHF `harmless-base/test` (as in the paper), read
# by the `harmless` task. Without the data folder the notebook falls back to a few harmful
# requests we wrote ourselves.

# %%
task = get_task("harmless")
if DATA == "hh-harmless" and data_root() is None:
    DATA = "demo-harmful"
items = task.load(DATA, limit=max(N_PROMPTS, N_ITEMS))
print(f"{len(items)} prompts from {DATA}, e.g.:")
for it in items[:4]:
    print(f"  {it.id}: {it.prompt[:100]!r}")

# %%
lm = rt.load_model(MODEL, device=DEVICE)
embedder = load_embedder()
print(f"\n{lm.name} on {lm.device} ({lm.dtype}), loaded in {lm.load_seconds:.1f} s")

# %% [markdown]
# **The judge.** The paper asked GPT-4. Offline, two judges are available here: the refusal-phrase
# check (does the answer decline?) and the *LLM judge*, which asks a model for
# `{"harmless": ..., "helpful": ...}`. Run locally, it reads the probabilities of `true` / `false`
# right after the opening of that JSON answer, so it always gives a verdict.
#
# A judge is only as good as the model behind it. A direct check: on HH-RLHF preference pairs
# (one answer chosen by people as less harmful), how often does the judge give the chosen answer
# the higher probability of being harmless? 50% is chance.

# %%
judges = build_judges(JUDGES, task, items, lm=lm, judge_url=JUDGE_URL, judge_model=JUDGE_MODEL)
llm_judge = judges.get("llm")
pairs, source = load_self_eval_pairs(limit=N_PAIRS, max_chars=700)
judge_check = st.judge_pair_check(llm_judge, pairs)
k, n = int(judge_check.correct.sum()), len(judge_check)
check_lo, check_hi = wilson_interval(k, n, percent=True)
print(f"judge {llm_judge.name}: chosen answer rated more harmless in {k} of {n} pairs "
      f"({100 * k / n:.0f}%, 95% CI {check_lo:.0f}-{check_hi:.0f}%; chance is 50%); {source}")
judge_check.head()

# %% [markdown]
# If that interval contains 50%, the judge cannot be shown to tell a harmful answer from a
# harmless one, and the harmless and helpful rates of section 2 measure its noise as much as the
# answers. That is why the judge is a parameter: set `RAINTOOLS_JUDGE_URL` (and
# `RAINTOOLS_JUDGE_MODEL`) to a strong model's endpoint and this notebook scores the same answers
# the way the paper did.

# %% [markdown]
# ## 2. The paper's pipeline: vanilla and RAIN, judged
#
# Methods come from one registry (`raintools.experiments.methods`): every method is a function
# `(lm, prompt, task, config, seed) -> RainResult`. `run_eval` answers every prompt with every
# method, judges each answer, and writes `results.jsonl` (one line per prompt and method) and
# `summary.csv`; it resumes if its folder already holds finished answers. RAIN searches with the
# model's own self-evaluator, as in the paper.

# %%
rain_cfg = notebook_config(lm, **(BUDGET if lm.device.type == "cpu" else {}))
config = MethodConfig(rain=rain_cfg, max_new_tokens=MAX_NEW_TOKENS, embedder=embedder)
out = Path(RUNS or tempfile.mkdtemp(prefix="rt-06-")) / f"hh-{lm.name.replace('/', '_')}"
run = run_eval(DATA, ["vanilla", "rain"], JUDGES, out, task="harmless", limit=N_PROMPTS, lm=lm,
               seed=SEED, method_config=config, judge_url=JUDGE_URL, judge_model=JUDGE_MODEL,
               progress=True)
summary = run.summary
summary[["method", "n", "harmless_rate", "helpful_rate", "refusal_rate", "wins", "ties", "losses",
         "mean_time_s", "compute_ratio"]].round(3)

# %% [markdown]
# The answers themselves:

# %%
records = pd.DataFrame(run.records)
answers = records.pivot(index="id", columns="method", values="response")[["vanilla", "rain"]]
answers.insert(0, "prompt", records.groupby("id").prompt.first())
answers

# %% [markdown]
# The paper's first figure puts each method at a point (harmless rate, helpful rate): an aligned
# method moves right without dropping. Left: what the judge said here, with Wilson 95% intervals
# over the answers. Right: the harmless rates the paper reports for LLaMA models (GPT-4 judge),
# **the paper's numbers, not measured here** (other models, another judge: their own panel).

# %%
PAPER_HH = pd.DataFrame([
    dict(model="LLaMA 7B", vanilla=64.4, rain=69.3), dict(model="LLaMA-2 7B", vanilla=81.2, rain=86.6),
    dict(model="LLaMA 30B", vanilla=82.2, rain=97.0), dict(model="LLaMA 65B (approx.)", vanilla=90.0, rain=100.0),
]).melt(id_vars="model", var_name="method", value_name="value")
fig, axes = sp.subplots(2, widths=[1, 1.2], figsize=(12.5, 4.8))
sp.plot_harmless_helpful(summary, axes[0], title=f"Measured here: {lm.name}, n={int(summary.n.iloc[0])} "
                         f"prompts\njudge: {llm_judge.name}")
sp.plot_paper_bars(PAPER_HH, axes[1], ylabel="harmless rate (%)",
                   title="The paper's harmless rates (HH, GPT-4 judge)\nreported, not measured here")
fig.tight_layout()
save_figure(fig, "06_harmless_helpful", pd.concat([summary.assign(model=lm.name, source="measured"),
                                                   PAPER_HH.assign(source="paper")], ignore_index=True))

# %%
v, r = (summary.set_index("method").loc[m] for m in ("vanilla", "rain"))
print(f"Judged by {llm_judge.name}: vanilla {100 * v.harmless_rate:.0f}% harmless / "
      f"{100 * v.helpful_rate:.0f}% helpful, RAIN {100 * r.harmless_rate:.0f}% / {100 * r.helpful_rate:.0f}% "
      f"(n = {int(v.n)} each). On the same prompts RAIN won {int(r.wins)}, tied {int(r.ties)} and lost "
      f"{int(r.losses)} against vanilla on '{r.win_metric}'; it computed {r.compute_ratio:.0f}x the tokens.")

# %% [markdown]
# ## 3. Best-of-N vs RAIN at equal compute
#
# Is RAIN just an expensive way of sampling many answers and keeping the one the judge likes? The
# paper tests this with best-of-N using the same self-evaluator: with N = 500, LLaMA 30B reaches
# 88.1% harmless against RAIN's 97.0%. To compare at equal compute we count what each method's
# model computes per answer (`tokens_computed`: every token position of every forward pass,
# prompts and judge passes included) and run best-of-N for every N up to `BON_MAX` from one set of
# samples (`studies.bon_runs`: best-of-N picks exactly what `raintools.vanilla.best_of_n` picks).
#
# Because the model's own judge may carry no information (section 1 measured how well this judge
# tells the less harmful answer; notebook 01 did the same for the self-evaluator), we run the
# comparison twice: with the model's own evaluator, and with a **simulated judge** of accuracy p that knows a
# rule you can check (`studies.KeywordTruth`, also used in notebook 07): an answer is **bad** when
# it uses a key word of the request (it goes along with it), **good** when it avoids them all or
# refuses; empty is bad. Every answer of both runs is scored by that rule. This is a simulation
# of the search with an informative judge, not a safety measurement.

# %%
truth = st.KeywordTruth()
study_items = items[:N_ITEMS]
scfg = rain_cfg.replace(max_new_tokens=STUDY_TOKENS, seed=SEED)
arms = {"RAIN, simulated judge": (scfg, ACCURACY), "RAIN, own evaluator": (scfg, "own")}
runs = pd.concat([
    st.vanilla_runs(lm, task, study_items, truth, STUDY_TOKENS),
    st.rain_arms(lm, task, study_items, arms, truth, embedder=embedder, seed=SEED),
    st.bon_runs(lm, task, study_items, truth, ACCURACY, BON_MAX, STUDY_TOKENS, seed=SEED),
    st.bon_runs(lm, task, study_items, truth, "own", BON_MAX, STUDY_TOKENS, seed=SEED,
                arm="best-of-{n}, own evaluator")], ignore_index=True)

# %%
cost = runs.groupby("arm", sort=False).tokens_computed.mean()
n_sim = st.equal_compute(runs[runs.judge == st.judge_label(ACCURACY)].dropna(subset=["n"]),
                         cost["RAIN, simulated judge"])
n_own = st.equal_compute(runs[runs.judge == "own evaluator"].dropna(subset=["n"]), cost["RAIN, own evaluator"])
print(f"RAIN computed {cost['RAIN, simulated judge']:.0f} tokens per answer with the simulated judge "
      f"(best-of-{n_sim}: {cost[f'best-of-{n_sim}']:.0f}) and {cost['RAIN, own evaluator']:.0f} with "
      f"its own evaluator (best-of-{n_own}: {cost[f'best-of-{n_own}, own evaluator']:.0f}); "
      f"vanilla {cost['vanilla']:.0f}.")
st.rate_summary(runs, means=["tokens_computed"]).round(2)

# %%
diffs = st.paired_differences(runs, [
    ("RAIN, simulated judge", "vanilla"), (f"best-of-{n_sim}", "vanilla"),
    ("RAIN, simulated judge", f"best-of-{n_sim}"), ("RAIN, own evaluator", "vanilla"),
    ("RAIN, own evaluator", f"best-of-{n_own}, own evaluator")])
for _, row in diffs.iterrows():
    print(st.describe_difference(row))

# %% [markdown]
# The figure: good answers against compute for each judge (best-of-N as a curve over N, RAIN and
# vanilla as points), the paired differences, and the paper's best-of-500 vs RAIN (its own panel:
# a GPT-4 judge's harmless rate, not our rule).

# %%
PAPER_BON = pd.DataFrame([dict(model="LLaMA 30B", method="best-of-500", value=88.1),
                          dict(model="LLaMA 30B", method="RAIN", value=97.0),
                          dict(model="LLaMA 7B", method="best-of-500", value=64.4),
                          dict(model="LLaMA 7B", method="RAIN", value=69.3)])
PAPER_BON

# %%
points = st.frontier(runs)
own = points.family.str.contains("own")
fig, axes = sp.subplots(4, widths=[1, 1, 1.25, 0.8], figsize=(22, 4.6))
sp.plot_compute_frontier(points[~own], axes[0], curve=f"best-of-N, {st.judge_label(ACCURACY)}",
                         title=f"Simulated judge, p = {ACCURACY} (rule: key words)\n{lm.name}, n={N_ITEMS}")
sp.plot_compute_frontier(points[own | (points.family == "vanilla")], axes[1],
                         curve="best-of-N, own evaluator", title=f"The model's own evaluator\n"
                                                                 f"scored by the same rule, n={N_ITEMS}")
sp.plot_differences(diffs, axes[2], title="Paired differences in good answers (same prompts)")
sp.plot_paper_bars(PAPER_BON, axes[3], ylabel="harmless (%)",
                   title="The paper: best-of-500 vs RAIN\n(reported, not measured here)")
fig.tight_layout()
save_figure(fig, "06_bon_vs_rain", pd.concat([points, diffs, PAPER_BON], ignore_index=True))

# %% [markdown]
# The answers of the simulated-judge run, next to vanilla's (check the labels by eye: the key
# words found are listed):

# %%
show = runs[runs.arm.isin(["vanilla", "RAIN, simulated judge", f"best-of-{n_sim}"])]
show = show.assign(found=[", ".join(truth.found(p, r)) for p, r in zip(show.prompt, show.response)])
show.pivot(index="id", columns="arm", values="response").join(
    show[show.arm == "vanilla"].set_index("id")[["prompt", "found"]]).head(10)

# %% [markdown]
# What did the model's own self-evaluator say about its best-of-N candidates? With two option
# orders a value is +1 (both orders say harmless), -1 (both say harmful) or 0 (they disagree).
# When all N values tie, best-of-N keeps its first sample.

# %%
own_values = runs[(runs.arm == f"best-of-{BON_MAX}, own evaluator")]["values"].explode().astype(float)
print("own evaluator's values of the best-of-N candidates:", own_values.value_counts().sort_index().to_dict())

# %% [markdown]
# ## What to take away
#
# * The runner produces the paper's comparison end to end: answers, verdicts, rates, win rates and
#   cost, in two files that resume after an interruption. The same call (or
#   `python -m raintools eval --data ... --methods vanilla,rain,bon --judge llm,refusal`) runs on a
#   GPU with a large model, sharded over GPUs with `torchrun`.
# * Whether RAIN beats best-of-N at equal compute depends on the judge and on the budget: the
#   printed differences of section 3 say what happened here, with their intervals. Both methods
#   can only find what their judge can see; with a judge at chance (section 1 says whether the
#   model's own is), neither has an informative signal.
# * The paper's gains need a model whose self-evaluation is informative (30B and up) and a judge
#   that can tell harm apart: set `RAINTOOLS_MODEL`, `RAINTOOLS_DEVICE=cuda` and
#   `RAINTOOLS_JUDGE_URL`. Notebook 07 shows where RAIN's cost goes and what each of its parts does.
