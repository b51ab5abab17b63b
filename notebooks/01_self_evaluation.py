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
# # 01 · Self-evaluation: the model judges its own text
#
# RAIN needs a score for every piece of text it tries. It gets it from the **same model**: the
# conversation goes into a fixed judging prompt that asks "is this reply harmful or harmless?",
# and the model's next-token probabilities for the option letters give the answer.
#
# In this notebook:
# 1. the judging prompt,
# 2. the option-letter tokens,
# 3. asking twice with the options swapped,
# 4. hard votes vs soft scores,
# 5. how often the judge is right on human preference pairs (HH-RLHF), next to the accuracies
#    the paper reports for bigger models.

# %% tags=["parameters"]
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
N_PAIRS = 4 if FAST else 60           # HH-RLHF preference pairs to score
MAX_CHARS = 600 if FAST else 1500     # keep pairs short enough for a CPU (context + both answers)
QUERY = "last"                        # "last": the last human turn; "full": the whole conversation

# %%
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.views.analysis import (OWN_PAIRS, PAPER_SELF_EVAL_ACCURACY, describe_self_eval,
                                      judge_breakdown, load_self_eval_pairs, pair_query,
                                      self_eval_accuracy, self_eval_rows)
from raintools.views.plots import plot_judge_breakdown, plot_self_eval_summary, save_figure

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 100)
lm = rt.load_model(MODEL, device=DEVICE)
print(f"{lm.name} on {lm.device}")

# %% [markdown]
# ## 1. The judging prompt
#
# The prompt is a text file in the package (`raintools/templates/harm.txt`, our own wording).
# It starts with a short instruction and four worked examples (the "few-shot header"), then the
# conversation to judge, then the question. It ends in `Answer: (` so that the very next token
# has to be an option letter.

# %%
votes = rt.self_evaluator(lm, "harm", mode="votes")
template = votes.template
query, safe_answer, harmful_answer = OWN_PAIRS[0]
print(f"header: {len(lm.encode(template.header))} tokens (encoded once, then reused)\n")
print("... [header] ...", template.full_text(query, harmful_answer, template.orders()[0])[len(template.header):])

# %% [markdown]
# ## 2. Option-letter tokens
#
# We compare the probabilities of the tokens for `A` and `B`. Their ids are looked up in the
# tokenizer of the model in use (a different tokenizer gives different ids; the original code
# hard-coded LLaMA's, which breaks on other models).

# %%
context = template.question_text(template.orders()[0])
ids = rt.option_token_ids(lm.tokenizer, context, "AB")
pd.DataFrame({"letter": list("AB"), "token id": ids, "token": lm.tokenizer.convert_ids_to_tokens(ids)})

# %% [markdown]
# ## 3. Swapped options
#
# Small models often prefer one letter whatever the question ("position bias"). So the judge asks
# twice: once with `(A) harmless (B) harmful`, once with the options swapped. Each order *votes*
# +1 ("harmless") when the letter that means harmless is the more likely one, else -1.
#
# Below: a safe and a harmful answer to the same request (a pair we wrote ourselves). The outlined
# bar is the letter that means "harmless" in that order.

# %%
rows = []
for name, answer in [("safe answer", safe_answer), ("harmful answer", harmful_answer)]:
    rows.append(judge_breakdown(votes, query, answer).assign(example=name))
breakdown = pd.concat(rows, ignore_index=True)
breakdown

# %%
fig = plot_judge_breakdown(breakdown)
save_figure(fig, "01_swapped_options", breakdown)

# %% [markdown]
# ## 4. Hard votes vs soft scores
#
# * **votes** (the paper): `v` is the mean of the two votes, so -1 (both orders say harmful),
#   0 (they disagree) or +1 (both say harmless). A model that always answers "B" gets 0 every time.
# * **soft**: the mean over both orders of `P(harmless letter) - P(harmful letter)`, a number in
#   [-1, 1] that keeps small differences a vote throws away.

# %%
soft = rt.self_evaluator(lm, "harm", mode="soft")
pd.DataFrame([{"answer": name, "votes value": votes(query, a), "soft value": soft(query, a)}
              for name, a in [("safe answer", safe_answer), ("harmful answer", harmful_answer)]])

# %% [markdown]
# ## 5. How often is the judge right?
#
# HH-RLHF (Anthropic) holds pairs of answers to the same conversation, where people marked one as
# less harmful ("chosen"). A good judge gives the chosen answer the higher score. Each pair ends in
# one of three ways: **right** (the chosen answer scores higher), **tied** (both score the same)
# or **wrong**. We report the share right and the share tied separately: a judge that ties every
# pair has learnt nothing, and calling that "50%" (a tie as half a win) would hide it.
#
# Many pairs are multi-turn. `QUERY = "last"` shows the judge only the last human turn;
# `QUERY = "full"` shows the whole conversation so far (`pair_query` builds both).

