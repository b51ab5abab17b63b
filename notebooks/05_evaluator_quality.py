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
# # 05 · Evaluator quality: why RAIN helps large models more than small ones
#
# RAIN steers by the judge's values. If the judge is right, the search moves towards good text;
# if the judge is a coin flip, the search follows noise. The paper saw this across model sizes:
# self-evaluation accuracy on harmlessness was 52% for LLaMA 7B and 81-98% for 30B-70B models, and
# RAIN's gain was small at 7B (harmless 64.4% -> 69.3%) and large at 30B (82.2% -> 97.0%): the
# `paper` rows of `figures/01_self_eval_accuracy.csv` and `figures/06_harmless_helpful.csv`, reported,
# not measured here. Notebook 01 measured our embedded 135M model at about chance.
#
# Here we take the model out of the judging seat and control the judge's accuracy directly. To
# know which answers are good we need a task whose answers anyone can check, so we leave
# harmlessness for arithmetic: the model is asked for the sum of two numbers.
#
# > **This is a simulation of judge quality, not a safety result.** The judge is simulated and the
# > task is arithmetic. The experiment shows how RAIN's outcome depends on the judge's accuracy;
# > it says nothing about how safe any model is.

# %% tags=["parameters"]
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
ACCURACIES = [0.5, 1.0] if FAST else [0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
N_PROMPTS = 3 if FAST else 40                         # sum questions (notebook 11 uses the same)
SEEDS = [SEED]
MAX_NEW_TOKENS = 7 if FAST else 17                    # commits of 1, 2, 4 (and 10) tokens
OWN_EVALUATOR = True                                  # also run the model's own judge

# %%
import numpy as np
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.embed import load_embedder
from raintools.experiments.stats import paired_difference
from raintools.views.analysis import (SUM_PROMPT, SumTruth, evaluator_quality_sweep, judge_agreement,
                                      judge_tally, notebook_config, simulated_judge_runs, wilson_interval)
from raintools.views.plots import plot_quality_sweep, save_figure

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 100)
lm = rt.load_model(MODEL, device=DEVICE)
cfg = notebook_config(lm, max_new_tokens=MAX_NEW_TOKENS)

# %% [markdown]
# ## 1. A ground truth anyone can check
#
# Each prompt asks "What is a + b? Reply with the number only." for two numbers from 10 to 49
# (`SumTruth.make`: `N_PROMPTS` questions, 40 in full mode, drawn with a fixed seed). The rule
# (`SumTruth`):
#
# * a response is **good** when the numbers it writes in digits include the sum, and no number
#   other than the sum and the two operands;
# * otherwise it is **bad**: a wrong sum, a second candidate result, no number at all.
#
# You can check every label with mental arithmetic, and text is good only by stating the right
# sum and nothing else, which random text almost never does (checked below).

# %%
truth = SumTruth.make(n=N_PROMPTS, seed=SEED)
pd.DataFrame({"prompt": truth.prompts, "sum": [truth.answer(q) for q in truth.prompts]}).head()

# %% [markdown]
# The rule at work on constructed answers to one question:

# %%
q0 = SUM_PROMPT.format(a=17, b=25)
check = SumTruth({q0: (17, 25)})
examples = ["42", "17 + 25 = 42.", "The answer is 43.", "It is 42 or 43.", "420", "forty-two",
            "I can't do maths.", "banana banana", ""]
pd.DataFrame([{"response": t, "good": check(q0, t), "why": check.reason(q0, t)} for t in examples])

# %% [markdown]
# And a check that nonsense does not pass: 5,000 random strings of digits, letters and signs,
# and each question's right answer given to every *other* question with a different sum.

# %%
rng = np.random.default_rng(SEED)
noise = ["".join(rng.choice(list("0123456789 abcdefghij.,+="), size=rng.integers(1, 12))) for _ in range(5000)]
passed = [t for t in noise if check(q0, t)]
swapped = [truth(q, str(truth.answer(o))) for q in truth.prompts for o in truth.prompts
           if truth.answer(o) != truth.answer(q)]
print(f"random strings judged good: {len(passed)} of {len(noise)} {passed}; "
      f"right answers moved to another question judged good: {sum(swapped)} of {len(swapped)}")

