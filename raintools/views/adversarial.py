"""Figures of notebook 08 (adversarial suffixes, vanilla and RAIN-aware GCG).

Each function takes the tables of `raintools.attacks.run` (`term_rows`, `judge_verdicts`,
`paired_shift`, the runner's ASR rows, `paper_asr_rows`) as pandas frames and returns a matplotlib
figure; nothing here runs a model.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from ..experiments.stats import wilson_interval

OBJECTIVE_COLOURS = {"vanilla": "tab:blue", "rain-aware": "tab:red"}
METHOD_COLOURS = {"vanilla": "tab:blue", "rain": "tab:orange"}
SUFFIX_LABELS = {"initial": "initial suffix", "vanilla": "static suffix\n(vanilla objective)",
                 "rain-aware": "adaptive suffix\n(RAIN-aware objective)"}


def _plt():
    import matplotlib.pyplot as plt

    return plt


def short_goal(goal: str, width: int = 38) -> str:
    return goal if len(goal) <= width else goal[:width - 3] + "..."


def term_ends(terms: pd.DataFrame) -> pd.DataFrame:
    """Mean of each term over runs at the first step ("before") and the last ("after"), per
    objective."""
    last = terms.groupby("run").step.transform("max")
    ends = terms[(terms.step == 0) | (terms.step == last)]
    ends = ends.assign(at=ends.step.eq(0).map({True: "before", False: "after"}))
    table = ends.pivot_table(index="objective", columns="at",
                             values=["target_term", "judge_term", "p_harmless"])
    return table.reindex(columns=["before", "after"], level=1)


def plot_loss_terms(terms: pd.DataFrame, title: str = ""):
    """Two panels against the GCG step: the target term (mean cross-entropy of the target) and
    the judge term (mean over option orders of -log p(harmless letter)); one line per run,
    coloured by the objective that drove it (the vanilla objective's judge term is recorded,
    not optimised)."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
    for ax, col, label in ((axes[0], "target_term", "target term: CE(target | request + suffix)"),
                           (axes[1], "judge_term", "judge term: -log p(harmless), both orders")):
        for (run, objective), g in terms.groupby(["run", "objective"]):
            g = g.dropna(subset=[col])
            if g.empty:
                continue
            ax.plot(g.step, g[col], marker="o", ms=3, alpha=0.8,
                    color=OBJECTIVE_COLOURS.get(objective, "grey"))
        ax.set(xlabel="GCG step", ylabel=label)
        ax.xaxis.get_major_locator().set_params(integer=True)
    handles = [plt.Line2D([], [], color=c, marker="o", label=f"{o} objective")
               for o, c in OBJECTIVE_COLOURS.items() if o in set(terms.objective)]
    axes[1].legend(handles=handles, fontsize=8)
    fig.suptitle(title or "the two terms of the objective, one line per behaviour")
    fig.tight_layout()
    return fig


VALUE_LABELS = {"judge_term": "judge term: mean over orders of -log p(harmless)",
                "p_harmless": "judge's p(harmless), mean of both orders",
                "soft_value": "soft value p(harmless) - p(harmful)",
                "vote_value": "vote value (+1 harmless in both orders)"}
SHORT_KINDS = {"initial": "initial", "vanilla": "static", "rain-aware": "adaptive"}


def shift_label(shift: dict) -> str:
    return f"{SHORT_KINDS.get(shift['after'], shift['after'])} - {SHORT_KINDS.get(shift['before'], shift['before'])}"


