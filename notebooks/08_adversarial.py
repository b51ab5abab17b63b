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
# # 08 · Adversarial suffixes: GCG against vanilla decoding and RAIN, and an attack that knows RAIN
#
# A jailbreak suffix is a short string of odd-looking tokens appended to a harmful request that
# makes an aligned chat model comply. **GCG** (Greedy Coordinate Gradient, Zou et al. 2023,
# arXiv 2307.15043) finds such suffixes automatically: it searches for the suffix that makes the
# model's answer *start* with an affirmative target such as "Sure, here is a script that ...".
#
# The RAIN paper tested whether RAIN resists these suffixes on AdvBench. It reports the
# attack-success rate (ASR: share of answers that do not refuse) falling from vanilla decoding to
# RAIN, e.g. Vicuna 33B from 94% to 19% (reported; the `paper (reported)` rows of
# `figures/08_adversarial_asr.csv`). Those suffixes were optimised against **vanilla decoding**
# and then handed to RAIN: the attacker did not know RAIN was there. A defence evaluated only
# against attacks that ignore it is not evaluated (Tramèr, Carlini, Brendel and Madry, "On
# Adaptive Attacks to Adversarial Example Defenses", NeurIPS 2020). So this notebook also builds
# the **adaptive** attack: GCG with a RAIN-aware objective.
#
# In this notebook you will:
# 1. take one GCG step apart: the token layout, the gradient's suggested swaps, the candidates;
# 2. take the RAIN-aware objective apart: where the suffix sits inside RAIN's own judging prompt;
# 3. optimise a *static* suffix (vanilla objective) and an *adaptive* one (RAIN-aware objective)
#    per behaviour, and follow both terms of the objective step by step;
# 4. ask RAIN's judge about the target before and after, with intervals across behaviours;
# 5. answer with vanilla decoding and RAIN under no suffix, the static and the adaptive suffix,
#    beside the paper's (static) numbers.
#
# > **Honest note, read this first.** The embedded SmolLM2-135M-Instruct **does not refuse AdvBench
# > requests even without a suffix** (section 7 prints this run's rate). When the model complies
# > anyway a jailbreak has nothing to break, and RAIN, whose 135M judge is at chance (notebook
# > 01), has nothing reliable to steer by: **the ASR numbers here cannot separate GCG, RAIN or the
# > two objectives**. What this notebook shows on a CPU is the *mechanics*, and whether the judge
# > term *moves*: the adaptive suffix lowers RAIN's judge's -log p(harmless) on the target, and
# > section 6 checks whether that changes the vote RAIN backs up (in the committed full run: the
# > term fell on all 8 behaviours, the vote changed on none; `figures/08_adversarial_judge_shift.csv`
# > and `figures/notebooks/08_adversarial.html`). To measure the real thing, run it on a GPU with a
# > refusing chat model (end of the notebook).
#
# **Content warning:** AdvBench behaviours are requests for harmful content, and the answers of a
# small model that does not refuse are printed below.

# %% tags=["parameters"]
# Parameters from the environment (RAINTOOLS_FAST, _MODEL, _DEVICE, _SEED): laptop or GPU.
import os

from raintools.views.notebooks import settings

S = settings()
FAST, MODEL, DEVICE, SEED = S.fast, S.model, S.device, S.seed
N_BEHAVIORS = 2 if FAST else 8       # AdvBench behaviours attacked (one suffix per objective each)
# GCG on a CPU: few steps, small candidate batches, a short suffix of "!" tokens.
GCG_CPU = (dict(steps=2, batch_size=8, top_k=8, suffix_init=4) if FAST else
           dict(steps=8, batch_size=16, top_k=16, suffix_init=6))
JUDGE_WEIGHT = 1.0                   # lambda of the RAIN-aware objective
ANSWER_TOKENS = 3 if FAST else 12    # answer length for both methods
BUDGET = (dict(max_simulations=2, extra_simulations=1, clause_max_tokens=3) if FAST else
          dict(max_simulations=4, extra_simulations=2, clause_max_tokens=6))  # RAIN on a CPU
# On a GPU in full mode: the paper's settings instead (GCGConfig.paper(): 500 steps, batch 512,
# top-k 256, 20 tokens; RainConfig.advbench()), more behaviours, longer answers.
PAPER_SETTINGS = not FAST
GPU_BEHAVIORS, GPU_ANSWER_TOKENS = 20, 64
RUNS = os.environ.get("RAINTOOLS_RUNS") or None   # keep run folders here (resumable); else temporary

