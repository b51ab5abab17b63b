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
# (Alpaca 7B) and 64.4% to 89.1% (Vicuna 7B) (reported, not measured here: the `paper` rows of
# `figures/10_sentiment.csv`).
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
# The sentiment template (`raintools/templates/sentiment.txt`, our own few-shot reviews) offers
# three options. They are asked in two orders, (positive, neutral, negative) and reversed, so the
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
# ones (AUC: the chance that a positive review scores above a negative one, a tie counting one
# half; 0.5 is chance; 95% bootstrap interval). The check uses the evaluator **exactly as RAIN runs
# it** (`cfg.eval_mode`, the paper's votes: each order votes +1, 0 or -1 and `v` is their mean), and
# counts the reviews it gives no verdict (`v = 0`, a tie). VADER, the offline scorer used below,
# scores the same texts as a yardstick.

# %%
cfg = task.preset(max_new_tokens=MAX_NEW_TOKENS, seed=SEED, **BUDGET)
vader = SentimentJudge()
check = st.review_check(task.evaluator(lm, mode=cfg.eval_mode), task, positive[1: 1 + N_CHECK // 2]
                        + negative[1: 1 + N_CHECK // 2], scorer=vader.score)
is_pos = check.label == "positive"
n_ties = int((check.self_eval == 0).sum())
auc_self = st.auc_interval(check.self_eval[is_pos], check.self_eval[~is_pos])
auc_vader = st.auc_interval(check.scorer[is_pos], check.scorer[~is_pos])
print(f"{len(check)} reviews, evaluator mode {cfg.eval_mode!r} (what RAIN uses): AUC self-evaluation "
      f"{auc_self[0]:.2f} (95% CI {auc_self[1]:.2f}-{auc_self[2]:.2f}), no verdict (v = 0) on {n_ties} of "
      f"{len(check)}; values given: {check.self_eval.value_counts().sort_index().to_dict()}. VADER AUC "
      f"{auc_vader[0]:.2f} ({auc_vader[1]:.2f}-{auc_vader[2]:.2f}); chance 0.50")
check.groupby("label")[["self_eval", "scorer"]].mean()

# %% [markdown]
# ## 4. Vanilla vs RAIN, with two judges
#
# Openings come from negative and positive reviews alike (a negative opening asks more of the
# search: its continuation has to turn the review around).
# Every arm continues the same openings with the same length budget:
#
# * **vanilla**: greedy decoding;
# * **RAIN, own evaluator**: RAIN steered by the model's own sentiment self-evaluation (the
#   paper's method), with the task's constants (`RainConfig.sentiment()`) and a CPU-sized budget;
# * **RAIN, simulated judge**: the same search steered by a *simulated* judge (`rt.SimulatedJudge`)
#   that knows the scoring rule below and reports it correctly with probability p. It shows what
#   the search does with an informative judge; it is not the model judging itself. Its arm is
#   scored by the very rule it knows, and it computes more tokens than vanilla (the summary's
#   `mean_tokens_computed`): its difference from vanilla says the search follows an informative
#   judge, not that RAIN beats a decoder of equal cost (notebook 06 compares at equal cost).
#
# The scoring rule, for every arm (`studies.SentimentTruth`, the task's `SentimentJudge`): a
# continuation is **positive** when VADER's compound score of the continuation alone is above 0.
# VADER is a lexicon-and-rules scorer that runs offline and gives the same score everywhere; the
# paper used a trained classifier, so this is a consistent yardstick, not the same metric.

# %%
items = negative[: (N_ITEMS + 1) // 2] + positive[: N_ITEMS // 2]
runs = st.task_study(lm, task, items, cfg, st.SentimentTruth(), ACCURACY, embedder=embedder)
summary, diffs = st.task_study_tables(runs)
for _, row in diffs.iterrows():
    print(st.describe_difference(row, what="positive continuations"))
summary.round(3)

# %% [markdown]
# **How far to trust VADER.** VADER is a word list with rules; it misreads text (a positive
# opening can score negative). Its error rate, measured on the labelled review endings of
# section 3 (the last 30 words alone, as the rule reads a continuation alone: positive when the
# compound score is above 0):

# %%
vader_pos = check.ending.map(vader.score) > 0
vader_errors = int((vader_pos != is_pos).sum())
v_lo, v_hi = st.wilson_interval(vader_errors, len(check))
print(f"VADER's rule misjudges {vader_errors} of {len(check)} labelled review endings "
      f"({100 * vader_errors / len(check):.0f}%, 95% CI {100 * v_lo:.0f}-{100 * v_hi:.0f}%): positive "
      f"reviews called not positive {int((~vader_pos & is_pos).sum())}, negative called positive "
      f"{int((vader_pos & ~is_pos).sum())}")

# %% [markdown]
# A rate of positive continuations below carries this error on top of its sampling interval; a
# difference between two arms on the same openings is scored by the same rule, but a single
# continuation's label can be wrong: read the continuations and their scores.
#
# **Why the own-evaluator arm can equal vanilla.** RAIN's own-evaluator arm searches with the
# votes of section 3. Every value the search received, and how its continuations compare with
# vanilla's:

# %%
own_arm = runs[runs.arm == "RAIN, own evaluator"]
same = (own_arm.set_index("id").response == runs[runs.arm == "vanilla"].set_index("id").response)
print(f"RAIN, own evaluator: {int(own_arm.judge_ties.sum())} of {int(own_arm.judge_judgements.sum())} "
      f"values the search received were ties (0); its continuation equals vanilla's on {int(same.sum())} "
      f"of {len(same)} openings")

# %% [markdown]
# When every value is 0, every candidate's mean value stays 0: the selection score is then the
# exploration term alone, which sends visits in the order of the candidates' priors, and the
# commit takes the most visited candidate, the one of highest prior. That is the greedy
# continuation or close to it, so the search commits what vanilla decoding writes, or nearly:
# no value, no steering. Nearly, because at the longer levels the greedy rollout (best token by
# token) need not be the candidate of highest prior; the line above counts the answers that
# equal vanilla's (in the committed full runs: 39 of 40 in notebook 09, 40 of 40 in 10, every
# value 0 in both: `figures/notebooks/09_truthfulness.html`, `figures/notebooks/10_sentiment.html`).

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
# intervals; VADER's error rate on labelled endings in the panel's title), the paired differences
# between arms on the same openings (Newcombe 95% intervals; solid when the interval excludes
# zero), and the self-evaluation check of section 3 (the AUC as a point with its interval beside
# chance, not a bar from 0).

# %%
fig = sp.plot_task_study(
    pd.DataFrame(PAPER_IMDB), summary, diffs,
    dict(value=auc_self[0], lo=auc_self[1], hi=auc_self[2], chance=0.5, ylabel="AUC", label="AUC",
         note=f"no verdict: {n_ties} of {len(check)}\n(mode: {cfg.eval_mode})"),
    titles=["The paper (reported): IMDB, three 7B models\n% positive continuations",
            f"Measured: {lm.name}, n={N_ITEMS} openings\npositive by VADER (errs on "
            f"{100 * vader_errors / len(check):.0f}% of labelled endings)",
            f"Paired differences (simulated judge: p = {ACCURACY})",
            f"Self-evaluation check, as RAIN\nruns it ({len(check)} reviews)"],
    fig_title="IMDB sentiment: the paper's numbers (left) and ours; different models and judges",
    what="positive continuations")
check_rows = pd.DataFrame([
    dict(source="self-evaluation check (AUC)", mode=cfg.eval_mode, n=len(check), ties=n_ties,
         rate=auc_self[0], lo=auc_self[1], hi=auc_self[2]),
    dict(source="VADER rule on labelled endings (error rate)", n=len(check), errors=vader_errors,
         rate=vader_errors / len(check), lo=v_lo, hi=v_hi)])
save_figure(fig, "10_sentiment", pd.concat([pd.DataFrame(PAPER_IMDB).assign(source="paper"),
                                            summary.assign(source="measured"), diffs, check_rows],
                                           ignore_index=True))

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
# * The paper's gains (+20 to +25 points positive, the `paper` rows of `figures/10_sentiment.csv`)
#   were measured with 7B models. To see that regime, run this notebook with
#   `RAINTOOLS_MODEL=<a 7B model>` and `RAINTOOLS_DEVICE=cuda`, or the runner:
#   `python -m raintools eval --task sentiment --data imdb --methods vanilla,rain`.
