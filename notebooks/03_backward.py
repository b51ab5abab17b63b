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
# # 03 · Backward: spreading a judgement through the tree
#
# After the forward walk reaches a leaf, RAIN finishes the current clause, asks the judge for a
# value `v` in [-1, 1], and then goes **backward**:
#
# 1. **Back-up.** Every node on the path from the root to the leaf counts one more visit and moves
#    its mean value towards `v`: `n += 1`, `q += (v - q) / n`.
# 2. **Similarity update.** Texts that mean nearly the same thing should get nearly the same value.
#    For each node on the path, siblings whose sentence embedding has cosine similarity
#    `s >= 0.95` with it get a *fractional* visit of weight `w = 0.2 s` carrying the value `v`:
#    `q_sib = (q_sib n_sib + w v) / (n_sib + w)`, `n_sib += w`.
# 3. **Dynamic node addition** (checked during the next forward walk): when all children of a node
#    look bad (every `q < 0`) *and* they are too alike (their embeddings barely vary), the node gets
#    new candidates, since trying more of the same will not help.

# %% tags=["parameters"]
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
SIMULATIONS = 6 if FAST else 40
MAX_NEW_TOKENS = 7 if FAST else 24      # how deep the tree may grow (token sets of 1, 2, 4, 10, ...)
BUDGET = dict(clause_max_tokens=8) if FAST else {}
# The embedded 135M model judges at chance (notebook 01): its values are nearly always 0, which
# hides the mechanics. With it we use a clearly labelled simulated judge (notebook 05) that is
# right 90% of the time; any other model uses its own self-evaluation.
JUDGE = "simulated" if MODEL == "smollm2-135m" else "own"

# %%
import pandas as pd
import seaborn as sns
import torch

import raintools as rt
from raintools.views.analysis import (backup_table, demo_judge, node_addition_table, notebook_config,
                                similarity_updates)
from raintools.embed import load_embedder
from raintools.views.plots import (cosine_similarity_matrix, plot_backup, plot_node_addition,
                             plot_similarity_heatmap, save_figure)

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 80)
lm = rt.load_model(MODEL, device=DEVICE)
embedder = load_embedder()
cfg = notebook_config(lm, max_new_tokens=MAX_NEW_TOKENS, seed=SEED, **BUDGET)
prompt, judge, about = demo_judge(lm, "demo-harmful-01", JUDGE, seed=SEED, mode=cfg.eval_mode)
print(prompt)
print("judge:", about)

# %% [markdown]
# We run some simulations one at a time with `RainSearch.simulate()`; the trace records what each
# one changed.

# %%
search = rt.RainSearch(lm, prompt, cfg, evaluator=judge, embedder=embedder)
for _ in range(SIMULATIONS):
    search.simulate()
trace = search.trace
pd.DataFrame([{"simulation": s.index, "path length": len(s.path), "value": s.value,
               "from memo": s.memo_hit, "evaluated text": s.evaluated_text}
              for s in trace.simulations])

# %% [markdown]
# ## 1. Back-up along the path
#
# Pick a simulation whose value moved the path's values the most (among paths at least three
# nodes long) and compare each node's statistics just before and just after it. Every node on the
# path gets `n + 1`, and its `q` moves a step `(v - q) / n` towards `v`: big steps for nodes with
# few visits, small steps for the root, which has seen everything.

# %%
def movement(i):
    t = backup_table(trace, i)
    return (t.q_after - t.q_before).abs().sum()


long_paths = [s.index for s in trace.simulations if len(s.path) >= 3] or [len(trace.simulations) - 1]
chosen = max(long_paths, key=movement)
print(f"simulation {chosen}: value v = {trace.simulations[chosen].value:+.2f}")
table = backup_table(trace, chosen)
table[["role", "depth", "text", "v", "n_before", "q_before", "n_after", "q_after", "weight"]].round(3)

# %%
ax = plot_backup(table)
save_figure(ax.figure, "03_backup", table)