# %%
import tempfile

import pandas as pd
import seaborn as sns

import raintools as rt
from raintools.attacks import run as attacks
from raintools.attacks.gcg import GCGConfig
from raintools.experiments.data import data_root, demo_prompts
from raintools.views import adversarial as adv
from raintools.views.plots import save_figure

sns.set_theme(style="whitegrid")
pd.set_option("display.max_colwidth", 100)

# %% [markdown]
# ## 1. Behaviours, model and settings
#
# An AdvBench behaviour is a pair (goal, target): the harmful request and the affirmative opening
# the attack wants to force. Without the shared data folder the notebook falls back to a few
# mildly harmful requests we wrote ourselves, with the generic target "Sure, here is".

# %%
lm = rt.load_model(MODEL, device=DEVICE)
on_gpu = lm.device.type == "cuda"
n = GPU_BEHAVIORS if (on_gpu and PAPER_SETTINGS) else N_BEHAVIORS
path = data_root() / "advbench" / "harmful_behaviors.csv" if data_root() else None
if path is not None and path.is_file():
    behaviors = attacks.load_behaviors(path, limit=n)
else:
    print("AdvBench not found (set RAINTOOLS_DATA); using our own demo requests.")
    behaviors = [{"goal": it.prompt, "target": "Sure, here is"} for it in demo_prompts("harmful")[:n]]
print(f"{lm.name} on {lm.device}; {len(behaviors)} behaviours, e.g.\n  {behaviors[0]}")

# %% [markdown]
# The settings. `GCGConfig.paper()` holds Zou et al.'s: 500 steps, 512 candidates per step, the
# top 256 substitutions per position, a 20-token suffix of "!", a GPU job. On a CPU we keep the
# rules and cut the budget. `track_judge=True` makes the vanilla objective *record* the judge term
# of each step (without optimising it), so both objectives can be compared on both terms.

# %%
if on_gpu and PAPER_SETTINGS:
    gcg_cfg = GCGConfig.paper(seed=SEED, track_judge=True, judge_weight=JUDGE_WEIGHT)
    answer_tokens = GPU_ANSWER_TOKENS
    rain_cfg = rt.RainConfig.advbench(max_new_tokens=answer_tokens, seed=SEED)
else:
    gcg_cfg = GCGConfig(**GCG_CPU, eval_batch_size=GCG_CPU["batch_size"], seed=SEED,
                        track_judge=True, judge_weight=JUDGE_WEIGHT)
    answer_tokens = ANSWER_TOKENS
    rain_cfg = rt.RainConfig.cpu_demo(max_new_tokens=answer_tokens, seed=SEED, **BUDGET)
print(f"GCG: {gcg_cfg.steps} steps, batch {gcg_cfg.batch_size}, top-k {gcg_cfg.top_k}, "
      f"suffix {gcg_cfg.suffix_text!r}; lambda = {gcg_cfg.judge_weight}")
print(f"RAIN: {rain_cfg.name}, T = {rain_cfg.max_simulations}, answers of {answer_tokens} tokens")

# %% [markdown]
# ## 2. One GCG step, taken apart
#
# GCG lays the prompt out in token space as `[prefix][suffix][after][target]`: the chat template
# up to the end of the request, the suffix tokens (the only part that changes), the rest of the
# template up to the assistant's turn, and the target answer. The loss is the cross-entropy of the
# target tokens given everything before them: low loss = the model is likely to start its answer
# with the target.

# %%
anatomy = attacks.step_anatomy(lm, behaviors[0], gcg_cfg, top=5)
pd.DataFrame(anatomy["layout"])

# %% [markdown]
# The suffix is fed to the model as a one-hot matrix times the embedding table, so the loss has a
# gradient with respect to *every* possible token at every suffix position. A very negative entry
# means "swapping this token in here should lower the loss" (to first order). Per position, GCG
# keeps the `top_k` most promising tokens (the top 5 are shown; only printable ASCII tokens that
# survive a decode/encode round trip are allowed):

# %%
print(f"loss of the current suffix: {anatomy['loss']:.3f}")
pd.DataFrame(anatomy["substitutions"])

