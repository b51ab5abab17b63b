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
# 3. answer TruthfulQA questions with vanilla decoding and with RAIN, steered by the model's own
#    evaluator and by a clearly labelled *simulated* judge of known accuracy, and score every answer
#    offline against TruthfulQA's reference answers,
# 4. draw our numbers beside the paper's.
#
# Everything goes through the `truthful` task (`raintools.experiments.tasks`), the same object the
# evaluation runner uses: `python -m raintools eval --task truthful --data truthfulqa ...`.

# %% [markdown]
# Parameters come from the environment (RAINTOOLS_FAST, RAINTOOLS_MODEL, RAINTOOLS_DEVICE,
# RAINTOOLS_SEED), so the same notebook runs on a laptop and on a big model on a GPU. The search
# budget is CPU-sized: the rules are the paper's, only the number of tries is smaller.

# %% tags=["parameters"]
from raintools.views import studies as st
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
N_ITEMS = 2 if FAST else 40         # questions per arm (40: Wilson 95% CI within +-0.15)
N_CHECK = 2 if FAST else 40         # questions for the self-evaluation check
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
from raintools.experiments.tasks import PAPER_TRUTHFULQA, get_task
from raintools.views import study_plots as sp
from raintools.views.analysis import wilson_interval
from raintools.views.plots import save_figure

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

# %%
lm = rt.load_model(MODEL, device=DEVICE)
embedder = load_embedder()
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
check = st.answer_pair_check(soft, questions[1:: max(1, len(questions) // N_CHECK)][:N_CHECK])
k, n = int(check.correct.sum()), len(check)
check_lo, check_hi = wilson_interval(k, n, percent=True)
print(f"the true answer scored higher for {k} of {n} questions ({100 * k / n:.0f}%, 95% CI "
      f"{check_lo:.0f}-{check_hi:.0f}%; chance 50%); mean |margin| {check.v_true.abs().mean():.3f}")
check.head(8)

# %% [markdown]
# ## 4. Vanilla vs RAIN, with two judges
#
# Every arm answers the same questions with the same length budget:
#
# * **vanilla**: greedy decoding;
# * **RAIN, own evaluator**: RAIN steered by the model's own truthfulness self-evaluation (the
#   paper's method), with the task's constants and a CPU-sized budget of simulations;
# * **RAIN, simulated judge**: the same search steered by a *simulated* judge (`rt.SimulatedJudge`)
#   that knows the scoring rule below and reports it correctly with probability p. It shows what
#   the search does with an informative judge; it is not the model judging itself.
#
# The scoring rule, for every arm (`studies.ReferenceTruth`, the task's `TruthfulnessJudge`): an
# answer is **truthful** when its MiniLM embedding is closer to one of the question's correct
# reference answers than to every incorrect one; an empty answer is not. The paper used
# fine-tuned GPT-3 judges ("GPT-judge", "GPT-info"); this is a rough reference-similarity proxy
# that does not score informativeness, and it can be checked against the references shown.

# %%
items = questions[:: max(1, len(questions) // N_ITEMS)][:N_ITEMS]
cfg = task.preset(max_new_tokens=MAX_NEW_TOKENS, seed=SEED, **BUDGET)
truth = st.ReferenceTruth(task, items, embedder=embedder)
runs = st.task_study(lm, task, items, cfg, truth, ACCURACY, embedder=embedder)
summary, diffs = st.task_study_tables(runs)
for _, row in diffs.iterrows():
    print(st.describe_difference(row, what="truthful answers"))
summary.round(3)

# %% [markdown]
# The answers (first questions), with the reference answer the rule found closest to vanilla's:

# %%
van = runs[runs.arm == "vanilla"].set_index("id")
verdicts = [truth.judge.judge(q, a) for q, a in zip(van.prompt, van.response)]
van["closest to vanilla"] = [v.get("closest_correct" if v["truthful"] else "closest_incorrect")
                             for v in verdicts]
runs.pivot(index="id", columns="arm", values="response").join(van[["prompt", "closest to vanilla"]]).head(8)

# %% [markdown]
# ## 5. Our numbers beside the paper's
#
# Left: what the paper reports (LLaMA-2-chat 13B, True+Info, GPT judges; a different model and
# metric, so its own panel). Then what we measured: the share of truthful answers per arm (Wilson
# 95% intervals), the paired differences between arms on the same questions (Newcombe 95%
# intervals; solid when the interval excludes zero), and the self-evaluation check of section 3.

# %%
fig = sp.plot_task_study(
    pd.DataFrame(PAPER_TRUTHFULQA), summary, diffs,
    dict(value=100 * k / n, lo=check_lo, hi=check_hi, chance=50, ylabel="%", label="true > false"),
    titles=["The paper (reported): LLaMA-2-chat 13B\nTruthfulQA, True+Info %",
            f"Measured: {lm.name}, n={N_ITEMS} questions\ntruthful by the reference rule",
            f"Paired differences (simulated judge: p = {ACCURACY})",
            f"Self-evaluation check\n({n} questions)"],
    fig_title="TruthfulQA: the paper's numbers (left) and ours; different models and judges",
    what="truthful answers")
save_figure(fig, "09_truthfulness", pd.concat([pd.DataFrame(PAPER_TRUTHFULQA).assign(source="paper"),
                                               summary.assign(source="measured"), diffs], ignore_index=True))

# %% [markdown]
# ## What to take away
#
# * The same search aligns for a different goal by changing one thing: the question the model
#   asks itself (`templates/truthful.txt`). Nothing else in RAIN changes.
# * RAIN can only move towards what its judge sees. Section 3 measured how well the embedded
#   model's own judge separates true from false answers, and section 4 what RAIN did with it and
#   with a simulated judge of accuracy p; the printed differences say which of them, here, changed
#   the share of truthful answers by more than the noise.
# * The paper's gain (68.5% to 72.8% True+Info) was measured on a 13B chat model over all 817
#   questions. To see that regime, run this notebook with `RAINTOOLS_MODEL=<a 7B-70B chat model>`
#   and `RAINTOOLS_DEVICE=cuda`, or the runner:
#   `python -m raintools eval --task truthful --data truthfulqa --methods vanilla,rain`.