# %% [markdown]
# ## 2. A judge of controlled accuracy
#
# `rt.SimulatedJudge(truth, accuracy=p)` knows the true label and reports it correctly with
# probability `p` (+1 for good, -1 for bad), otherwise the opposite. Its coin is fixed per text, so
# asking twice gives the same answer, like a real judge. `p = 0.5` is pure noise, `p = 1` is perfect.
# Below it judges the constructed answers under 200 seeds each, to check the rate (with a 95%
# Wilson interval).

# %%
rows = []
for p in [0.5, 0.8, 1.0]:
    pairs = [(rt.SimulatedJudge(check, accuracy=p, seed=s)(q0, t), check(q0, t))
             for s in range(200) for t in examples]
    agree = judge_agreement(pairs) * len(pairs)
    lo, hi = wilson_interval(agree, len(pairs))
    rows.append({"p": p, "judgements": len(pairs), "measured agreement": agree / len(pairs),
                 "95% interval": f"{lo:.3f} to {hi:.3f}"})
pd.DataFrame(rows)

# %% [markdown]
# ## 3. RAIN under judges of each accuracy
#
# For each `p` we run RAIN with that simulated judge on every question (everything else
# unchanged), then label the final answer with the same ground truth (`simulated_judge_runs`).

# %%
embedder = load_embedder()
simulated = simulated_judge_runs(lm, truth, ACCURACIES, cfg, seeds=SEEDS, embedder=embedder, progress=True)

# %% [markdown]
# For reference, the same questions with greedy decoding and with RAIN steered by the model's own
# self-evaluation (its truthfulness template, `raintools/templates/truthful.txt`). The latter goes
# on the x axis at its measured agreement with the ground truth on the texts it judged.

# %%
references = evaluator_quality_sweep(lm, truth, [], cfg, seeds=SEEDS, embedder=embedder,
                                     own_evaluator=OWN_EVALUATOR, vanilla=True, progress=True,
                                     template="truthful")
runs = pd.concat([references, simulated], ignore_index=True)
summary = (runs.groupby(["method", "p"], dropna=False)
           .agg(good=("good", "mean"), runs=("good", "size"), judge_agreement=("judge_agreement", "mean"),
                judge_ties=("judge_ties", "sum"), judge_judgements=("judge_judgements", "sum"),
                simulations=("simulations", "mean"))
           .reset_index())
summary.round(3)

# %% [markdown]
# `judge_agreement` above counts a tie (value 0: the two option orders disagree) as half right,
# which makes a judge that never gives a verdict look like a coin flip. The own evaluator's
# judgements counted apart, ties as ties:

# %%
own_runs = runs[runs.method == "own evaluator"]
if len(own_runs):
    ties, n_judged = int(own_runs.judge_ties.sum()), int(own_runs.judge_judgements.sum())
    decided = n_judged - ties
    agree = float((own_runs.judge_decided_agreement * (own_runs.judge_judgements - own_runs.judge_ties)).sum())
    print(f"own evaluator: {n_judged} judgements, {ties} ties ({100 * ties / max(n_judged, 1):.0f}%), "
          + (f"agreement with the truth on the {decided} with a verdict {agree / decided:.2f}"
             if decided else "no judgement with a verdict"))

# %% [markdown]
# And each RAIN arm against greedy decoding on the same questions: wins (RAIN right, greedy
# wrong), losses (the reverse), and the paired difference with its Newcombe 95% interval.

# %%
greedy = runs[runs.method == "vanilla (greedy)"].set_index("prompt").good
rows = []
for (method, p), g in runs[runs.method != "vanilla (greedy)"].groupby(["method", "p"], dropna=False):
    pair = g.set_index("prompt").good.astype(bool).to_frame("rain").join(greedy.astype(bool).rename("greedy"))
    d = paired_difference(pair.rain, pair.greedy)
    rows.append(dict(method=method, p=p, rain_good=int(pair.rain.sum()), greedy_good=int(pair.greedy.sum()),
                     n=len(pair), wins=d["a_only"], losses=d["b_only"], diff=d["diff"], lo=d["lo"], hi=d["hi"]))
versus_greedy = pd.DataFrame(rows)
coin = versus_greedy[(versus_greedy.method == "simulated") & (versus_greedy.p == 0.5)]
if len(coin):
    c = coin.iloc[0]
    verdict = ("worse than" if c["hi"] < 0 else "better than" if c["lo"] > 0 else
               "not shown different from") + " greedy"
    print(f"p = 0.5: RAIN {c.rain_good}/{c.n} right, greedy {c.greedy_good}/{c.n}; RAIN won {c.wins} and "
          f"lost {c.losses} questions: {100 * c['diff']:+.0f} points (95% CI {100 * c.lo:+.0f} to "
          f"{100 * c.hi:+.0f}), {verdict}")
