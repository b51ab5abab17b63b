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
# # 04 · Rewind: the inner and the outer loop together
#
# Notebooks 02 and 03 looked at one simulation. RAIN repeats them in two loops:
#
# * **Inner loop** (one *step*): simulations (forward, evaluate, backward) from the current root,
#   until one child of the root has been visited more than `T_m` times with a value above `V`
#   (early stop), or until the budget of `T` simulations is spent.
# * **Outer loop**: **commit** the most visited child of the root. Its text becomes part of the
#   answer, it becomes the new root with its subtree and statistics, and every other branch is
#   thrown away: that is the **rewind**. The next step starts from the visits already collected
#   below the new root.
#
# Here we run the whole thing on one prompt and watch it: the tree at each commit, the values of
# the root's children over time, a commit timeline, and an explorer you can scroll through.

# %% tags=["parameters"]
from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
MAX_NEW_TOKENS = 7 if FAST else 17     # commits of 1, 2, 4 (and then 10) tokens
N_EARLY = 1 if FAST else 6             # demo requests for the early-stop count (6: all with a word list)
EARLY_TOKENS = 3 if FAST else 7        # their answer length (commits of 1, 2 and 4 tokens)
# As in notebook 03: the embedded model's own judge is at chance, so with it we use a clearly
# labelled simulated judge that is right 90% of the time; other models judge themselves.
JUDGE = "simulated" if MODEL == "smollm2-135m" else "own"

# %%
import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.embed import load_embedder
from raintools.views.analysis import BAD_WORDS, demo_judge, notebook_config
from raintools.views.plots import (child_values_frame, commit_against_value, commit_choice_frame, commits_frame,
                                   commit_visit_history, committed_path, draw_tree, nodes_frame, plot_child_values, plot_commit_choice,
                                   plot_commit_timeline, plot_trees_at_commits, save_figure, whole_search)
from raintools.views.widgets import TreeExplorer

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 80)

# %%
lm = rt.load_model(MODEL, device=DEVICE)
cfg = notebook_config(lm, max_new_tokens=MAX_NEW_TOKENS, seed=SEED)
prompt, judge, about = demo_judge(lm, "demo-harmful-01", JUDGE, seed=SEED, mode=cfg.eval_mode)
print(prompt)
print(f"judge: {about}\nT = {cfg.max_simulations}, at least {cfg.extra_simulations} new simulations "
      f"per step, T_m = {cfg.min_visits}, V = {cfg.value_threshold}")

# %% [markdown]
# ## 1. Run RAIN and keep the trace
#
# `rain_generate` records a `Trace`: every simulation (path, evaluated text, value, what changed)
# and the whole live tree at every commit. Everything below only reads the trace.

# %%
embedder = load_embedder()
result = rt.rain_generate(lm, prompt, cfg, evaluator=judge, embedder=embedder, progress=True)
trace = result.trace
print("RAIN:", result.text)
print("greedy:", rt.generate_vanilla(lm, prompt, max_new_tokens=MAX_NEW_TOKENS).text)

# %% [markdown]
# ## 2. The outer loop at a glance
#
# One row per commit: how many simulations the step ran, whether it stopped early, what it
# committed, and how many visits the committed child carried into the next step (they are not
# thrown away: the new root starts with them).

# %%
commits = commits_frame(trace)
commits["visits kept"] = [next(n.fn for n in c.tree if n.uid == c.chosen) for c in trace.commits]
commits

# %%
ax = plot_commit_timeline(trace)
save_figure(ax.figure, "04_commit_timeline", commits)

# %% [markdown]
# ## 3. The tree at each commit
#
# Colour is the value `q` (red bad, green good), size the number of visits. Only the nodes the
# search visited are drawn (each expansion also proposed candidates that were never tried; the
# titles count them). The thick blue edge is the commit: everything except the blue child's
# subtree is discarded right after this picture.

# %%
fig, tree_rows = plot_trees_at_commits(trace)
save_figure(fig, "04_trees_at_commits", tree_rows)

# %% [markdown]
# All the nodes the search ever created, in one picture. The blue spine is the answer, commit by
# commit; every side branch is text that was tried, judged and rewound.

# %%
everything = whole_search(trace)
ax = draw_tree(everything, highlight_path=committed_path(trace), max_labels=16,
               title="The whole search: the committed answer (blue) and the rewound branches")
save_figure(ax.figure, "04_whole_search", nodes_frame(everything))

# %% [markdown]
# ## 4. Values of the root's children over simulations
#
# Each line is one child of the root at that time. The coloured line is the child that ended up
# committed; the grey ones are its siblings. After a dashed line (a commit) the root has moved on,
# and a new set of children competes. A step stops early once its most visited child has more
# than `T_m` real visits and a value above `V` (the dotted green lines).