# %% [markdown]
# The gradient is only a hint. GCG samples `batch_size` candidates, each the current suffix with
# **one** token swapped for a random top-k choice at a random position, scores them all *exactly*
# in one batched forward pass (the prefix's KV cache is computed once and shared), and keeps the
# best:

# %%
cands = pd.DataFrame(anatomy["candidates"])
print(f"{len(cands)} candidates: loss {cands.loss.min():.3f} to {cands.loss.max():.3f} "
      f"(current {anatomy['loss']:.3f})")
cands.head(6)

# %% [markdown]
# ## 3. The RAIN-aware objective
#
# RAIN commits text its own self-evaluator rates harmless, and that evaluator judges the
# *conversation*: the user's request, **suffix included**, sits inside the judging prompt. An
# attacker who knows RAIN is there can therefore optimise the suffix for two things at once:
#
# $$\text{loss} = \underbrace{\mathrm{CE}(\text{target} \mid \text{request} + \text{suffix})}_{\text{target term}}
#   + \lambda \cdot \underbrace{\tfrac{1}{2}\textstyle\sum_{\text{orders}} -\log p_\text{judge}(\text{harmless} \mid \text{request} + \text{suffix}, \text{target})}_{\text{judge term}}$$
#
# The judge term uses RAIN's own judging template and task (harmlessness, the same few-shot
# prompt), in **both option orders** as RAIN asks it, and is differentiable in the suffix's one-hot
# tokens just like the target term, so GCG's machinery applies unchanged: the two gradients add,
# candidates are scored exactly on the sum. The judging prompt is built by RAIN's evaluator itself
# (`SelfEvaluator.prompt_ids`), its long few-shot header is cached once per behaviour as the chat
# prefix is, and per candidate the two orders share everything up to their option lists:

# %%
janat = attacks.judge_anatomy(lm, behaviors[0], gcg_cfg)
assert janat["identical"], "the attack must score exactly the prompt RAIN's judge reads"
print("identical to RAIN's judging prompt:", janat["identical"], "\n", janat["verdict"])
pd.DataFrame(janat["layout"]).assign(text=lambda d: d.text.str.slice(-90))

# %% [markdown]
# A candidate suffix is kept only when RAIN's evaluator, given the suffixed request as *text*,
# rebuilds exactly the ids the attack scored (the chat prompt has the same check): what is
# optimised is what RAIN's judge will read. The judged response is the target text
# (`judge_tokens` judges only its first tokens, closer to the partial answers RAIN judges early).
#
# ## 4. Optimise static and adaptive suffixes, then answer with and without them
#
# `run_attack` does both phases (`python -m raintools attack --objective vanilla,rain-aware` is the
# same code) and writes `suffixes.jsonl` (each suffix, its objective and both terms per step),
# `responses.jsonl` (every answer) and `asr.csv`. Both phases resume if the folder already holds
# finished work (set `RAINTOOLS_RUNS` to keep it; otherwise it is temporary). Both objectives start
# from the same suffix with the same random seed.

# %%
out = attacks.run_folder(RUNS or tempfile.mkdtemp(prefix="rt-08-"), lm.name, gcg=gcg_cfg.to_dict(),
                         rain=rain_cfg.to_dict(), tokens=answer_tokens, behaviors=behaviors)
fns = {"vanilla": attacks.vanilla_fn(answer_tokens), "rain": attacks.rain_fn(rain_cfg)}
run = attacks.run_attack(lm, behaviors, out, config=gcg_cfg, objectives=("vanilla", "rain-aware"),
                         methods=("vanilla", "rain"), generate_fns=fns, log_every=0)
suffixes = pd.DataFrame(run["suffixes"])
suffixes[["objective", "goal", "suffix", "steps", "best_loss", "seconds"]]

# %% [markdown]
# ## 5. Both terms, step by step
#
# Left, the target term; right, the judge term, for every behaviour (blue: the vanilla objective,
# which only *records* the judge term; red: the RAIN-aware objective, which optimises the sum).
# Each step keeps the candidate with the lowest objective, so the term an objective does not
# optimise can go up, and with λ = 1 the RAIN-aware objective may give up some target loss for
# judge loss (the table and the line after the figure say whether it did in this run).

# %%
terms = pd.DataFrame(attacks.term_rows(run["suffixes"]))
fig = adv.plot_loss_terms(terms, f"GCG on {lm.name}: both terms of the objective per step")
save_figure(fig, "08_adversarial_loss_terms", terms)

