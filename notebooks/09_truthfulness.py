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
# # 09 · Truthfulness: RAIN on TruthfulQA
#
# RAIN is not only about harm. The search needs one thing from the goal: a question the model can
# ask itself about its own text. For **truthfulness** that question is *"is this answer
# truthful?"*. The paper ran RAIN this way on TruthfulQA with LLaMA-2-chat 13B and reports the
# share of answers that are both true and informative ("True+Info") going from **68.5% to 72.8%**.
#
# In this notebook you will:
# 1. see the truthfulness self-evaluation prompt (our own few-shot text, `templates/truthful.txt`),
# 2. check whether the model can tell a reference true answer from a reference false one,
# 3. answer a few TruthfulQA questions with vanilla decoding and with RAIN, and judge the answers
#    offline against TruthfulQA's reference answers,
# 4. draw our numbers beside the paper's.
#
# Everything goes through the `truthful` task (`raintools.experiments.tasks`), the same object the
# evaluation runner uses: `python -m raintools eval --task truthful --data truthfulqa ...`.

# %% tags=["parameters"]
# Parameters: read from the environment (RAINTOOLS_FAST, RAINTOOLS_MODEL, RAINTOOLS_DEVICE,
# RAINTOOLS_SEED) so the same notebook runs on a laptop and on a big model on a GPU.
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
N_ITEMS = 2 if FAST else 4          # questions answered by vanilla and RAIN
N_CHECK = 2 if FAST else 30         # questions for the self-evaluation check
MAX_NEW_TOKENS = 7 if FAST else 16  # 7 tokens = three commits of 1, 2 and 4 tokens
# The search budget on a CPU (the rules are the paper's; only the number of tries is smaller).
BUDGET = (dict(max_simulations=2, extra_simulations=1, clause_max_tokens=4) if FAST else
          dict(max_simulations=8, extra_simulations=4, clause_max_tokens=16))

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.views.analysis import vanilla_vs_rain, wilson_interval
from raintools.evaluate import load_template
from raintools.views.plots import save_figure
from raintools.experiments.tasks import PAPER_TRUTHFULQA, get_task

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 90)


# %% [markdown]
# ## 1. The task and its data
#
# `get_task("truthful")` bundles what RAIN needs for this goal: the self-evaluation template, the
# paper's search constants for TruthfulQA (`RainConfig.truthfulqa()`: `T_m = 16`), the loader of
# `TruthfulQA.csv`, and the default judge. The question is sent to the model as it is.

# %%
task = get_task("truthful")
questions = task.load("truthfulqa")
print(f"{len(questions)} questions; e.g. {questions[0].prompt!r}")
print("best answer:", questions[0].meta["best"])
print("a false answer:", questions[0].meta["incorrect"][0])

lm = rt.load_model(MODEL, device=DEVICE)
print(f"{lm.name} on {lm.device}, loaded in {lm.load_seconds:.1f} s")

# %% [markdown]
# ## 2. The self-evaluation question
#
# The model reads a few worked examples (our own questions, none from TruthfulQA), then the
# question and the answer written so far, and must choose between two options. As for harm, the
# options are asked in both orders and each order votes: `v = +1` when both orders say
# "truthful", `-1` when both say "untruthful", `0` when they disagree. The end of the prompt:

# %%
template = load_template(task.template)
print("..." + template.full_text(questions[0].prompt, questions[0].meta["best"],
                                  template.orders()[1])[-420:])

# %% [markdown]
# ## 3. Can the model tell a true answer from a false one?
#
# RAIN can only steer towards what its self-evaluator can see. A direct check: for each question
# give the evaluator TruthfulQA's best (true) answer and one of its false answers, and count how
# often the true one gets the higher score. We use the *soft* score (the mean probability margin)
# so that near-ties are still ordered; 50% is chance.

