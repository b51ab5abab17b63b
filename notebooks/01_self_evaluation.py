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
from raintools.views.analysis import (OWN_PAIRS, PAPER_SELF_EVAL_ACCURACY, judge_breakdown,
                                load_self_eval_pairs, pair_query, self_eval_accuracy)
from raintools.views.plots import plot_accuracy_by_model, plot_judge_breakdown, save_figure

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
# less harmful ("chosen"). A good judge gives the chosen answer the higher score. We count a pair
# as right when it does, as half right when both scores are equal (a coin flip would break the tie),
# and as wrong otherwise.
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
short_name = lm.name.split("/")[-1]
measured = pd.DataFrame([acc_votes.summary(model=f"{short_name} (votes)", source="measured here"),
                         acc_soft.summary(model=f"{short_name} (soft)", source="measured here")])
measured

# %% [markdown]
# Per pair (values of the chosen and the rejected answer):

# %%
acc_votes.table.merge(acc_soft.table, on=["id", "turns"], suffixes=(" votes", " soft")).head(12)

# %% [markdown]
# Next to the paper's numbers (LLaMA family, reported in the paper, not measured here):

# %%
ax = plot_accuracy_by_model(measured)
save_figure(ax.figure, "01_self_eval_accuracy",
            pd.concat([measured, PAPER_SELF_EVAL_ACCURACY], ignore_index=True))

# %% [markdown]
# ## Reading the result
#
# * With the embedded 135M model the votes are mostly ties (the model prefers one letter in both
#   orders), so its accuracy sits at 50%: the judge carries no information. The soft score breaks
#   the ties, but not in the right direction more often than a coin would (we measured it at or
#   below chance). With few pairs the interval is wide.
# * The paper found the same pattern by size: 52% at 7B, 81% at 30B, 98% for LLaMA-2 70B, and RAIN
#   only helped where this accuracy was high. Notebook 05 shows why, with judges of known accuracy.
# * To measure a larger model, run this notebook with `RAINTOOLS_MODEL` set to it (on a GPU) and
#   more pairs (`N_PAIRS`).
