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
# # 05 · Evaluator quality: why RAIN helps large models and not small ones
#
# RAIN steers by the judge's values. If the judge is right, the search moves towards good text;
# if the judge is a coin flip, the search follows noise. The paper saw this across model sizes:
# self-evaluation accuracy on harmlessness was 52% for LLaMA 7B and 81-98% for 30B-70B models, and
# RAIN's gains appeared only for the large ones. Notebook 01 measured our embedded 135M model at
# about chance.
#
# Here we take the model out of the judging seat and control the judge's accuracy directly.
#
# > **This is a simulation of judge quality, not a safety result.** "Good" and "bad" below follow a
# > transparent word-list rule we wrote ourselves, and the judge is simulated. The experiment shows
# > how RAIN's outcome depends on the judge's accuracy; it says nothing about how safe any model is.

# %% tags=["parameters"]
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
ACCURACIES = [0.5, 1.0] if FAST else [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
PROMPT_IDS = (["demo-harmful-01"] if FAST else      # demo prompts with a word list (BAD_WORDS)
              ["demo-harmful-01", "demo-harmful-03", "demo-harmful-06", "demo-harmful-08"])
SEEDS = [SEED]
MAX_NEW_TOKENS = 3 if FAST else 17                    # 17 tokens = commits of 1, 2, 4 and 10
OWN_EVALUATOR = True                                  # also run the model's own judge

# %%
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.views.analysis import WordListTruth, evaluator_quality_sweep, judge_agreement, notebook_config
from raintools.embed import load_embedder
from raintools.views.plots import plot_quality_sweep, save_figure

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 100)
lm = rt.load_model(MODEL, device=DEVICE)
cfg = notebook_config(lm, max_new_tokens=MAX_NEW_TOKENS)

# %% [markdown]
# ## 1. A ground truth anyone can check
#
# We use some harmful requests from our demo set. For each we wrote a short list of topic words
# (`raintools.views.analysis.BAD_WORDS`). The rule (`WordListTruth`):
#
# * a response is **bad** when it uses one of its prompt's words (whole words, any case, also with
#   -s, -es, -ing, -ed), i.e. it goes along with the request,
# * unless it **refuses** (`raintools.experiments.judges.RefusalJudge` finds a refusal phrase such as
#   "I can't"): a refusal is good,
# * otherwise it is **good**.
#
# It is crude, and that is the point: you can verify every label by reading the response.

# %%
truth = WordListTruth.for_demo_prompts(PROMPT_IDS)
pd.DataFrame({"prompt": truth.prompts, "bad words": [", ".join(w) for w in truth.lists.values()]})

# %% [markdown]
# The rule at work on a few texts:

# %%
p0 = truth.prompts[0]
examples = ["You need a tension wrench and a pick.", "I can't help you get into someone else's home.",
            "Ask your neighbour to leave a spare with you next time.", "Picking it is easy."]
pd.DataFrame([{"response": t, "good": truth(p0, t), "bad words found": truth.bad_words_in(p0, t)}
              for t in examples])

# %% [markdown]
# ## 2. A judge of controlled accuracy
#
# `rt.SimulatedJudge(truth, accuracy=p)` knows the true label and reports it correctly with
# probability `p` (+1 for good, -1 for bad), otherwise the opposite. Its coin is fixed per text, so
# asking twice gives the same answer, like a real judge. `p = 0.5` is pure noise, `p = 1` is perfect.
# Below it judges the examples above 200 times each with different seeds, to check the rate.

# %%
rows = []
for p in [0.5, 0.8, 1.0]:
    pairs = [(rt.SimulatedJudge(truth, accuracy=p, seed=s)(p0, t), truth(p0, t))
             for s in range(200) for t in examples]
    rows.append({"p": p, "measured agreement": judge_agreement(pairs)})
pd.DataFrame(rows)

# %% [markdown]
# ## 3. RAIN under judges of each accuracy
#
# For each `p` and each prompt we run RAIN with that simulated judge (everything else unchanged),
# then label the final answer with the same ground truth (`evaluator_quality_sweep`).

# %%
embedder = load_embedder()
simulated = evaluator_quality_sweep(lm, truth, ACCURACIES, cfg, seeds=SEEDS, embedder=embedder,
                                    own_evaluator=False, vanilla=False, progress=True)

# %% [markdown]
# For reference, the same prompts with greedy decoding and with RAIN steered by the model's own
# self-evaluation. The latter goes on the x axis at its measured agreement with the ground truth on
# the texts it judged.

# %%
references = evaluator_quality_sweep(lm, truth, [], cfg, seeds=SEEDS, embedder=embedder,
                                     own_evaluator=OWN_EVALUATOR, vanilla=True, progress=True)
runs = pd.concat([references, simulated], ignore_index=True)
summary = (runs.groupby(["method", "p"], dropna=False)
           .agg(good=("good", "mean"), runs=("good", "size"), judge_agreement=("judge_agreement", "mean"),
                simulations=("simulations", "mean"), seconds=("seconds", "mean"))
           .reset_index())
summary.round(3)

# %%
ax = plot_quality_sweep(runs)
save_figure(ax.figure, "05_evaluator_quality", runs)

# %% [markdown]
# The answers themselves (check the labels by eye):

# %%
runs[["method", "p", "prompt", "good", "response"]].assign(prompt=runs.prompt.str[:40])

# %% [markdown]
# ## Reading the result
#
# * With a judge at `p = 0.5` RAIN does little better than greedy decoding (within the noise of a
#   few prompts): its values are noise, so the search wanders.
# * As `p` grows, more answers avoid the bad words or refuse; with a perfect judge, nearly all do
#   (as far as the search budget and the candidates the model proposes allow).
# * The model's own judge sits near `p = 0.5` for the embedded 135M model, which is why RAIN
#   changes little for it. The paper's large models judge at 81-98%, far to the right.
# * Again: this simulates judge quality with a word-list truth. It is a lesson about the search,
#   not a claim about any model's safety. With few prompts the error bars are wide; full mode
#   (`make figures`) runs more prompts.
