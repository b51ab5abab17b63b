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
#    its mean value towards `v`: `n += 1`, `q += (v - q) / n` (no discount).
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
N_SIM = 2 if FAST else 8               # AdvBench requests searched for similarity updates (section 2)
SHORT_TOKENS = 3 if FAST else 7        # their answer length: commits of 1, 2 and 4 tokens

# %%
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

import raintools as rt
from raintools.embed import load_embedder
from raintools.tree import Bounds, Node, backup, needs_node_addition, similarity_update
from raintools.views import analysis as A
from raintools.views.plots import (plot_backup, plot_node_addition_timeline, plot_sibling_similarity,
                                   plot_similarity_counts, save_figure)
from raintools.views.widgets import show_source

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 80)

# %%
lm = rt.load_model(MODEL, device=DEVICE)
embedder = load_embedder()
cfg = A.notebook_config(lm, max_new_tokens=MAX_NEW_TOKENS, seed=SEED, **BUDGET)
prompt, judge, about = A.demo_judge(lm, "demo-harmful-01", JUDGE, seed=SEED, mode=cfg.eval_mode)
print(prompt)
print("judge:", about)

# %% [markdown]
# We run some simulations one at a time with `RainSearch.simulate()`; the trace records what each
# one changed.

# %%
search = rt.RainSearch(lm, prompt, cfg, evaluator=judge, embedder=embedder)
for _ in tqdm(range(SIMULATIONS), desc="simulations"):
    search.simulate()
trace = search.trace
pd.DataFrame([{"simulation": s.index, "path length": len(s.path), "value": s.value,
               "from memo": s.memo_hit, "evaluated text": s.evaluated_text}
              for s in trace.simulations])

# %% [markdown]
# ## 1. Back-up along the path
#
# The paper's rule, for every node $s$ on the path just walked, with the value $v$ of the leaf:
#
# $$n(s) \leftarrow n(s) + 1, \qquad q(s) \leftarrow q(s) + \frac{v - q(s)}{n(s)}$$
#
# a running mean without discount. Here it is as the package runs it (`raintools.tree.backup`);
# `fn` counts real visits only (`n` also gets the fractional ones of the similarity update), and
# the root keeps the bounds that `select_child` normalises values with:

# %%
show_source(backup)

# %% [markdown]
# Pick the simulation whose value moved the path's values the most (among paths at least three
# nodes long) and compare each node's statistics just before and just after it. Every node on the
# path gets `n + 1`, and its `q` moves a step `(v - q) / n` towards `v`: big steps for nodes with
# few visits, small steps for the root, which has seen everything.

# %%
chosen = A.most_moving_simulation(trace)
print(f"simulation {chosen}: value v = {trace.simulations[chosen].value:+.2f}")
table = A.backup_table(trace, chosen)
table[["role", "depth", "text", "v", "n_before", "q_before", "n_after", "q_after", "weight"]].round(3)

# %%
ax = plot_backup(table)
save_figure(ax.figure, "03_backup", table)

# %% [markdown]
# ## 2. The similarity update
#
# Texts that mean nearly the same thing should get nearly the same value. After the back-up, for
# each node $s$ on the path, every sibling $s'$ whose embedding $e$ (all-MiniLM-L6-v2, a running
# mean over the texts evaluated through the node) is close enough, $\cos(e_s, e_{s'}) \ge 0.95$,
# receives a fractional visit of weight $w = \gamma \cos(e_s, e_{s'})$ with $\gamma = 0.2$:
#
# $$q(s') \leftarrow \frac{q(s')\, n(s') + w\, v}{n(s') + w}, \qquad n(s') \leftarrow n(s') + w$$

# %%
show_source(similarity_update)

# %% [markdown]
# How alike are siblings in practice? Left: the cosine similarity of every pair of siblings that
# both have an embedding, anywhere in the tree, by depth. Right: the sibling group with the most
# pairs at or above the threshold (or, when none reaches it, the group with the most similar
# pair), the diagonal (a sibling with itself) masked.

# %%
pairs = A.sibling_similarities(search)
group = A.most_similar_group(pairs, cfg.sim_threshold)
fig = plot_sibling_similarity(pairs, group, threshold=cfg.sim_threshold, gamma=cfg.sim_gamma)
save_figure(fig, "03_similarity_heatmap", pairs)
pairs.groupby("depth").cosine.agg(["count", "mean", "max"]).round(3)

# %% [markdown]
# Who was updated, and by how much, over the whole run (`similarity_updates` reads the trace):