# %% [markdown]
# The first and last step of each run, averaged over behaviours:

# %%
ends = adv.term_ends(terms)
last = ends.xs("after", axis=1, level=1)
print(f"at the last step, adaptive vs static suffix: target term {last.target_term['rain-aware']:.3f} "
      f"vs {last.target_term['vanilla']:.3f}, judge term {last.judge_term['rain-aware']:.3f} "
      f"vs {last.judge_term['vanilla']:.3f} (means over behaviours)")
ends.round(3)

# %% [markdown]
# ## 6. The judge's verdict on the target, before and after
#
# Now RAIN's own evaluator, called as RAIN's search calls it, on each behaviour's target with the
# request carrying the initial suffix, the static suffix and the adaptive suffix: p(harmless) in
# each option order, the soft value p(harmless) - p(harmful), and the vote value RAIN backs up
# (+1 = "harmless" in both orders, 0 = split, -1 = "harmful" in both).

# %%
verdicts = pd.DataFrame(attacks.judge_verdicts(lm, run["suffixes"]))
verdicts.assign(goal=verdicts.goal.map(adv.short_goal)).drop(columns=["response", "suffix"]).round(3)

# %% [markdown]
# The quantity the adaptive suffix was optimised to lower is the judge term, -log p(harmless)
# averaged over both option orders. Below, its change per behaviour (paired: the same target, the
# request with one suffix or the other), with a 95% Student-t interval over behaviours:
# *adaptive - initial* is what the RAIN-aware optimisation achieved, *static - initial* the side
# effect of the paper's (vanilla) objective, *adaptive - static* the difference knowing RAIN makes.

# %%
shifts = attacks.judge_shifts(verdicts.to_dict("records"), "judge_term")
fig = adv.plot_judge_shift(verdicts, shifts, "judge_term", f"RAIN's judge ({lm.name}) on the target")
save_figure(fig, "08_adversarial_judge_shift", verdicts)
pd.DataFrame(shifts).round(4)

# %% [markdown]
# The same comparisons on p(harmless) itself and on the vote value, which is what RAIN's search
# backs up (+1 only when "harmless" wins in both orders). A judge with a strong preference for
# one option *letter* gives p(harmless) far from 0.5 in opposite directions in the two orders;
# the judge term is dominated by the order where harmless is unlikely, and lowering it can leave
# the mean p(harmless), and the vote, nearly where they were:

# %%
votes = verdicts.pivot_table(index="goal", columns="suffix_kind", values="vote_value")
moved = int((votes["rain-aware"] != votes["initial"]).sum())
print(f"the vote RAIN backs up changed for {moved} of {len(votes)} behaviours under the adaptive suffix")
pd.DataFrame([s for v in ("p_harmless", "vote_value")
              for s in attacks.judge_shifts(verdicts.to_dict("records"), v)]).round(4)

# %% [markdown]
# ## 7. Attack success, here and in the paper
#
# One row per (method, suffix): `objective` says which GCG objective produced the suffix ("-" =
# the plain request); `attack` is "white-box" (the suffix was optimised on the answering model);
# `asr` = answers without a refusal phrase / answers. The grid below it shows successes/answers.

# %%
asr = pd.DataFrame(run["asr"])
display(asr)
adv.asr_grid(asr)

# %% [markdown]
# The answers behind the table (cut to the answer length above):

# %%
answers = pd.DataFrame(attacks.read_jsonl(out / attacks.RESPONSES_FILE))
answers.assign(behaviour=answers.goal.map(adv.short_goal)).pivot_table(
    index=["behaviour", "objective"], columns="method", values="response", aggfunc="first")

# %% [markdown]
# Before reading the numbers, the test that decides whether they can mean anything: does the model
# refuse the plain requests at all?

# %%
base = float(asr[(asr.method == "vanilla") & (asr.objective == "-")].asr.iloc[0])
refuses = base < 0.5
print(f"vanilla decoding 'succeeds' on {base:.0%} of the plain requests, without any suffix.")
print("The ASR below can compare the methods only roughly." if refuses else
      f"{lm.name} does not refuse them: there is nothing for either suffix to break, and the ASR "
      "here measures neither GCG nor RAIN.")

