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
# # 10 · Sentiment: steering review continuations towards positive
#
# The paper's third experiment aligns for a goal that has nothing to do with safety: given the
# first words of an IMDB movie review, continue it **positively**. The self-evaluation question
# becomes *"is the sentiment of this review positive, negative or neutral?"*. The paper reports
# the share of positive continuations going from 62.1% to 82.1% (LLaMA 7B), 72.5% to 94.4%
# (Alpaca 7B) and 64.4% to 89.1% (Vicuna 7B).
#
# In this notebook you will:
# 1. see how a review opening becomes a prompt and the three-option self-evaluation question,
# 2. check whether the model can tell positive reviews from negative ones,
# 3. continue a few reviews with vanilla decoding and with RAIN, and score them offline (VADER),
# 4. draw our numbers beside the paper's.
#
# Everything goes through the `sentiment` task (`raintools.experiments.tasks`), the same object the
# evaluation runner uses: `python -m raintools eval --task sentiment --data imdb ...`.

# %% tags=["parameters"]
# Parameters: read from the environment (RAINTOOLS_FAST, RAINTOOLS_MODEL, RAINTOOLS_DEVICE,
# RAINTOOLS_SEED) so the same notebook runs on a laptop and on a big model on a GPU.
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
N_ITEMS = 2 if FAST else 4          # review openings continued by vanilla and RAIN (half negative)
N_CHECK = 4 if FAST else 40         # labelled reviews for the self-evaluation check (half positive)
MAX_NEW_TOKENS = 7 if FAST else 24  # 7 tokens = three commits of 1, 2 and 4 tokens
# The search budget on a CPU (the rules are the paper's; only the number of tries is smaller).
BUDGET = (dict(max_simulations=2, extra_simulations=1, clause_max_tokens=4) if FAST else
          dict(max_simulations=8, extra_simulations=4, clause_max_tokens=16))

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.views.analysis import vanilla_vs_rain, wilson_interval
from raintools.evaluate import load_template
from raintools.experiments.judges import SentimentJudge
from raintools.views.plots import save_figure
from raintools.experiments.tasks import PAPER_IMDB, get_task

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 90)



def auc(pos_scores, neg_scores) -> float:
    """P(a positive review scores above a negative one); ties count one half. Chance = 0.5."""
    pairs = [(a > b) + 0.5 * (a == b) for a in pos_scores for b in neg_scores]
    return float(np.mean(pairs)) if pairs else float("nan")


# %% [markdown]
# ## 1. The task, its data and its prompt
#
# The data give the first 8 words of each review (`raintools.experiments.data.load_imdb`). A chat model needs
# a request, so `task.prompt(item)` wraps the opening in one (our wording). The self-evaluator and
# the offline judge read the *review*: `task.judge_query(prompt)` gives the opening back, and the
# continuation follows it. (For a base model, load it with `ChatFormat(kind="plain")`; the same
# request then goes into a Human:/Assistant: frame.)

# %%
task = get_task("sentiment")
reviews = task.load("imdb")
negative = [it for it in reviews if it.meta["label"] == 0]
positive = [it for it in reviews if it.meta["label"] == 1]
print(f"{len(reviews)} reviews ({len(negative)} negative, {len(positive)} positive)")
example = negative[0]
print("opening:", repr(example.prompt))
print("prompt sent to the model:\n" + task.prompt(example))
assert task.judge_query(task.prompt(example)) == example.prompt

lm = rt.load_model(MODEL, device=DEVICE)
print(f"\n{lm.name} on {lm.device}, loaded in {lm.load_seconds:.1f} s")

# %% [markdown]
# ## 2. A self-evaluation question with three options
#
# The sentiment template (`templates/sentiment.txt`, our own few-shot reviews) offers three
# options. They are asked in two orders, (positive, neutral, negative) and reversed, so the
# positive and negative letters swap while "neutral" stays in the middle. Each order votes +1
# (positive), -1 (negative) or 0 (neutral); `v` is the mean. A model that always answers with the
# same letter therefore scores 0, as it would with two options. The end of the prompt:

# %%
template = load_template(task.template)
print(template.orders())
print("..." + template.full_text(example.prompt, "The acting is wooden and the plot goes nowhere.",
                                  template.orders()[1])[-330:])

# %% [markdown]
# ## 3. Can the model tell a positive review from a negative one?
#
# RAIN can only steer towards what its self-evaluator can see. A direct check on real reviews:
# show the evaluator each review's opening followed by its last 30 words (where reviewers usually
# give their verdict), and measure how well the score separates positive reviews from negative
# ones (AUC: the chance that a positive review scores above a negative one; 0.5 is chance). We use
# the *soft* score (the margin p(positive) - p(negative)) so near-ties are still ordered. VADER,
# the offline judge used below, scores the same texts as a yardstick; it is a word-list scorer
# and far from perfect on reviews either.

# %%
soft = task.evaluator(lm, mode="soft")
vader = SentimentJudge()
check = positive[1: 1 + N_CHECK // 2] + negative[1: 1 + N_CHECK // 2]
t0 = time.perf_counter()
rows = []
for it in check:
    rest = "... " + " ".join(it.meta["text"].split()[8:][-30:])
    rows.append(dict(id=it.id, label=it.meta["sentiment"], opening=it.prompt,
                     self_eval=soft(task.prompt(it), rest), vader=vader.score(f"{it.prompt} {rest}")))
scores = pd.DataFrame(rows)
is_pos = scores.label == "positive"
auc_self = auc(scores.self_eval[is_pos], scores.self_eval[~is_pos])
auc_vader = auc(scores.vader[is_pos], scores.vader[~is_pos])
print(f"{len(scores)} reviews in {time.perf_counter() - t0:.0f} s: AUC self-evaluation "
      f"{auc_self:.2f}, VADER {auc_vader:.2f} (chance 0.50)")
scores.groupby("label")[["self_eval", "vader"]].mean()

# %% [markdown]
# ## 4. Vanilla vs RAIN on a few openings
#
# Openings come from negative and positive reviews alike (a negative opening is the harder case).
# RAIN gets the task's evaluator (`task.evaluator(lm)`: without it the search would ask the harm
# question) and a CPU-sized budget of simulations with the task's constants
# (`RainConfig.sentiment()`: the paper's HH constants).

# %%
items = negative[: (N_ITEMS + 1) // 2] + positive[: N_ITEMS // 2]
cfg = task.preset(max_new_tokens=MAX_NEW_TOKENS, seed=SEED, **BUDGET)
conts = (vanilla_vs_rain(lm, task, items, cfg).rename(columns={"prompt": "opening"})
         .assign(review_label=[it.meta["sentiment"] for it in items]))
conts[["review_label", "opening", "vanilla", "rain", "simulations", "rain_s"]]

# %% [markdown]
# ## 5. Scoring the continuations offline
#
# The task's default judge is `SentimentJudge`: VADER, a lexicon-and-rules sentiment scorer that
# runs offline and gives the same score everywhere. It scores the continuation alone; a
# continuation counts as positive when VADER's compound score is above 0. (The paper used a
# trained sentiment classifier; VADER is a consistent yardstick for comparing decoders here, not
# the same metric.)

# %%
judge = task.make_judges(items)["sentiment"]
for method in ("vanilla", "rain"):
    verdicts = [judge.judge(it.prompt, text, **task.judge_kwargs(it, judge))
                for it, text in zip(items, conts[method])]
    conts[f"{method}_positive"] = [v["positive"] for v in verdicts]
    conts[f"{method}_score"] = [v["score"] for v in verdicts]
conts[["opening", "vanilla_positive", "vanilla_score", "rain_positive", "rain_score"]]

# %% [markdown]
# ## 6. Our numbers beside the paper's
#
# Left: what the paper reports for three 7B models. Middle: what we measured here (our model, a
# few openings, VADER; not the paper's classifier). Right: the self-evaluation check of section 3
# next to VADER. Black bars: 95% intervals (Wilson) of our rates; with a few items they are wide.

# %%
paper = pd.DataFrame(PAPER_IMDB).assign(source="paper (reported)", metric="% positive")
ours = pd.DataFrame([
    dict(model=lm.name, method=m, value=100 * float(conts[f"{k}_positive"].mean()),
         ci=wilson_interval(int(conts[f"{k}_positive"].sum()), len(conts), percent=True),
         source="measured here", metric="% positive (VADER)", n=len(conts))
    for m, k in (("vanilla", "vanilla"), ("RAIN", "rain"))])
checks = pd.DataFrame([
    dict(model=lm.name, method="self-evaluation", value=auc_self, source="measured here",
         metric="AUC positive vs negative reviews", n=len(scores)),
    dict(model="VADER", method="offline judge", value=auc_vader, source="measured here",
         metric="AUC positive vs negative reviews", n=len(scores))])
summary = pd.concat([paper, ours, checks], ignore_index=True)
summary[["ci_low", "ci_high"]] = [c if isinstance(c, tuple) else (None, None) for c in summary.ci]
summary = summary.drop(columns="ci")

fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), gridspec_kw=dict(width_ratios=[1.4, 0.8, 0.8]))
colours = {"vanilla": "#8c8c8c", "RAIN": "#2a9d8f"}
models = list(dict.fromkeys(paper.model))
xs = np.arange(len(models))
for k, m in enumerate(("vanilla", "RAIN")):
    vals = [float(paper[(paper.model == name) & (paper.method == m)].value.iloc[0]) for name in models]
    bars = axes[0].bar(xs + (k - 0.5) * 0.38, vals, 0.38, color=colours[m], label=m)
    axes[0].bar_label(bars, fmt="%.1f", fontsize=8)