# %%
updates = A.similarity_updates(trace)
print(f"{len(updates)} similarity updates in {len(trace.simulations)} simulations; "
      f"{(pairs.cosine >= cfg.sim_threshold).sum()} of {len(pairs)} sibling pairs at or above {cfg.sim_threshold}")
updates.head(10)

# %% [markdown]
# The threshold is strict: siblings are different continuations of the same text, and their
# embeddings rarely come within 0.95 of each other in a search like the one above (the counts
# say whether it fired here). Its effect is small by design (a fifth of a visit at most): a nudge
# for near-duplicates, not a verdict.
#
# ### Where it fires on real text
#
# A node's embedding is that of the text *from the node down* to the end of what was judged, not
# of the whole answer. With short answers (`SHORT_TOKENS` tokens: token sets of 1, 2 and 4, the
# completion cut at the length limit), a 4-token node's text is little more than its own tokens,
# and two samples that differ by a comma or one word embed almost alike. Below, notebook 07's
# search (the paper's rules with its CPU budget: up to 12 simulations per step, clause
# completions of up to 6 tokens) and its simulated judge (right 90% of the time, with a word
# rule for harmful requests) answer the first `N_SIM` AdvBench requests (our own demo requests
# where AdvBench is not installed), and we count the updates in each search's trace.

# %%
from raintools.experiments.data import data_root
from raintools.experiments.tasks import get_task
from raintools.views import studies as st

task, truth = get_task("harmless"), st.KeywordTruth()
requests = task.load("advbench" if data_root() is not None else "demo-harmful", limit=N_SIM)
short = cfg.replace(max_new_tokens=SHORT_TOKENS, **st.cpu_budget(FAST, simulations=12))
short_runs = {it.id: rt.rain_generate(lm, task.prompt(it), short, embedder=embedder,
                                      evaluator=rt.SimulatedJudge(truth, accuracy=0.9, seed=SEED))
              for it in tqdm(requests, desc="searches")}
fired = pd.DataFrame([dict(request=i, answer=r.text, simulations=len(r.trace.simulations),
                           similarity_updates=len(A.similarity_updates(r.trace)),
                           highest_cosine=A.similarity_updates(r.trace).cosine.max())
                      for i, r in short_runs.items()])
save_figure(plot_similarity_counts(fired, threshold=short.sim_threshold).figure, "03_similarity_fired", fired)
fired.round(3)

# %%
n_fired = int((fired.similarity_updates > 0).sum())
print(f"the similarity update fired in {n_fired} of {len(fired)} searches, "
      f"{int(fired.similarity_updates.sum())} updates in {int(fired.simulations.sum())} simulations")

# %% [markdown]
# One of those updates, read from its search's trace (`backup_table`: the path just backed up
# with the value `v`, and the sibling that got the fractional visit of weight `w`):

# %%
if n_fired:
    ex_id = fired[fired.similarity_updates > 0].request.iloc[0]
    ex_trace = short_runs[ex_id].trace
    ex = A.similarity_updates(ex_trace).iloc[0]
    ex_table = A.backup_table(ex_trace, int(ex.simulation))
    nodes = ex_trace.tree_at(int(ex.simulation))
    print(f"{ex_id}, simulation {int(ex.simulation)}: node {nodes[int(ex.node)].text!r} and its sibling "
          f"{nodes[int(ex.sibling)].text!r}: cosine {ex.cosine:.3f} >= {short.sim_threshold}, "
          f"w = {ex.weight:.3f}; judged text: {ex_trace.simulations[int(ex.simulation)].evaluated_text!r}")
    display(ex_table[ex_table.uid.isin([int(ex.node), int(ex.sibling)])][
        ["role", "text", "v", "weight", "n_before", "q_before", "n_after", "q_after"]].round(3))

# %% [markdown]
# ## 3. When dynamic node addition fires
#
# The test runs at each node the forward walk passes. It needs, all at once:
# * fewer than 20 children, every one with an embedding (every child tried at least once),
# * the norm of the per-dimension variance of the children's embeddings below
#   `0.03 x token-set length` of the node's level (the candidates say nearly the same thing),
# * every child with `q < 0` (they all look bad).

# %%
show_source(needs_node_addition)

# %% [markdown]
# In the search above (a `variance_norm` of NaN means not every child has been tried yet):

# %%
A.node_addition_table(search).round(4).head(12)

# %% [markdown]
# Now give a search a judge that finds **everything** bad (a deliberately broken, simulated judge),
# and only 3 candidates per expansion so that all children get tried within a few simulations.
# Every `q` becomes negative, so only the similarity condition decides. We follow the root: before
# each simulation, what does the test see there, and did the simulation add a child?

