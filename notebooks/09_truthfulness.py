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
# share of answers that are both true and informative ("True+Info") going from **68.5% to 72.8%**
# (reported, not measured here: the `paper` rows of `figures/09_truthfulness.csv`).
#
# In this notebook you will:
# 1. see the truthfulness self-evaluation prompt (our own few-shot text,
#    `raintools/templates/truthful.txt`),
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
# often the true one gets the higher value. The check uses the evaluator **exactly as RAIN runs
# it** (`cfg.eval_mode`, the paper's votes: +1, 0 or -1): a tie (both answers get the same value,
# e.g. 0 when the two option orders disagree) is no verdict and is counted as a tie, not as half
# right. 50% is chance.

# %%
cfg = task.preset(max_new_tokens=MAX_NEW_TOKENS, seed=SEED, **BUDGET)
check = st.answer_pair_check(task.evaluator(lm, mode=cfg.eval_mode),
                             questions[1:: max(1, len(questions) // N_CHECK)][:N_CHECK])
k, n, n_ties = int(check.correct.sum()), len(check), int(check.tie.sum())
check_lo, check_hi = wilson_interval(k, n, percent=True)
print(f"evaluator mode {cfg.eval_mode!r} (what RAIN uses): the true answer scored higher for {k} of {n} "
      f"questions ({100 * k / n:.0f}%, 95% CI {check_lo:.0f}-{check_hi:.0f}%; chance 50%), lower for "
      f"{n - k - n_ties}, tied on {n_ties}; values given: "
      f"{pd.concat([check.v_true, check.v_false]).value_counts().sort_index().to_dict()}")
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
#   the search does with an informative judge; it is not the model judging itself. Its arm is
#   scored by the very rule it knows, and it computes more tokens than vanilla (the summary's
#   `mean_tokens_computed`): its difference from vanilla says the search follows an informative
#   judge, not that RAIN beats a decoder of equal cost (notebook 06 compares at equal cost).
#
# The scoring rule, for every arm (`studies.ReferenceTruth`, the task's `TruthfulnessJudge`): an
# answer is **truthful** when its MiniLM embedding is closer to one of the question's correct
# reference answers than to every incorrect one; an empty answer is not. The paper used
# fine-tuned GPT-3 judges ("GPT-judge", "GPT-info"); this is a rough reference-similarity proxy
# that does not score informativeness, and it can be checked against the references shown.

# %%
items = questions[:: max(1, len(questions) // N_ITEMS)][:N_ITEMS]
truth = st.ReferenceTruth(task, items, embedder=embedder)
runs = st.task_study(lm, task, items, cfg, truth, ACCURACY, embedder=embedder)
summary, diffs = st.task_study_tables(runs)
for _, row in diffs.iterrows():
    print(st.describe_difference(row, what="truthful answers"))
summary.round(3)

# %% [markdown]
# **How far to trust the rule.** The rule is a proxy and it errs: a true answer worded unlike
# every reference can land closer to a false one. Its error rate, measured on TruthfulQA's own
# answers to the same questions, leave one out (`studies.reference_rule_check`: each correct
# answer judged against the *other* correct answers and all incorrect ones, each incorrect answer
# against all correct and the other incorrect ones):

# %%
rule_check = st.reference_rule_check(truth.judge, items)
rule_errors = rule_check.groupby("kind").error.agg(["sum", "size"])
for kind, r in rule_errors.iterrows():
    lo, hi = wilson_interval(int(r["sum"]), int(r["size"]), percent=True)
    print(f"reference rule on {kind} answers: {int(r['sum'])} of {int(r['size'])} misjudged "
          f"({100 * r['sum'] / r['size']:.0f}%, 95% CI {lo:.0f}-{hi:.0f}%)")
rule_check[rule_check.error].head(6)

# %% [markdown]
# A rate of truthful answers below therefore carries this error on top of its sampling interval;
# a difference between two arms on the same questions is less affected (both are scored by the
# same rule), but a single answer's label can be wrong: read the answers.
#
# **Why the own-evaluator arm can equal vanilla.** RAIN's own-evaluator arm searches with the
# votes of section 3. Every value the search received, and how its answers compare with vanilla's:

# %%
own_arm = runs[runs.arm == "RAIN, own evaluator"]
same = (own_arm.set_index("id").response == runs[runs.arm == "vanilla"].set_index("id").response)
print(f"RAIN, own evaluator: {int(own_arm.judge_ties.sum())} of {int(own_arm.judge_judgements.sum())} "
      f"values the search received were ties (0); its answer equals vanilla's on {int(same.sum())} of "
      f"{len(same)} questions")

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
# 95% intervals; the rule's own error rate, measured in section 4, is in the panel's title), the
# paired differences between arms on the same questions (Newcombe 95% intervals; solid when the
# interval excludes zero), and the self-evaluation check of section 3 (a point with its interval,
# ties counted).

# %%
fig = sp.plot_task_study(
    pd.DataFrame(PAPER_TRUTHFULQA), summary, diffs,
    dict(value=100 * k / n, lo=check_lo, hi=check_hi, chance=50, ylabel="%", label="true > false",
         note=f"ties: {n_ties} of {n}\n(mode: {cfg.eval_mode})"),
    titles=["The paper (reported): LLaMA-2-chat 13B\nTruthfulQA, True+Info %",
            f"Measured: {lm.name}, n={N_ITEMS} questions\ntruthful by the reference rule (errs on "
            f"{100 * rule_check.error.mean():.0f}% of references)",
            f"Paired differences (simulated judge: p = {ACCURACY})",
            f"Self-evaluation check, as RAIN\nruns it ({n} questions)"],
    fig_title="TruthfulQA: the paper's numbers (left) and ours; different models and judges",
    what="truthful answers")
rule_table = rule_errors.reset_index().rename(columns={"sum": "errors", "size": "n"}).assign(
    source="reference rule, leave one out")
check_row = pd.DataFrame([dict(source="self-evaluation check", mode=cfg.eval_mode, n=n, successes=k,
                               ties=n_ties, rate=k / n, lo=check_lo / 100, hi=check_hi / 100)])
save_figure(fig, "09_truthfulness", pd.concat([pd.DataFrame(PAPER_TRUTHFULQA).assign(source="paper"),
                                               summary.assign(source="measured"), diffs, rule_table,
                                               check_row], ignore_index=True))

# %% [markdown]
# ## What to take away
#
# * The same search aligns for a different goal by changing one thing: the question the model
#   asks itself (`raintools/templates/truthful.txt`). Nothing else in RAIN changes.
# * RAIN can only move towards what its judge sees. Section 3 measured how well the embedded
#   model's own judge separates true from false answers, and section 4 what RAIN did with it and
#   with a simulated judge of accuracy p; the printed differences say which of them, here, changed
#   the share of truthful answers by more than the noise.
# * The paper's gain (68.5% to 72.8% True+Info) was measured on a 13B chat model over all 817
#   questions. To see that regime, run this notebook with `RAINTOOLS_MODEL=<a 7B-70B chat model>`
#   and `RAINTOOLS_DEVICE=cuda`, or the runner:
#   `python -m raintools eval --task truthful --data truthfulqa --methods vanilla,rain`.
