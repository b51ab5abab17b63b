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
# # 02 · Forward: choosing which text to try next
#
# Each simulation of RAIN starts at the root of the search tree (the text committed so far) and
# walks down, one child at a time, until it reaches a leaf. That walk is the **forward** phase.
# At every node it picks the child with the highest **selection score**:
#
# $$\text{score} = \underbrace{\hat q}_{\text{exploit}} + \underbrace{c \, p \, \frac{\sqrt{N}}{1 + n}}_{\text{explore}}$$
#
# * $\hat q$: the child's mean value so far, rescaled to [0, 1] (0 for a child never visited),
# * $p$: the child's **prior**, how likely the model thought this continuation was,
# * $N$: visits of the parent, $n$: visits of the child,
# * $c$: the exploration constant (2 in the paper).
#
# This is the **PUCT** rule of AlphaZero-style Monte Carlo tree search (notebook 00 places RAIN in
# that family). The paper writes $N$ as the sum of the visits of the siblings,
# $\sum_b n(b)$; the public code, and raintools, use the parent's own visit count `parent.n`.
# The rule as the package runs it is shown below, after the set-up.
#
# The first term says "go where it looked good", the second "try likely things you have not tried
# much". This notebook looks at each part, then at what the children (the candidate token sets)
# are at different depths.

# %% tags=["parameters"]
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
SIMULATIONS = 4 if FAST else 30        # simulations on the real prompt
CS = [0.0, 0.5, 2.0, 8.0]              # exploration constants to compare
BANDIT_SIMULATIONS = 200 if FAST else 1000
# The embedded 135M model judges at chance (notebook 01), so every value would be 0. With it we
# use a clearly labelled simulated judge (notebook 05), right 90% of the time; any other model
# uses its own self-evaluation.
JUDGE = "simulated" if MODEL == "smollm2-135m" else "own"

# %%
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.embed import load_embedder
from raintools.tree import Bounds, Node, select_child, selection_score
from raintools.views.analysis import (candidate_sets, demo_judge, notebook_config, selection_sweep,
                                      selection_terms)
from raintools.views.plots import (plot_candidate_sets, plot_root_priors, plot_selection_sweep,
                                   plot_selection_terms, save_figure)
from raintools.views.widgets import show_source

sns.set_theme(style="whitegrid")

# %% [markdown]
# The selection rule as the package runs it (`raintools.tree`): `parent_n` is the code's $N$.

# %%
show_source(selection_score, select_child)

# %%
lm = rt.load_model(MODEL, device=DEVICE)
cfg = notebook_config(lm, max_new_tokens=24, seed=SEED)
prompt, judge, about = demo_judge(lm, "demo-harmful-03", JUDGE, seed=SEED, mode=cfg.eval_mode)
print(prompt)
print("judge:", about)

# %% [markdown]
# ## 1. The score on a real root
#
# We start a search and run a few simulations by hand with `RainSearch.simulate()` (the same
# call `rain_generate` makes in a loop). Then we read the root's children from the recorded trace.

# %%
search = rt.RainSearch(lm, prompt, cfg, evaluator=judge, embedder=load_embedder())
for _ in range(SIMULATIONS):
    search.simulate()
trace = search.trace
last = len(trace.simulations) - 1
tree = trace.tree_at(last)
root = trace.simulations[last].root
children = sorted((nd for nd in tree.values() if nd.parent == root), key=lambda nd: -nd.p)
print(f"after {SIMULATIONS} simulations the root has {len(children)} children and {tree[root].n:g} visits")

# %% [markdown]
# The paper's $N$ and the code's: the parent's visits count the simulation that expanded it (its
# children did not exist yet) and similarity updates it received itself; the children's sum
# counts their fractional similarity visits. The two differ by about one visit, which changes the
# bonus by a factor $\sqrt{N / (N - 1)}$, close to 1 after a few simulations:

# %%
sibling_sum = sum(nd.n for nd in children)
print(f"code: N = parent.n = {tree[root].n:g};  paper: N = sum of the children's n = {sibling_sum:g};  "
      f"bonus ratio sqrt(code / paper) = {(tree[root].n / max(sibling_sum, 1e-9)) ** 0.5:.3f}")

# %% [markdown]
# The two terms of the score for each child, for several values of `c`. The star marks the child
# the next simulation would walk into. With `c = 0` only the value counts, so the search keeps
# going back to what it already likes; a large `c` lets the prior and the visit counts decide.

# %%
terms = pd.concat([selection_terms(children, parent_n=tree[root].n, c=c).assign(c=c) for c in CS],
                  ignore_index=True)
fig = plot_selection_terms(terms)
save_figure(fig, "02_selection_terms", terms)

# %%
terms[terms.c == cfg.c][["text", "q", "n", "p", "exploit", "explore", "score"]].round(3)

# %% [markdown]
# ## 2. Where the priors come from
#
# When a node is expanded, the model proposes candidates and their probabilities. At the
# one-token level these are the 10 most likely next tokens, renormalised over those 10. The
# children of the *current root* then get a mix, `0.75 p + 0.25 / k`, so that unlikely but
# possibly better starts still get tried.

# %%
sets = candidate_sets(search, steps=4)
root_sets = sets[sets.depth == sets.depth.min()].copy()
ax = plot_root_priors(root_sets)
save_figure(ax.figure, "02_root_priors", root_sets)

