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
# # 11 · Parallel simulations: fewer sequential passes, at what cost in search quality?
#
# RAIN's latency is the number of **sequential forward passes**: each simulation of the paper's
# search runs its rollout steps, the clause completion and the judge one pass after another,
# about ten passes per simulation. On a GPU a pass over 10 tokens costs about what a pass over 200
# costs, so ten simulations cost ten times the latency of one, whatever the hardware.
#
# `RainConfig(parallel_simulations=K)` runs the inner loop in **rounds** of K simulations, the
# standard technique of parallel Monte Carlo tree search:
#
# 1. **select** up to K leaves one after another; each path in flight carries a **virtual loss**
#    (it counts as one more visit of value -1 until its real value is backed up). So each walk
#    picks the leaf the sequential search would pick next *if every simulation in flight came
#    back bad*. A walk that reaches a leaf **already in flight** is dropped (there the
#    sequential search would go on from that leaf's result, which the round cannot give it), and
#    the round **ends at the second such walk** (`raintools.search.ROUND_COLLISIONS`);
# 2. **compute** the round's rollouts, clause completions, judgements and embeddings
#    *together*, in shared packed forward passes;
# 3. **back up** the values one after another, exactly as sequential simulations would, and
#    test the early stop after the round.
#
# One more rule: **no round takes more than half of what is left of a step's budget** (rounded
# up), so the last simulations of a step see the results before them and the very last one runs
# alone. The first version of this notebook had neither rule (a leaf in flight was skipped, and
# rounds were always K): under the simulated judges below it found good answers less often than
# the sequential search, by 0.06 to 0.16 (at p = 1 the whole interval below -0.05), because its
# last round of a step could not follow up a good answer it had just found and because skipping
# the leaves in flight forced the walks wide. Both rules come from reading those runs.
#
# K = 1 is the paper's search, unchanged (the default). A parallel search is allowed to differ
# from the sequential one; it is not allowed to be worse. This notebook measures both sides.

# %% tags=["parameters"]
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
K = 4                                                  # leaves per round
N_PROMPTS = 3 if FAST else 40                         # sum questions (section 3)
SEEDS = [SEED] if FAST else [SEED, SEED + 1]
ACCURACIES = [1.0] if FAST else [0.6, 0.8, 1.0]       # simulated judge accuracy p
MAX_NEW_TOKENS = 7 if FAST else 17                    # commits of 1, 2, 4 (and 10) tokens

# %%
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.embed import load_embedder
from raintools.views.analysis import SumTruth, notebook_config, paired_quality, simulated_judge_runs
from raintools.views.notebooks import figures_dir
from raintools.views.plots import plot_parallel_quality, save_figure

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 60)
lm = rt.load_model(MODEL, device=DEVICE)
embedder = load_embedder()
cfg = notebook_config(lm, max_new_tokens=MAX_NEW_TOKENS, seed=SEED)
truth = SumTruth.make(n=N_PROMPTS, seed=SEED)

# %% [markdown]
# ## 1. One search, sequential and in rounds
#
# The task, as in notebook 05: sums of two numbers, checked by arithmetic. The judge is a
# clearly labelled **simulated** judge that knows the right sum and is right with probability
# 0.9 (`rt.SimulatedJudge`); it costs no forward pass, so every pass counted below is the
# search's own.

# %%
prompt = truth.prompts[0]
judge = rt.SimulatedJudge(truth, accuracy=0.9, seed=SEED)
results = {k: rt.rain_generate(lm, prompt, cfg.replace(parallel_simulations=k), evaluator=judge,
                               embedder=embedder) for k in (1, K)}
cols = ["simulations", "rounds", "forward_calls", "tokens_computed", "early_stops", "wall_time_s"]
table = pd.DataFrame({f"K = {k}": {c: r.stats[c] for c in cols} for k, r in results.items()}).T
table["passes per simulation"] = table.forward_calls / table.simulations
print(prompt)
table.assign(answer=[r.text for r in results.values()]).round(2)

# %% [markdown]
# With K = 1 every simulation is its own round. With K = 4 a round holds up to four simulations
# and its passes serve all of them, so the passes per simulation fall. The answers may differ:
# the two searches visit different leaves.
#
# ## 2. Inside a round
#
# The trace records each simulation's round. Below, the simulations of one round of the K = 4
# search: the leaves it selected (different ones: a walk into a leaf already in flight is
# dropped), the text each judged and the value backed up, in order.