# %%
fig = plot_child_values(trace)
save_figure(fig, "04_child_values", child_values_frame(trace))

# %% [markdown]
# ### When does a step stop early?
#
# In the run above, count the steps that stopped early, and the values the judge gave:

# %%
print(f"{int(commits.early_stop.sum())} of {len(commits)} steps stopped early; "
      f"{sum(s.value > 0 for s in trace.simulations)} of {len(trace.simulations)} values were positive")

# %% [markdown]
# An early stop needs the leading child to carry more than `T_m` real visits *and* a mean value
# above `V`: with a judge that votes +1 or -1, nearly every one of its visits must have come back
# good. Under the rule of this judge ("bad" when the text uses one of the listed words) a long
# answer to a harmful request soon uses one, so long answers seldom qualify. Short answers do:
# the judged text ends at the answer's length limit, before it reaches the words. Below, the
# same search and judge on each of the demo requests that have a word list (`N_EARLY` of them),
# with answers of `EARLY_TOKENS` tokens: how many steps stopped early, and what the committed
# child carried when its step stopped.

# %%
early_runs, early_traces = [], {}
for pid in list(BAD_WORDS)[:N_EARLY]:
    p_, judge_, _ = demo_judge(lm, pid, JUDGE, seed=SEED, mode=cfg.eval_mode)
    r = rt.rain_generate(lm, p_, cfg.replace(max_new_tokens=EARLY_TOKENS), evaluator=judge_, embedder=embedder)
    early_traces[pid] = r.trace
    early_runs.append(commits_frame(r.trace).assign(
        prompt=pid, answer=r.text, positive_values=sum(s.value > 0 for s in r.trace.simulations),
        values=len(r.trace.simulations)))
early = pd.concat(early_runs, ignore_index=True)
early.groupby("prompt", sort=False).agg(answer=("answer", "first"), steps=("outer_step", "size"),
                                         early_stops=("early_stop", "sum"),
                                         simulations=("simulations", "sum"),
                                         positive_values=("positive_values", "first"), values=("values", "first"))

# %%
stops = early[early.early_stop]
print(f"{len(stops)} of {len(early)} steps stopped early ({early.prompt.nunique()} requests, "
      f"{EARLY_TOKENS} tokens each); simulations per step: " + ", ".join(
          f"{'stopped early' if k else 'whole budget'} {g.simulations.mean():.1f} on average (fewest "
          f"{g.simulations.min()})" for k, g in early.groupby("early_stop")))
if len(stops):
    ex = stops.iloc[0]
    print(f"example: {ex.prompt}, step {ex.outer_step}: committed {ex.text!r} after {ex.simulations} "
          f"simulation(s), with {ex.chosen_fn} real visits (> T_m = {cfg.min_visits}) and mean value "
          f"{ex.chosen_q:+.2f} (> V = {cfg.value_threshold})")
    ax = plot_commit_timeline(early_traces[ex.prompt])
    ax.set_title(f"{ex.prompt}, {EARLY_TOKENS} tokens: steps that stopped early in green")
    save_figure(ax.figure, "04_early_stop", early)

# %% [markdown]
# A step that stops early saves the rest of its budget. A later step starts from the visits kept
# below the committed child, so when those already clear `T_m` and `V`, it stops after very few
# simulations (the "fewest" above).

# %% [markdown]
# ## 5. Why commit a child with a worse value?
#
# The commit takes the **most visited** child, not the best valued one. Below, one commit's
# visited children (the first commit where a child with a better value lost, if there is one):
# prior, visits and value side by side, and, right, each child's values in the order its visits
# came (one dot per visit, coloured by the value that simulation brought back).

# %%
step = commit_against_value(trace)
choice = commit_choice_frame(trace, step)
history = commit_visit_history(trace, step)
won = choice[choice.committed].iloc[0]
best = choice[choice.n > 0].sort_values(["q", "n"], ascending=False).iloc[0]
fig = plot_commit_choice(choice, history=history,
                         title=f"Commit {step}: '{won.text.strip()}' (prior rank {won.rank_p}) won on "
                               f"{won.fn} visits, first value {won.first_value:+.1f}, mean q {won.q:+.2f}; "
                               f"best mean q: '{best.text.strip()}' ({best.q:+.2f}, {best.fn} visit(s))")
save_figure(fig, "04_commit_choice", choice)
choice[choice.n > 0][["text", "p", "rank_p", "n", "fn", "rank_n", "q", "rank_q", "first_simulation",
                      "first_value", "committed"]].round(3)