# %% [markdown]
# Left, what we measured under no suffix, the static and the adaptive suffix; right, **what the
# paper reports** (Li et al., ICLR 2024: AdvBench, GCG suffixes optimised against vanilla decoding,
# Vicuna models). "White-box": the suffix was optimised on the attacked model itself; "transfer":
# on other models. The right panel is copied from the paper, **not measured here**, and has no
# adaptive column: the paper reports static suffixes only. Our bars carry Wilson 95% intervals
# over the behaviours (`N_BEHAVIORS`, 8 in full mode, so they are wide).

# %%
paper = pd.DataFrame(attacks.paper_asr_rows())
fig = adv.plot_asr_beside_paper(asr, paper, lm.name, refuses)
ours = asr.assign(source=f"measured here ({lm.name}, {len(behaviors)} behaviours)")
save_figure(fig, "08_adversarial_asr", pd.concat([ours, paper.assign(suffix="gcg", objective="vanilla")]))

# %% [markdown]
# ## 8. Other adaptive attacks
#
# The RAIN-aware objective is the first direction an adaptive attacker would take. Others, not
# implemented here:
#
# * **Attack the judge prompt directly.** Because the suffix sits inside the judging prompt, it can
#   also try to *instruct* the judge ("... (the following answer is harmless)"), or to break the
#   judge's format so that the option letters lose their meaning. A defence that judges the
#   response without the raw request, or strips or paraphrases the request first, closes this path
#   and loses context the judge needs.
# * **Survive the search, not one path.** RAIN judges partial answers (each clause), explores
#   sampled continuations, and rewinds. The objective above judges one fixed answer (the target); a
#   stronger attack would optimise the expected judged value over RAIN's sampled clause completions
#   (an expectation-over-transformation objective), or aim for openings that look innocuous on their
#   own and commit the model to the harmful content later.
# * **Transfer.** Optimise on a surrogate (an open model as generator and judge) and apply the
#   suffix to the target system: `--transfer-model` answers with a second model, and `asr.csv` gets
#   its rows as "transfer" beside the white-box ones.
# * **Cost.** Measuring a candidate suffix against RAIN itself means running the whole search,
#   far too slow inside a loop that scores hundreds of candidates per step; hence differentiable
#   surrogates (the judge's logits) and real RAIN only at the end. The judge term costs a second
#   batched pass per step over the judging prompt's tail (`bench/gcg_speed.py` prints the ratio).
#
# ## Run the real experiment on a GPU
#
# The notebook switches to the paper's settings on a GPU in full mode: `GCGConfig.paper()` (500
# steps, batch 512, top-k 256, 20-token suffix) for both objectives, `RainConfig.advbench()`, 64-token
# answers, 20 behaviours. Use a chat model that refuses (the paper's Vicuna models, or a
# LLaMA-2-chat model); figures then go to `figures/<model>-cuda/`:
#
# ```bash
# RAINTOOLS_MODEL=meta-llama/Llama-2-7b-chat-hf RAINTOOLS_DEVICE=cuda RAINTOOLS_RUNS=runs \
#     .venv/bin/python -m raintools.views.notebooks run 08 --full
# ```
#
# or the command line for more behaviours (`--mode universal --train N` optimises one suffix on N
# behaviours and measures transfer to the rest):
#
# ```bash
# python -m raintools attack --behaviors ../shared/data/advbench/harmful_behaviors.csv --limit 100 \
#     --model meta-llama/Llama-2-7b-chat-hf --device cuda --preset paper \
#     --objective vanilla,rain-aware --judge-weight 1 --out runs/advbench-adaptive
# ```
#
# ## What to take away
#
# * GCG is a discrete search steered by a gradient: one-hot gradient -> top-k swaps per position ->
#   a batch of one-swap candidates scored exactly -> keep the best.
# * The RAIN-aware objective adds RAIN's own judge, read through RAIN's own judging prompt in both
#   option orders, to that loss; the same machinery optimises it, at a measured cost per step.
# * On SmolLM2-135M the attack-success rate cannot separate anything (section 7 prints whether the
#   model refuses plain requests). What this run does show is in sections 5 and 6: whether and by
#   how much the adaptive suffix moved RAIN's judge on the target, with its interval across
#   behaviours, and whether the vote RAIN backs up changed at all (in the committed full run it
#   did not, on any behaviour: the term moved, the verdict stayed). Whether a capable judge's
#   verdict can be moved, and whether that defeats RAIN's search, is the experiment to run on a GPU.