# %%
everything_bad = rt.SimulatedJudge(lambda q, r: False, accuracy=1.0)
gloomy = rt.RainSearch(lm, prompt, cfg.replace(num_candidates=3), evaluator=everything_bad,
                       embedder=embedder)
timeline = A.node_addition_timeline(gloomy, SIMULATIONS, progress=True)
fig = plot_node_addition_timeline(timeline)
save_figure(fig, "03_node_addition", timeline)

# %%
added = int(timeline.added.sum())
print(f"the root went from {gloomy.cfg.num_candidates} to {len(gloomy.root.children)} children: "
      f"{added} added at the root in {len(timeline)} simulations, "
      f"{gloomy.counts['nodes_added']} in the whole tree")
timeline[timeline.added > 0].round(4).head(10)

# %% [markdown]
# Reading the figure: while a new child has not been tried, the test cannot run (grey). Once every
# child has been judged, the variance norm of the root's children sits close to the threshold
# (0.03 at the root, whose candidates are single tokens): each embedding is a running mean over the
# texts evaluated through that child, so repeated visits pull the children's embeddings together and
# the norm drifts down; when it drops below the line while everything looks bad, a child is added,
# its first text pushes the norm up again, and the cycle repeats. With a judge that finds every
# answer bad, addition is frequent (the counts above): it is the search's way out when all
# options look bad and alike. With a judge that likes some child, a node with any child valued
# 0 or above fails the `q < 0` condition and gets nothing added (the `all_negative` and `fires`
# columns of section 3's first table).

# %% [markdown]
# ## What to take away
#
# * Back-up is a running mean: values flow from the leaf to the root along the path just walked.
# * The similarity update lets one evaluation count, a little, for near-duplicate siblings: it is
#   meant to spare the search re-judging the same idea in other words (a saving not measured here;
#   notebook 07's ablation compares the search with and without it). At the 0.95 threshold it is
#   rare: the counts above say how rare in this run.
# * Node addition is a safety valve for when every option so far looks bad and they all say the
#   same thing. Notebook 04 puts forward, evaluation and backward together with the rewind.

# %% [markdown]
# ## Predict, then run
#
# **1.** A node has `n = 3` visits and `q = 0.5`. A simulation through it brings back `v = -1`.
# What are its new `n` and `q`?

# %%
root = Node(tokens=(), n=3, fn=3, q=0.5)
node = Node(tokens=(1,), parent=root, n=3, fn=3, q=0.5)
backup([root, node], -1.0, Bounds())
print(f"n = {node.n:g}, q = {node.q:+.3f}")

# %% [markdown]
# *Answer:* `n = 4`, `q = 0.5 + (-1 - 0.5) / 4 = +0.125`. One bad value moves a node with three
# visits a quarter of the way to -1.
#
# **2.** Its sibling has `n = 2`, `q = -1` and an embedding with cosine similarity 0.97 to the
# node's. After the node is backed up with `v = +1`, what do the sibling's `n` and `q` become?

# %%
a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.97, (1 - 0.97**2) ** 0.5])
parent = Node(tokens=())
node, sib = Node(tokens=(1,), parent=parent, embedding=a), Node(tokens=(2,), parent=parent, n=2, q=-1.0, embedding=b)
parent.children = [node, sib]
similarity_update(node, 1.0, gamma=0.2, threshold=0.95)
print(f"sibling: n = {sib.n:.3f}, q = {sib.q:+.3f}")

# %% [markdown]
# *Answer:* `w = 0.2 x 0.97 = 0.194`, so `n = 2.194` and `q = (-1 x 2 + 0.194 x 1) / 2.194 = -0.823`:
# a fifth of a visit's worth of evidence.
#
# **3.** The threshold grows with the token-set length (0.03 per token), the variance norm of
# sentence embeddings does not. Had the root's candidates been 10-token sets (threshold 0.3), in
# how many of the simulations above where the test could run would the similarity condition have
# held?

# %%
ran = timeline.dropna(subset=["variance_norm"])
for factor in (1, 10):
    print(f"threshold {factor * timeline.threshold.iloc[0]:g}: the norm was below it in "
          f"{(ran.variance_norm < factor * ran.threshold).sum()} of {len(ran)} simulations")

# %% [markdown]
# *Answer:* in all of them: the norms above are far below that (at most 0.055 in the committed full
# run, `figures/03_node_addition.csv`; the cell counts this run). At the longer
# levels the similarity condition is nearly always met, and what decides is whether every child
# looks bad.