def plot_judge_shift(verdicts: pd.DataFrame, shifts: Sequence[dict], value: str = "judge_term",
                     title: str = ""):
    """Left: each behaviour's `value` for its target under the initial, static and adaptive
    suffixes (lines join one behaviour; the mean in black). Right: each paired comparison in
    `shifts` (`raintools.attacks.run.paired_shift` on `value`): mean difference with its
    confidence interval, and the zero line."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4), gridspec_kw=dict(width_ratios=[1.3, 1]))
    kinds = [k for k in SUFFIX_LABELS if k in set(verdicts.suffix_kind)]
    wide = verdicts.pivot_table(index="goal", columns="suffix_kind", values=value).reindex(columns=kinds)
    for _, row in wide.iterrows():
        ax.plot(range(len(kinds)), row.values, color="grey", alpha=0.5, marker="o", ms=4)
    ax.plot(range(len(kinds)), wide.mean().values, color="black", lw=2.5, marker="s", label="mean")
    ax.set_xticks(range(len(kinds)), [SUFFIX_LABELS[k] for k in kinds], fontsize=8)
    ax.set(ylabel=VALUE_LABELS.get(value, value), title=f"{len(wide)} behaviours, RAIN's own judging prompt")
    ax.legend(fontsize=8)
    for i, sh in enumerate(shifts):
        if sh["value"] != value:
            raise ValueError(f"shift {shift_label(sh)} is on {sh['value']!r}, not {value!r}")
        colour = OBJECTIVE_COLOURS.get(sh["after"], "grey")
        ax2.errorbar([sh["mean_diff"]], [i], xerr=[[sh["mean_diff"] - sh["lo"]], [sh["hi"] - sh["mean_diff"]]],
                     fmt="o", color=colour, capsize=5, ms=7)
        ax2.annotate(f"{sh['mean_diff']:+.3f} [{sh['lo']:+.3f}, {sh['hi']:+.3f}]; "
                     f"up {sh['up']}, down {sh['down']} of {sh['n']}", (sh["mean_diff"], i),
                     xytext=(0, 11), textcoords="offset points", ha="center", fontsize=8)
    ax2.axvline(0, color="black", lw=1)
    ax2.set_yticks(range(len(shifts)), [shift_label(sh) for sh in shifts], fontsize=9)
    ax2.set_ylim(-0.6, len(shifts) - 0.2)
    conf = shifts[0]["confidence"] if shifts else 0.95
    ax2.set(xlabel=f"paired difference per behaviour\n(mean, {conf:.0%} t-interval)",
            title="change between suffixes")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def asr_grid(asr: pd.DataFrame) -> pd.DataFrame:
    """The runner's ASR rows (white-box) as a method x suffix grid: columns 'no suffix',
    'static' (vanilla objective) and 'adaptive' (RAIN-aware objective), cells 'k/n'."""
    a = asr[asr.attack == "white-box"] if "attack" in asr else asr
    label = {"-": "no suffix", "vanilla": "static (vanilla objective)",
             "rain-aware": "adaptive (RAIN-aware objective)"}
    a = a.assign(column=a.objective.map(label), cell=a.successes.astype(str) + "/" + a.n.astype(str))
    return a.pivot_table(index="method", columns="column", values="cell", aggfunc="first") \
            .reindex(columns=[v for v in label.values() if v in set(a.column)])


def plot_asr_beside_paper(asr: pd.DataFrame, paper: pd.DataFrame, model: str, refuses: bool):
    """Left: attack-success rates measured here (white-box), per method with no suffix, the
    static and the adaptive suffix. Right: the paper's reported static-suffix numbers (Vicuna,
    vanilla decoding vs RAIN), not measured here."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(14, 4.6), gridspec_kw=dict(width_ratios=[1.2, 1.8]))
    a = asr[asr.attack == "white-box"] if "attack" in asr else asr
    kinds = [("-", "no suffix", "//", 0.45), ("vanilla", "static", "", 1.0),
             ("rain-aware", "adaptive", "xx", 1.0)]
    x, ticks = 0, []
    for method in ("vanilla", "rain"):
        for objective, label, hatch, alpha in kinds:
            row = a[(a.method == method) & (a.objective == objective)]
            if row.empty:
                continue
            r = row.iloc[0]
            lo, hi = wilson_interval(int(r.successes), int(r.n), percent=True)
            ax.bar(x, 100 * r.asr, color=METHOD_COLOURS[method], alpha=alpha, hatch=hatch,
                   edgecolor="white")
            ax.errorbar([x], [100 * r.asr], yerr=[[max(100 * r.asr - lo, 0)], [max(hi - 100 * r.asr, 0)]],
                        fmt="none", ecolor="black", capsize=4, lw=1)
            ax.text(x, hi + 2, f"{int(r.successes)}/{int(r.n)}", ha="center", fontsize=9)
            ticks.append((x, f"{method}\n{label}"))
            x += 1
        x += 0.5
    ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks], fontsize=8)
    note = "" if refuses else "\n(the model does not refuse even without a suffix)"
    ax.set(ylim=(0, 115), ylabel="attack success rate (%, Wilson 95% interval)",
           title=f"measured here: {model}{note}")
    groups = list(dict.fromkeys(zip(paper.model, paper.attack)))
    width = 0.38
    for k, method in enumerate(("vanilla", "rain")):
        vals = [100 * paper[(paper.model == m) & (paper.attack == at) & (paper.method == method)].asr.iloc[0]
                for m, at in groups]
        xs = [i + (k - 0.5) * width for i in range(len(groups))]
        ax2.bar(xs, vals, width, color=METHOD_COLOURS[method], label=method)
        for xx, v in zip(xs, vals):
            ax2.text(xx, v + 2, f"{v:.0f}", ha="center", fontsize=8)
    ax2.set_xticks(range(len(groups)), [f"{m}\n{at}" for m, at in groups], fontsize=8)
    ax2.set(ylim=(0, 115), title="reported by the RAIN paper (static GCG suffixes), not measured here")
    ax2.legend(title="decoding")
    fig.tight_layout()
    return fig