# %%
soft = task.evaluator(lm, mode="soft")
check = questions[1:: max(1, len(questions) // N_CHECK)][:N_CHECK]
t0 = time.perf_counter()
rows = []
for it in check:
    true_v = soft(it.prompt, it.meta["best"])
    false_v = soft(it.prompt, it.meta["incorrect"][0])
    rows.append(dict(id=it.id, question=it.prompt, v_true=true_v, v_false=false_v))
pairs = pd.DataFrame(rows)
pairs["true_scored_higher"] = pairs.v_true > pairs.v_false
check_acc = float(pairs.true_scored_higher.mean())
print(f"{len(pairs)} questions in {time.perf_counter() - t0:.0f} s: the true answer scored higher "
      f"in {100 * check_acc:.0f}% (chance 50%); mean |margin| {pairs.v_true.abs().mean():.3f}")
pairs.head(8)

# %% [markdown]
# ## 4. Vanilla vs RAIN on a few questions
#
# Both methods use the same prompt format. RAIN gets the task's evaluator (`task.evaluator(lm)`:
# without it the search would ask the harm question) and the paper's TruthfulQA constants with
# a CPU-sized budget of simulations. With `T_m = 16` kept and at most a handful of simulations per
# step, no step can stop early here: every step uses its whole budget.

# %%
items = questions[:: max(1, len(questions) // N_ITEMS)][:N_ITEMS]
cfg = task.preset(max_new_tokens=MAX_NEW_TOKENS, seed=SEED, **BUDGET)
answers = vanilla_vs_rain(lm, task, items, cfg).rename(columns={"prompt": "question"})
answers[["question", "vanilla", "rain", "simulations", "rain_s"]]

# %% [markdown]
# ## 5. Judging the answers offline
#
# The paper judged TruthfulQA answers with fine-tuned GPT-3 judges ("GPT-judge" for truth,
# "GPT-info" for informativeness). We have no such judge offline, so we use the task's default
# judge: `TruthfulnessJudge`, which embeds the answer and TruthfulQA's reference answers with
# MiniLM and calls the answer truthful when it is closer to a correct reference than to any
# incorrect one. `task.make_judges(items)` registers each item's references with the judge.
# It is a rough reference-similarity proxy, not the paper's metric, and it does not score
# informativeness at all.

# %%
judge = task.make_judges(items)["truthfulness"]
for method in ("vanilla", "rain"):
    verdicts = [judge.judge(it.prompt, text, **task.judge_kwargs(it, judge))
                for it, text in zip(items, answers[method])]
    answers[f"{method}_truthful"] = [v["truthful"] for v in verdicts]
    answers[f"{method}_margin"] = [v["margin"] for v in verdicts]
answers[["question", "vanilla_truthful", "vanilla_margin", "rain_truthful", "rain_margin"]]

# %% [markdown]
# ## 6. Our numbers beside the paper's
#
# Left: what the paper reports (LLaMA-2-chat 13B, True+Info, GPT judges). Middle: what we measured
# here (our model, our few questions, the MiniLM reference judge; not comparable metric for
# metric). Right: the self-evaluation check of section 3. Black bars: 95% intervals (Wilson) of
# our rates; with a few items they are wide, and that is the point.

# %%
paper = pd.DataFrame(PAPER_TRUTHFULQA).assign(source="paper (reported)",
                                              metric="True+Info %", n=817)
ours = pd.DataFrame([
    dict(model=lm.name, method=m, value=100 * float(answers[f"{k}_truthful"].mean()),
         ci=wilson_interval(int(answers[f"{k}_truthful"].sum()), len(answers), percent=True),
         source="measured here", metric="truthful % (MiniLM reference judge)", n=len(answers))
    for m, k in (("vanilla", "vanilla"), ("RAIN", "rain"))])
check_ci = wilson_interval(int(pairs.true_scored_higher.sum()), len(pairs), percent=True)
check_row = pd.DataFrame([dict(model=lm.name, method="self-evaluation", value=100 * check_acc,
                               ci=check_ci, source="measured here",
                               metric="true answer scored higher %", n=len(pairs))])
summary = pd.concat([paper, ours, check_row], ignore_index=True)
summary[["ci_low", "ci_high"]] = [c if isinstance(c, tuple) else (None, None) for c in summary.ci]
summary = summary.drop(columns="ci")

fig, axes = plt.subplots(1, 3, figsize=(13, 4), gridspec_kw=dict(width_ratios=[1, 1, 0.7]))
colours = {"vanilla": "#8c8c8c", "RAIN": "#2a9d8f"}
for ax, df, title in ((axes[0], paper, "Paper (reported): LLaMA-2-chat 13B\nTruthfulQA, True+Info %"),
                      (axes[1], ours, f"Measured here: {lm.name}, {len(answers)} questions\n"
                                      f"truthful % by MiniLM reference judge")):
    ax.bar(df.method, df.value, color=[colours[m] for m in df.method])
    if "ci" in df:
        ax.errorbar(df.method, df.value, yerr=[[v - c[0] for v, c in zip(df.value, df.ci)],
                                               [c[1] - v for v, c in zip(df.value, df.ci)]],
                    fmt="none", ecolor="black", capsize=4)
    for x, y in zip(df.method, df.value):
        ax.annotate(f"{y:.1f}", (x, y), xytext=(6, 3), textcoords="offset points", ha="left")
    ax.set(ylim=(0, 110), title=title, ylabel="%")
axes[2].bar(["self-evaluation"], [100 * check_acc], color="#e76f51")
lo, hi = check_row.ci[0]
axes[2].errorbar([0], [100 * check_acc], yerr=[[100 * check_acc - lo], [hi - 100 * check_acc]],
                 fmt="none", ecolor="black", capsize=4)
axes[2].axhline(50, color="grey", ls="--", lw=1, label="chance")
axes[2].annotate(f"{100 * check_acc:.0f}", (0, 100 * check_acc), xytext=(6, 3),
                 textcoords="offset points", ha="left")
axes[2].set(ylim=(0, 110), title=f"Measured here: true answer scored\nabove a false one "
                                 f"({len(pairs)} questions)", ylabel="%")
axes[2].legend(loc="upper right", fontsize=8)
fig.suptitle("TruthfulQA: the paper's numbers (left) and ours (middle, right); different models "
             "and judges", fontsize=11)
fig.tight_layout()
save_figure(fig, "09_truthfulness", summary)
summary

# %% [markdown]
# ## What to take away
#
# * The same search aligns for a different goal by changing one thing: the question the model
#   asks itself (`templates/truthful.txt`). Nothing else in RAIN changes.
# * **Honest note.** At 135M parameters the self-evaluator barely separates true from false
#   answers (section 3: close to chance; the scores of a true and a false answer differ by a few
#   thousandths), so RAIN has almost no signal to follow and its answers are often the vanilla
#   answer, word for word.
#   On a handful of questions, any difference between the two bars is noise. The paper's gain
#   (68.5% to 72.8% True+Info) was measured on a 13B chat model over all 817 questions.
# * To see the regime the paper studied, run this notebook with
#   `RAINTOOLS_MODEL=<a 7B-70B chat model>` and `RAINTOOLS_DEVICE=cuda`, or the runner:
#   `python -m raintools eval --task truthful --data truthfulqa --methods vanilla,rain`.