# %% [markdown]
# ## 2. The similarity update
#
# Each node keeps a running mean of the embeddings (all-MiniLM-L6-v2) of the texts evaluated
# through it. Below: the cosine similarity of the root's children that have an embedding so far.
# Boxed cells pass the 0.95 threshold: a value found for one of them is shared with the other at
# weight `0.2 x similarity`.

# %%
kids = [ch for ch in search.root.children if ch.embedding is not None]
labels = [lm.decode(ch.tokens) for ch in kids]
emb = torch.stack([ch.embedding for ch in kids])
ax = plot_similarity_heatmap(emb, labels, threshold=cfg.sim_threshold, gamma=cfg.sim_gamma)
sim = pd.DataFrame(cosine_similarity_matrix(emb), index=labels, columns=labels)
save_figure(ax.figure, "03_similarity_heatmap", sim.reset_index(names="sibling"))

# %% [markdown]
# Who was updated, and by how much, over the whole run (`similarity_updates` reads the trace):

# %%
updates = similarity_updates(trace)
print(f"{len(updates)} similarity updates in {len(trace.simulations)} simulations")
updates.head(10)

# %% [markdown]
# Single-token siblings often start different sentences, so few pairs reach 0.95; deeper in the
# tree, siblings share more text and the update fires more often. Its effect is small by design
# (a fifth of a visit), a nudge rather than a verdict.

# %% [markdown]
# ## 3. When dynamic node addition fires
#
# The test runs at each node the forward walk passes. It needs, all at once:
# * every child has an embedding (so every child has been tried at least once),
# * the norm of the per-dimension variance of the children's embeddings is below
#   `0.03 x token-set length` (the candidates say nearly the same thing),
# * every child has `q < 0` (they all look bad),
# * fewer than 20 children.
#
# In the search above (a `variance_norm` of NaN means not every child has been tried yet):

# %%
node_addition_table(search).round(4)

# %% [markdown]
# Now give a search a judge that finds **everything** bad (a deliberately broken, simulated judge),
# and only 3 candidates per expansion so that all children get tried within a few simulations.
# Every `q` becomes negative, so only the similarity condition decides. The figure puts each
# node's variance norm against its threshold: below the dashed line the candidates count as
# "too alike".

# %%
everything_bad = rt.SimulatedJudge(lambda q, r: False, accuracy=1.0)
gloomy = rt.RainSearch(lm, prompt, cfg.replace(num_candidates=3), evaluator=everything_bad,
                       embedder=embedder)
for _ in range(SIMULATIONS):
    gloomy.simulate()
adds = node_addition_table(gloomy)
ax = plot_node_addition(adds)
save_figure(ax.figure, "03_node_addition", adds)
print("nodes added:", gloomy.counts["nodes_added"])
adds.round(4)

# %% [markdown]
# Real sentence embeddings of different openings usually vary more than the threshold allows, so
# addition is rare. To watch it act, we also break the embedder on purpose: it gives every text
# the same vector, so siblings always look identical. Now each node whose children have all been
# tried (and judged bad) gets new candidates, listed in the trace's `added` field.

# %%
same_vector = lambda texts: torch.ones(len(texts), 8)     # a deliberately broken embedder  # noqa: E731
forced = rt.RainSearch(lm, prompt, cfg.replace(num_candidates=3), evaluator=everything_bad,
                       embedder=same_vector)
for _ in range(2 * SIMULATIONS):
    forced.simulate()
    if forced.counts["nodes_added"] >= 3:
        break
added = pd.DataFrame([{"simulation": s.index, "added": len(s.added),
                       "new candidates": " | ".join(n.text for n in s.new_nodes if n.uid in s.added)}
                      for s in forced.trace.simulations if s.added],
                     columns=["simulation", "added", "new candidates"])
print(f"node addition fired in {len(added)} of {len(forced.trace.simulations)} simulations")
added

# %% [markdown]
# ## What to take away
#
# * Back-up is a running mean: values flow from the leaf to the root along the path just walked.
# * The similarity update lets one evaluation count, a little, for near-duplicate siblings, so the
#   search spends fewer simulations re-judging the same idea in other words.
# * Node addition is a safety valve for when every option so far looks bad and they all say the
#   same thing. Notebook 04 puts forward, evaluation and backward together with the rewind.