# %%
pairs, source = load_self_eval_pairs(limit=N_PAIRS, max_chars=MAX_CHARS)
print("data:", source)
multi = next((p for p in pairs if len(p.meta.get("turns", [])) > 1), pairs[0])
print(f"\na {len(multi.meta.get('turns', []))}-turn pair")
print("  query='last':", repr(pair_query(multi, "last")[:300]))
print("  query='full':", repr(pair_query(multi, "full")[:300]))

# %%
acc_votes = self_eval_accuracy(votes, pairs, query=QUERY, progress=True)
acc_soft = self_eval_accuracy(soft, pairs, query=QUERY, progress=True)
measured = self_eval_rows(lm, {"votes": acc_votes, "soft": acc_soft})
measured[["model", "judge", "params_b", "n", "wins", "ties", "losses", "strict", "strict_lo",
          "strict_hi", "tie_rate"]].round(3)

# %% [markdown]
# Per pair (values of the chosen and the rejected answer):

# %%
acc_votes.table.merge(acc_soft.table, on=["id", "turns"], suffixes=(" votes", " soft")).head(12)

# %% [markdown]
# Left, what we measured, on a log scale of model size (run more models and
# `python -m raintools.views.combine` puts them on the same axis): the share of pairs judged right,
# ties not counted. Middle: each of our judges' pairs split into right, tied and wrong. Right, the
# paper's numbers (LLaMA family, reported, not measured here) **in a panel of their own**: the paper
# reports a self-evaluation accuracy without stating how a tie (the two option orders disagreeing)
# counts, so its numbers are not drawn on the axis of our strict measure.

# %%
fig = plot_self_eval_summary(measured)
save_figure(fig, "01_self_eval_accuracy", pd.concat([measured, PAPER_SELF_EVAL_ACCURACY], ignore_index=True))

# %% [markdown]
# ## Reading the result
#
# What this run measured:

# %%
print(describe_self_eval(measured))

# %% [markdown]
# * With the embedded 135M model the hard votes tie (the model prefers one letter in both orders,
#   so the two votes cancel): the votes judge carries no information. The soft score has no ties,
#   but it ranks the less harmful answer higher no more often than a coin would.
# * The paper reports accuracy rising with size: 52% at 7B, 81% at 30B, 98% for LLaMA-2 70B
#   (the `paper (reported)` rows of `figures/01_self_eval_accuracy.csv`; its treatment of ties is
#   not stated, so these are not directly comparable with our strict share), and RAIN's gain
#   grew with it: harmless 64.4% -> 69.3% at 7B, 82.2% -> 97.0% at 30B (the `paper` rows of
#   `figures/06_harmless_helpful.csv`). Notebook 05 shows why, with judges of known accuracy.
# * To measure a larger model, run this notebook with `RAINTOOLS_MODEL` set to it (on a GPU) and
#   more pairs (`N_PAIRS`); `python -m raintools.views.combine` then puts several runs on one
#   size axis.

# %% [markdown]
# ## Predict, then run
#
# Write your prediction down before you run each cell.
#
# **1.** A judge that always returns 0 (say, a model that always answers "B": one order votes
# harmless, the other harmful). What share of pairs is right, tied, wrong? And the "ties count
# half" accuracy?

# %%
print(self_eval_accuracy(lambda q, r: 0.0, pairs).summary())

# %% [markdown]
# *Answer:* every pair ties: 0% right, 100% tied, 0% wrong, and "50%" when a tie counts half.
# That is the votes judge of the embedded model above.
#
# **2.** A judge that sees the true label and reports it right with probability 0.8, each answer
# independently (a clearly labelled simulated judge, `SimulatedJudge`), with hard values +1/-1.
# What share of pairs is right, tied, wrong?

# %%
chosen_texts = {p.chosen for p in pairs}
coin = [self_eval_accuracy(rt.SimulatedJudge(lambda q, r: r in chosen_texts, accuracy=0.8, seed=s),
                           pairs) for s in range(50)]
print(pd.DataFrame([a.summary() for a in coin])[["strict", "tie_rate", "accuracy"]].mean().round(3))

# %% [markdown]
# *Answer:* right needs both answers judged right (0.8 x 0.8 = 64%), wrong needs both judged
# wrong (0.2 x 0.2 = 4%), the rest tie (32%). An 80%-accurate judge of single answers is right
# on only 64% of pairs; counting ties as half gives back 80%. The cell shows the mean over 50
# seeds on this run's pairs: close to these expectations, not equal (in the committed full run,
# `figures/notebooks/01_self_evaluation.html`, 65% / 31% / 81% on 60 pairs; fast mode has fewer
# pairs, so more noise).
#
# **3.** Swap the roles: score how often the soft judge gives the *rejected* (more harmful)
# answer the higher value. Is it 100% minus the share right?

# %%
t = acc_soft.table
print(f"rejected higher: {(t.value_rejected > t.value_chosen).mean():.0%}; "
      f"100% - right: {1 - acc_soft.strict:.0%}; ties: {acc_soft.tie_rate:.0%}")

# %% [markdown]
# *Answer:* only when there are no ties: "rejected higher" is the share wrong, which is
# 100% - right - tied. With the soft score ties are rare, so the two agree; with the votes judge
# they would not (every pair tied).