# %% [markdown]
# ## 3. How `c` trades exploration for exploitation
#
# A clean way to see it is a one-level tree whose children have *known* values. We take the
# priors of the real root's children above, make up a true value for each (the best one is a
# child the model finds unlikely), and let the package's own selection rule and back-up
# (`raintools.tree.select_child`, `raintools.tree.backup`) run. Each visit returns a vote of +1 or -1
# drawn from the child's true value, like the self-evaluator's votes. Exact ties of the score
# (with `c = 0`, every untried child scores 0) go to a draw under the seed, as in the search
# (`RainConfig.tie_break`).
#
# *The values here are made up for the illustration; the rule is the real one.*

# %%
priors = list(root_sets.raw_p / root_sets.raw_p.sum())   # the real root's, renormalised
true_values = [-0.4] * len(priors)
true_values[0] = 0.0                                    # the likeliest child is so-so
true_values[min(4, len(priors) - 1)] = 0.7              # an unlikely child is the best
sweep = selection_sweep(true_values, priors, cs=CS + [32.0], simulations=BANDIT_SIMULATIONS, seed=SEED)
fig = plot_selection_sweep(sweep)
save_figure(fig, "02_exploration_tradeoff", sweep)

# %%
sweep[sweep.best | (sweep.child == 0)].pivot(index="c", columns="child", values="share").round(3)

# %% [markdown]
# Reading the figure (and the table: the share of visits of the likeliest child 0 and of the best
# child): with `c = 0` the visits pile onto the first child tried whose first vote was not the
# worst (which child that is, is the tie-break's draw: the priors play no part), however bad its
# mean; the best child may never be tried. With a moderate `c` the search tries the others, finds
# the good one and then spends most visits there. With a very large `c` it keeps spreading visits
# by prior, wasting simulations on children it already knows are bad. In the committed full run
# (`figures/02_exploration_tradeoff.csv`, 1,000 visits) the best child got 0% of the visits at
# `c = 0` (a bad child took 99.9%), 85% and 88% at `c = 0.5` and 2, 59% at 8 and 13% at 32.

# %% [markdown]
# ## 4. What the candidates look like at each depth
#
# RAIN's nodes are **token sets**, not single tokens. Their length grows with the absolute depth
# from the start of the answer: 1 token at depth 1, then 2, 4, and 10 tokens from depth 4 on.
# At the one-token level the candidates are the top-10 tokens; at longer levels they are one
# greedy rollout plus up to 9 sampled rollouts (top-15 sampling), duplicates dropped: up to 10
# distinct candidates, fewer where the model is sure how to go on and the samples repeat (the
# `candidates` column below counts them).
# Below: expand the root, follow the likeliest candidate, expand it, and so on (`candidate_sets`
# uses the search's own `expand`).

# %%
fig = plot_candidate_sets(sets)
save_figure(fig, "02_candidate_sets", sets)

# %%
sets.groupby("depth").apply(lambda d: pd.Series({"length": d.length.max(), "candidates": len(d),
                                                 "examples": " | ".join(d.text.head(3))}),
                            include_groups=False)

# %% [markdown]
# ## What to take away
#
# * The forward phase is a walk down the tree by `qh + c p sqrt(N) / (1 + n)`.
# * Priors come from the model's own probabilities (mixed with uniform at the root), so the search
#   starts from what the model would say anyway and only moves away when the values say so.
# * `c` sets the balance: too small and the search never looks around, too large and it never
#   settles. Notebook 03 shows how the values that drive it are backed up.

# %% [markdown]
# ## Predict, then run
#
# **1.** A fresh root with three children, priors 0.2, 0.5 and 0.3 (in that order), none visited,
# and `c = 0`. Which child does the next simulation walk into?

# %%
fresh = Node(tokens=(), n=1)
fresh.children = [Node(tokens=(i,), parent=fresh, p=p) for i, p in enumerate([0.2, 0.5, 0.3])]
print("picked: child with prior", select_child(fresh, Bounds(), c=0.0).p)

# %% [markdown]
# *Answer:* here the first one (prior 0.2), but only by a tie-break. Every score is 0 (an
# unvisited child's value counts as 0 and the bonus is multiplied by `c = 0`); `select_child`
# called alone gives a tie to the first child, while the search passes its tie rule
# (`RainConfig.tie_break`: by default a draw keyed by the seed and the node), so in a search any of
# the three could be picked. With `c = 2` the bonus `2 p sqrt(1) / 1` picks the likeliest (0.5).
#
# **2.** Same root, `c = 0`, but child 0 has been visited once and came back `q = -0.9`. Which child
# is picked next: the one that looked bad, or an untried one?

# %%
fresh.children[0].n, fresh.children[0].q, fresh.n = 1, -0.9, 2
print("picked: child with prior", select_child(fresh, Bounds(), c=0.0).p)

# %% [markdown]
# *Answer:* the bad one again. Its normalised value `(q - qmin) / (qmax - qmin) = 0.1 / 2 = 0.05`
# is above the 0 of an untried child ("pessimistic first play"), so without the exploration term
# the search never tries the others: the `c = 0` bar of the sweep above.
#
# **3.** A child with prior 0.5 under a parent with `N = 16` visits, `c = 2`: what is its bonus
# unvisited, and after 3 visits?

# %%
for n in (0, 3):
    child = Node(tokens=(0,), p=0.5, n=n, q=-1.0)   # q = qmin: the value term is 0, the score is the bonus
    print(f"n = {n}: bonus {selection_score(child, 16, Bounds(), 2.0):.3f}")

# %% [markdown]
# *Answer:* `2 x 0.5 x sqrt(16) / (1 + 0) = 4`, then `4 / (1 + 3) = 1`: the bonus falls as
# `1 / (1 + n)`, so a likely child is tried early, and kept only if its value holds up.