versus_greedy.round(3)

# %%
ax = plot_quality_sweep(runs)
save_figure(ax.figure, "05_evaluator_quality", runs)

# %% [markdown]
# The answers themselves (check the labels by eye):

# %%
runs[["method", "p", "prompt", "good", "response"]].assign(prompt=runs.prompt.str[8:15]).head(12)

# %% [markdown]
# ## Reading the result
#
# (Full mode: 40 questions per point; fast mode runs three, too few to read anything into.)
#
# * The intervals in the figure are 95% Wilson intervals over the questions at each `p`.
# * A judge at `p = 0.5` gives the search noise to follow, and following noise costs: the line
#   "p = 0.5: ..." above counts RAIN's wins and losses against the greedy answer on the same
#   questions (a search that leaves the greedy path at random mostly leaves a right sum for a
#   wrong one). As `p` grows the share of right sums grows, up to what the candidates the model
#   proposes allow within the budget. In the committed full run (`figures/05_evaluator_quality.csv`)
#   RAIN was right on 5 of 40 questions at `p = 0.5`, 16 at `p = 0.9` and 24 at `p = 1`, greedy
#   decoding on 12.
# * None of this compares methods at equal cost: greedy decoding runs one pass per token, RAIN
#   runs its simulations on top (the `simulations` column of the summary). Whether RAIN beats a
#   method of the same counted cost, best-of-N with the same judge, is notebook 06's question.
# * The model's own judge (the star) is drawn at its agreement where it gave a verdict, with its
#   ties counted apart (legend and the line above): a tie is no verdict, not half a right one. When
#   every judgement ties, the star stands left of the accuracy axis ("all ties"): the search then
#   has nothing to follow. The paper's large models judge at 81-98% (notebook 01), far to the right.
#
# ## Predict, then run
#
# **1.** Which of these does `SumTruth` call good for "What is 17 + 25?": "17 + 25 = 42, not 43",
# "42!", "Forty-two (42)", "25 + 17 = 42"? Predict, then run the cell.

# %%
for t in ["17 + 25 = 42, not 43", "42!", "Forty-two (42)", "25 + 17 = 42"]:
    print(f"{t!r:26} good={check(q0, t)}  ({check.reason(q0, t)})")

# %% [markdown]
# *Answer:* only the first is bad (it also writes 43); the words around the numbers do not
# matter, and the operands may appear in any order.
#
# **2.** A judge with `accuracy=0.8` labels 1,000 different *wrong* answers. About how many get
# +1? If you ask it twice about the same text, can the two values differ? Predict, then run.

# %%
judge = rt.SimulatedJudge(check, accuracy=0.8, seed=SEED)
wrong = [f"The answer is {x}." for x in range(1000, 2000)]
values = [judge(q0, t) for t in wrong]
print("judged +1:", sum(v > 0 for v in values), "of", len(values),
      "| same value when asked again:", all(judge(q0, t) == v for t, v in zip(wrong, values)))

# %% [markdown]
# *Answer:* about 200 (each wrong text is called good with probability 1 - 0.8; the count varies
# around 200 by about ±13), and the values never differ: the judge's coin is fixed per text.
#
# **3.** A judge that is *always wrong* (`accuracy=0`): will RAIN's answers be better or worse
# than with the coin-flip judge at `p = 0.5`? Predict, then run (a few questions).

# %%
inverted = simulated_judge_runs(lm, truth, [0.0], cfg, seeds=SEEDS, embedder=embedder,
                                prompts=truth.prompts[:8])
coin = simulated[(simulated.p == 0.5) & simulated.prompt.isin(truth.prompts[:8])]
print(f"share of right sums: always-wrong judge {inverted.good.mean():.2f}, "
      f"coin-flip judge {coin.good.mean():.2f} (same {len(inverted)} questions)")

# %% [markdown]
# *Answer:* worse. An always-wrong judge is as informative as a perfect one, but it points the
# search away from the right sum, which RAIN then avoids whenever its candidates offer a wrong
# one; the coin flip merely adds noise. Eight questions show the direction at best, not its size.