# %%
trace = results[K].trace
sims = pd.DataFrame([dict(round=s.round, simulation=s.index, depth=len(s.path) - 1, leaf=s.leaf,
                          judged=s.evaluated_text, value=s.value, memo_hit=s.memo_hit)
                     for s in trace.simulations])
full_rounds = sims.groupby("round").filter(lambda g: len(g) == K)
example = full_rounds["round"].iloc[len(full_rounds) // 2] if len(full_rounds) else sims["round"].iloc[-1]
sims[sims["round"] == example]

# %% [markdown]
# How many simulations each round held: the first round of a fresh root holds one (the root is
# the only leaf), later rounds up to K, fewer where walks ran into leaves in flight or where
# half of the step's budget left is less than K; a step that spends its whole budget ends with a
# round of one.

# %%
sims.groupby("round").size().value_counts().rename_axis("simulations in the round").to_frame("rounds")

# %% [markdown]
# ## 3. Quality at equal simulation budget
#
# Now the question that matters: does searching in rounds find answers as good as the
# sequential search? We run both on every sum question, with the same configuration and
# budget, under simulated judges right with probability p, for two seeds (the seed keys the
# search's draws and the judge's coin). A response is good when it states the sum and no other
# result (`SumTruth`, notebook 05). The comparison is **paired**: the same question, seed and
# judge for K = 1 and K = 4.
#
# > **A simulation of judge quality**, not a result about any model: the judge is simulated and
# > the task is arithmetic. It tests the *search*.

# %%
runs = simulated_judge_runs(lm, truth, ACCURACIES, cfg, seeds=SEEDS, ks=(1, K), embedder=embedder,
                            progress=True)
summary = paired_quality(runs, a=K, b=1)
summary.round(3)

# %%
axes = plot_parallel_quality(summary, a=K, b=1, margin=0.05)
save_figure(axes[0].figure, "11_parallel_quality", summary)
runs.to_csv(figures_dir() / "11_parallel_quality_runs.csv", index=False)

# %% [markdown]
# Each point on the left is a share of good answers with its 95% Wilson interval; on the right,
# the paired difference K = 4 minus K = 1 with a 95% bootstrap interval that resamples questions
# (the two seeds of a question stay together). The bar to clear: the difference must not fall
# below -0.05. The verdict, computed from the table:

# %%
worst = summary.loc[summary.difference.idxmin()]
print(f"lowest difference {worst.difference:+.3f} at p = {worst.p:g} "
      f"(95% interval {worst.difference_lo:+.3f} to {worst.difference_hi:+.3f})")
print("point estimates not below -0.05 at every p:", bool((summary.difference >= -0.05).all()))
print("interval lower bounds not below -0.05 at every p:", bool((summary.difference_lo >= -0.05).all()))

# %% [markdown]
# ## 4. What the rounds save
#
# The same runs, counted: sequential forward passes per simulation and per answer. (On this CPU
# a pass over many tokens costs more than a pass over a few, so the wall-time gain is smaller than
# the pass count suggests; `bench/rain_speed.py` measures it, and `bench/gpu_check.py` on a GPU.)

# %%
cost = runs.groupby("k")[["simulations", "rounds", "forward_calls", "early_stops"]].mean()
cost["passes per simulation"] = cost.forward_calls / cost.simulations
cost.round(2)

# %% [markdown]
# ## Reading the result
#
# * In rounds of K = 4 the search needs far fewer sequential passes per simulation (section 4):
#   the rounds' passes serve several leaves at once.
# * The virtual loss spreads a round over several branches, so a parallel search explores a
#   little more widely than the sequential one; the two rules above (a round ends where the
#   search needs results still in flight; a step's last simulations run in small rounds) keep
#   it close to the sequential order where that order matters most.
# * Those rules cost passes: the saving per simulation is well below 1/K, and at this notebook's
#   small CPU budget (8 simulations per step) it is modest. With the paper's budget (50 per step)
#   most rounds are full (`bench/rain_speed.py`).
# * The quality comparison is in the figure and the verdict above, with its intervals; read it
#   there rather than here (fast mode runs three questions, far too few to conclude anything).
# * This is a simulated judge on arithmetic: it tests the search, not any model's judgement. On a
#   GPU with a big model, rerun this notebook before trusting K > 1 for a new task.