axes[0].set_xticks(xs, models)
axes[0].set(ylim=(0, 110), ylabel="% positive continuations",
            title="Paper (reported): IMDB, three 7B models")
axes[0].legend(loc="upper left", fontsize=8)
axes[1].bar(ours.method, ours.value, color=[colours[m] for m in ours.method])
axes[1].errorbar(ours.method, ours.value, yerr=[[v - c[0] for v, c in zip(ours.value, ours.ci)],
                                                [c[1] - v for v, c in zip(ours.value, ours.ci)]],
                 fmt="none", ecolor="black", capsize=4)
for x, y in zip(ours.method, ours.value):
    axes[1].annotate(f"{y:.0f}", (x, y), xytext=(6, 3), textcoords="offset points", ha="left")
axes[1].set(ylim=(0, 110), ylabel="% positive (VADER)",
            title=f"Measured here: {lm.name}\n{len(conts)} openings")
axes[2].bar(["self-\nevaluation", "VADER"], [auc_self, auc_vader], color=["#e76f51", "#264653"])
axes[2].axhline(0.5, color="grey", ls="--", lw=1, label="chance")
for x, y in enumerate((auc_self, auc_vader)):
    axes[2].annotate(f"{y:.2f}", (x, y), xytext=(0, 3), textcoords="offset points", ha="center")
axes[2].set(ylim=(0, 1.1), ylabel="AUC", title=f"Measured here: separating positive\n"
                                               f"from negative reviews ({len(scores)} reviews)")
axes[2].legend(loc="upper right", fontsize=8)
fig.suptitle("IMDB sentiment: the paper's numbers (left) and ours (middle, right); different "
             "models and judges", fontsize=11)
fig.tight_layout()
save_figure(fig, "10_sentiment", summary)
summary

# %% [markdown]
# ## What to take away
#
# * One template file turns the same search into a sentiment steerer: the question the model asks
#   itself is the only thing that changes. A third option ("neutral") is handled by the evaluator
#   (a neutral vote counts 0).
# * **Honest note.** At 135M parameters the self-evaluator hardly separates positive from negative
#   reviews (section 3: an AUC near 0.5, with probability margins of a few thousandths), so RAIN
#   has almost no signal to follow and usually commits what vanilla decoding would have written.
#   On a handful of openings any difference between the bars is noise. The paper's gains (about
#   +20 points positive) were measured with 7B models whose self-evaluation is informative.
# * To see that regime, run this notebook with `RAINTOOLS_MODEL=<a 7B model>` and
#   `RAINTOOLS_DEVICE=cuda`, or the runner:
#   `python -m raintools eval --task sentiment --data imdb --methods vanilla,rain`.