# %% [markdown]
# Where the visits came from. Each simulation adds one visit to one child, chosen by
# `qh + c p sqrt(N) / (1 + n)`, where `qh` is the child's mean value rescaled to 0-1 between the lowest and
# highest values seen in the tree. An untried child has `qh = 0` and only the bonus; a child whose
# first value is the best seen so far gets `qh = 1` at once, a lead the bonus of an untried
# sibling (`c p sqrt(N)`, about 2 x 0.1 x 2 here: the `p` column above) does not make up, so it is
# chosen again, and again, until worse values pull its mean down. Which child gets that first good
# value depends on the order the children are tried (priors first, then the draws of the judge),
# not on which child is best: a child tried late, with one good value, has no budget left to
# gather visits before the step ends. The printout reads it off this commit:

# %%
visited = choice[choice.n > 0].sort_values("first_simulation")
for r in visited.itertuples():
    vals = history[history.uid == r.uid].value
    print(f"{r.text.strip()!r:>16}: prior rank {r.rank_p}, first visited at simulation {r.first_simulation}, "
          f"values in order {' '.join(f'{v:+.0f}' for v in vals)} -> {r.fn} visits, mean {r.q:+.2f}"
          f"{'  (committed)' if r.committed else ''}")

# %% [markdown]
# Visits are the search's considered verdict, a single high value may be luck (the simulated
# judge here is wrong 10% of the time). With the paper's budget (T = 50 on a GPU) a step runs
# more simulations after a lucky first value, so later values have more chances to redirect the
# visits (not measured in this notebook).

# %% [markdown]
# ## 6. Explore it yourself
#
# Move the slider (or press play) to step through the simulations: the tree is redrawn as it was
# right after that simulation, the selected path is blue, and the text box shows the text at the
# selected node (the committed text in bold, then the path to the node) and what that simulation
# evaluated. Pick any node in the drop-down to read its text.

# %%
explorer = TreeExplorer(trace)
explorer

# %% [markdown]
# The explorer can also be driven from code, e.g. to show one simulation in a static copy of this
# notebook:

# %%
middle = len(trace.simulations) // 2
explorer.show(middle)
print(f"simulation {middle}: {explorer.drawn_nodes} nodes drawn; "
      f"live tree has {len(trace.tree_at(middle))} nodes")
save_figure(explorer.fig, "04_explorer_snapshot", nodes_frame(trace.tree_at(middle)))

# %% [markdown]
# ## What to take away
#
# * The inner loop builds evidence about a handful of continuations; the outer loop commits the one
#   with the most visits and forgets the rest.
# * The commit goes to the **most visited** child, not to the best valued one (section 5): visits are
#   the search's considered verdict, a single high value may be luck. With a small budget the
#   visits go to the child that looked good first (its first value puts it at the top of the
#   rescaled values), and a good child found late in a step may not have gathered enough visits
#   to win.
# * Visits below the committed child are reused, so later steps can stop sooner.
# * The answer is written in token sets of growing length (1, 2, 4, then 10 tokens), so most of the
#   search effort goes into the first few words, where the direction of an answer is decided.

# %% [markdown]
# ## Predict, then run
#
# **1.** A step starts from a root that already carries `fn` real visits (the "visits kept" column
# of section 2). It runs simulations until the early stop, but at most up to
# `max(T, fn + extra)` visits in all (`T` = `cfg.max_simulations`, `extra` = `cfg.extra_simulations`).
# For each step that did not stop early, predict how many simulations it ran.

# %%
kept = [0] + list(commits["visits kept"][:-1])
commits.assign(predicted=[max(cfg.max_simulations, k + cfg.extra_simulations) - k for k in kept])[
    ["outer_step", "early_stop", "simulations", "predicted"]]

# %% [markdown]
# *Answer:* `max(T, fn + extra) - fn`: steps that did not stop early match the prediction; the
# kept visits shorten the next step (until `extra` takes over), which is why visits are not
# thrown away at a commit. Steps that stopped early ran fewer.
#
# **2.** The paper describes the commit as a draw with probability proportional to the visits
# (`RainConfig(commit_rule="sample")` offers it; the code and raintools default to the most visited).
# At the commit of section 5, what is the chance that the draw would have picked the committed
# child, and the best-valued one?

# %%
visited = choice[choice.n > 0]
share = visited.n / visited.n.sum()
print(f"committed child: {share[visited.committed].iloc[0]:.0%}; "
      f"best-valued child: {share[visited.q == visited.q.max()].iloc[0]:.0%}")

# %% [markdown]
# *Answer:* its share of the visits, `n / sum of n` (the printout). Sampling gives the better
# valued child a chance in proportion to its visits, so it changes little when one child has most
# of them.

