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
# 3. continue review openings with vanilla decoding and with RAIN, steered by the model's own
#    evaluator and by a clearly labelled *simulated* judge of known accuracy, and score every
#    continuation offline (VADER),
# 4. draw our numbers beside the paper's.
#
# Everything goes through the `sentiment` task (`raintools.experiments.tasks`), the same object the
# evaluation runner uses: `python -m raintools eval --task sentiment --data imdb ...`.

# %% [markdown]
# Parameters come from the environment (RAINTOOLS_FAST, RAINTOOLS_MODEL, RAINTOOLS_DEVICE,
# RAINTOOLS_SEED), so the same notebook runs on a laptop and on a big model on a GPU. The search
# budget is CPU-sized: the rules are the paper's, only the number of tries is smaller.

# %% tags=["parameters"]
from raintools.views import studies as st
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
N_ITEMS = 2 if FAST else 40         # openings per arm, half from negative reviews (40: CI within +-0.15)
N_CHECK = 4 if FAST else 40         # labelled reviews for the self-evaluation check (half positive)
MAX_NEW_TOKENS = 3 if FAST else 7   # 7 tokens = three commits of 1, 2 and 4 tokens
ACCURACY = 0.9                      # the simulated judge is right with this probability
BUDGET = st.cpu_budget(FAST)

# %%
import pandas as pd
import seaborn as sns

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 90)

# %%
import raintools as rt
from raintools.embed import load_embedder
from raintools.evaluate import load_template
from raintools.experiments.judges import SentimentJudge
from raintools.experiments.tasks import PAPER_IMDB, get_task
from raintools.views import study_plots as sp
from raintools.views.plots import save_figure

# %% [markdown]
# ## 1. The task, its data and its prompt
#
# The data give the first 8 words of each review (`raintools.experiments.data.load_imdb`). A chat
# model needs a request, so `task.prompt(item)` wraps the opening in one (our wording). The
# self-evaluator and the offline judge read the *review*: `task.judge_query(prompt)` gives the
# opening back, and the continuation follows it. (For a base model, load it with
# `ChatFormat(kind="plain")`; the same request then goes into a Human:/Assistant: frame.)

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

# %%
lm = rt.load_model(MODEL, device=DEVICE)
embedder = load_embedder()
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
# ones (AUC: the chance that a positive review scores above a negative one; 0.5 is chance; 95%
# bootstrap interval). We use the *soft* score (the margin p(positive) - p(negative)) so near-ties
# are still ordered. VADER, the offline scorer used below, scores the same texts as a yardstick.

# %%
vader = SentimentJudge()
check = st.review_check(task.evaluator(lm, mode="soft"), task, positive[1: 1 + N_CHECK // 2]
                        + negative[1: 1 + N_CHECK // 2], scorer=vader.score)
is_pos = check.label == "positive"
auc_self = st.auc_interval(check.self_eval[is_pos], check.self_eval[~is_pos])
auc_vader = st.auc_interval(check.scorer[is_pos], check.scorer[~is_pos])
print(f"{len(check)} reviews: AUC self-evaluation {auc_self[0]:.2f} (95% CI {auc_self[1]:.2f}-"
      f"{auc_self[2]:.2f}), VADER {auc_vader[0]:.2f} ({auc_vader[1]:.2f}-{auc_vader[2]:.2f}); chance 0.50")
check.groupby("label")[["self_eval", "scorer"]].mean()

# %% [markdown]
# ## 4. Vanilla vs RAIN, with two judges
#
# Openings come from negative and positive reviews alike (a negative opening is the harder case).
# Every arm continues the same openings with the same length budget:
#
# * **vanilla**: greedy decoding;
# * **RAIN, own evaluator**: RAIN steered by the model's own sentiment self-evaluation (the
#   paper's method), with the task's constants (`RainConfig.sentiment()`) and a CPU-sized budget;
# * **RAIN, simulated judge**: the same search steered by a *simulated* judge (`rt.SimulatedJudge`)
#   that knows the scoring rule below and reports it correctly with probability p. It shows what
#   the search does with an informative judge; it is not the model judging itself.
#
# The scoring rule, for every arm (`studies.SentimentTruth`, the task's `SentimentJudge`): a
# continuation is **positive** when VADER's compound score of the continuation alone is above 0.
# VADER is a lexicon-and-rules scorer that runs offline and gives the same score everywhere; the
# paper used a trained classifier, so this is a consistent yardstick, not the same metric.

# %%
items = negative[: (N_ITEMS + 1) // 2] + positive[: N_ITEMS // 2]
cfg = task.preset(max_new_tokens=MAX_NEW_TOKENS, seed=SEED, **BUDGET)
runs = st.task_study(lm, task, items, cfg, st.SentimentTruth(), ACCURACY, embedder=embedder)
summary, diffs = st.task_study_tables(runs)
for _, row in diffs.iterrows():
    print(st.describe_difference(row, what="positive continuations"))
summary.round(3)

# %% [markdown]
# The continuations (first openings), with VADER's score:

# %%
runs["vader"] = [vader.score(t) if t.strip() else 0.0 for t in runs.response]
wide = runs.pivot(index="id", columns="arm", values="response")
wide.join(runs[runs.arm == "vanilla"].set_index("id")[["prompt"]]).join(
    runs.pivot(index="id", columns="arm", values="vader").add_prefix("vader: ").round(2)).head(8)

# %% [markdown]
# ## 5. Our numbers beside the paper's
#
# Left: what the paper reports for three 7B models (a trained classifier; other models, so its own
# panel). Then what we measured: the share of positive continuations per arm (Wilson 95%
# intervals), the paired differences between arms on the same openings (Newcombe 95% intervals;
# solid when the interval excludes zero), and the self-evaluation check of section 3.

# %%
fig = sp.plot_task_study(
    pd.DataFrame(PAPER_IMDB), summary, diffs,
    dict(value=auc_self[0], lo=auc_self[1], hi=auc_self[2], chance=0.5, ylabel="AUC", label="AUC"),
    titles=["The paper (reported): IMDB, three 7B models\n% positive continuations",
            f"Measured: {lm.name}, n={N_ITEMS} openings\npositive by VADER",
            f"Paired differences (simulated judge: p = {ACCURACY})",
            f"Self-evaluation check\n({len(check)} reviews)"],
    fig_title="IMDB sentiment: the paper's numbers (left) and ours; different models and judges",
    what="positive continuations")
save_figure(fig, "10_sentiment", pd.concat([pd.DataFrame(PAPER_IMDB).assign(source="paper"),
                                            summary.assign(source="measured"), diffs], ignore_index=True))

# %% [markdown]
# ## What to take away
#
# * One template file turns the same search into a sentiment steerer: the question the model asks
#   itself is the only thing that changes. A third option ("neutral") is handled by the evaluator
#   (a neutral vote counts 0).
# * RAIN can only move towards what its judge sees. Section 3 measured how well the embedded
#   model's own judge separates positive from negative reviews, and section 4 what RAIN did with
#   it and with a simulated judge of accuracy p; the printed differences say which of them, here,
#   changed the share of positive continuations by more than the noise.
# * The paper's gains (about +20 points positive) were measured with 7B models. To see that
#   regime, run this notebook with `RAINTOOLS_MODEL=<a 7B model>` and `RAINTOOLS_DEVICE=cuda`, or
#   the runner: `python -m raintools eval --task sentiment --data imdb --methods vanilla,rain`.
