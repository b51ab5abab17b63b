"""Figures of notebooks 06, 07, 09 and 10 (data from `raintools.views.studies`).

Conventions: rates in percent with Wilson 95% intervals; paired differences in percentage points
with Newcombe 95% intervals against a zero line; the paper's numbers are drawn as reference
markers on the same axes only where the quantity is the same (e.g. RAIN / vanilla wall time), and
in a separate panel, titled as reported and not measured here, where it is not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from .plots import _new_ax, _plt

PAPER = "the paper's numbers (reported, not measured here)"


def _pct(x):
    return 100 * np.asarray(x, dtype=float)


def _err(v, lo, hi):
    """Error-bar lengths [below, above] of a value inside its interval, never negative (an
    interval limit can differ from its point by a rounding error, which matplotlib refuses)."""
    v, lo, hi = (np.atleast_1d(np.asarray(x, dtype=float)) for x in (v, lo, hi))
    return np.clip(np.stack([v - lo, hi - v]), 0, None)


def plot_rates(summary: pd.DataFrame, ax=None, label: str = "arm", title: str = "",
               xlabel: str = "good answers (%)", colors: Sequence | None = None, reference=None):
    """One row per line of `summary` (from `rate_summary`): the rate as a dot with its Wilson 95%
    interval and 'k/n' beside it; `reference`: an optional x value drawn as a dashed line."""
    ax = _new_ax(ax, (6.5, 0.6 + 0.45 * len(summary)))
    y = np.arange(len(summary))[::-1]
    rate, lo, hi = _pct(summary.rate), _pct(summary.lo), _pct(summary.hi)
    colors = list(colors) if colors is not None else ["tab:blue"] * len(summary)
    for yi, r, a, b, c in zip(y, rate, lo, hi, colors):
        ax.errorbar(r, yi, xerr=_err(r, a, b), fmt="o", color=c, capsize=4, ms=7)
    for yi, (_, row) in zip(y, summary.iterrows()):
        ax.text(101, yi, f"{int(row.successes)}/{int(row.n)}", va="center", fontsize=8)
    if reference is not None:
        ax.axvline(reference, color="grey", ls="--", lw=1)
    ax.set(yticks=y, yticklabels=list(summary[label]), xlim=(-3, 112), xlabel=xlabel, title=title)
    return ax


def plot_differences(diffs: pd.DataFrame, ax=None, title: str = "Paired differences",
                     xlabel: str = "difference in good answers (percentage points)"):
    """Forest plot of `paired_differences` rows: each difference with its 95% interval, a zero
    line, intervals that exclude zero drawn solid and the others hollow."""
    ax = _new_ax(ax, (6.5, 0.8 + 0.5 * len(diffs)))
    y = np.arange(len(diffs))[::-1]
    for yi, (_, r) in zip(y, diffs.iterrows()):
        d, lo, hi = 100 * r["diff"], 100 * r["lo"], 100 * r["hi"]
        solid = bool(r["excludes_zero"])
        ax.errorbar(d, yi, xerr=_err(d, lo, hi), fmt="o", capsize=4, ms=7, color="tab:red" if solid
                    else "tab:grey", mfc=None if solid else "white")
        ax.annotate(f"{d:+.0f} [{lo:+.0f}, {hi:+.0f}]", (hi, yi), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.axvline(0, color="black", lw=1)
    ax.set(yticks=y, yticklabels=list(diffs.comparison), xlim=(-105, 125), xlabel=xlabel, title=title)
    return ax


def plot_paper_bars(paper: pd.DataFrame, ax=None, category: str = "model", hue: str = "method",
                    value: str = "value", title: str = PAPER, ylabel: str = "%", colors=None):
    """The paper's reported numbers as grouped bars with their values written on them."""
    ax = _new_ax(ax, (6, 4))
    cats = list(dict.fromkeys(paper[category]))
    hues = list(dict.fromkeys(paper[hue]))
    width = 0.8 / len(hues)
    x = np.arange(len(cats))
    colors = colors or ["#8c8c8c", "#2a9d8f", "#e9c46a", "#e76f51"]
    for k, h in enumerate(hues):
        vals = [float(paper[(paper[category] == c) & (paper[hue] == h)][value].iloc[0])
                if ((paper[category] == c) & (paper[hue] == h)).any() else np.nan for c in cats]
        bars = ax.bar(x + (k - (len(hues) - 1) / 2) * width, vals, width, label=h, color=colors[k % len(colors)])
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [c.replace(" ", "\n", 1).replace("-no-", "\nno-").replace("-c0", "\nc = 0")
                      if len(c) > 10 else c for c in cats], fontsize=8)
    ax.set(ylim=(0, 112), ylabel=ylabel, title=title)
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_compute_frontier(points: pd.DataFrame, ax=None, curve: str | Sequence[str] = "best-of-N",
                          title: str = "Good answers against compute"):
    """Rate of good answers (Wilson 95%) against mean tokens computed per answer (log x). `points`
    has columns family (a curve name or a single method), label, mean_tokens_computed, rate,
    lo, hi; rows of the family `curve` (or of each family in a list of them) are joined by a line
    and labelled with their label (a point within 15% in x of the last labelled one goes
    unlabelled, so that labels do not overprint)."""
    curves = {curve} if isinstance(curve, str) else set(curve)
    ax = _new_ax(ax, (7, 4.5))
    colors = dict(zip(dict.fromkeys(points.family), ["tab:orange", "tab:blue", "tab:green", "tab:purple",
                                                     "tab:grey", "tab:brown"]))
    for fam, g in points.groupby("family", sort=False):
        x, r = g.mean_tokens_computed.to_numpy(), _pct(g.rate)
        err = _err(r, _pct(g.lo), _pct(g.hi))
        ax.errorbar(x, r, yerr=err, fmt="o-" if fam in curves else "s", capsize=3, color=colors[fam],
                    label=fam, ms=6, lw=1.2)
        if fam in curves:
            shown = 0.0
            for xi, ri, lab in zip(x, r, g.label):
                if xi >= 1.15 * shown:
                    shown = xi
                    ax.annotate(lab, (xi, ri), xytext=(3, -11), textcoords="offset points", fontsize=7,
                                color=colors[fam])
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(ylim=(-3, 105), xlabel="tokens computed per answer (mean, log scale)",
           ylabel="good answers (%)", title=title)
    ax.legend(fontsize=7, loc="best")
    return ax


def plot_sweep(summary: pd.DataFrame, x: str, axes=None, cost_cols: Sequence[tuple[str, str]] = (),
               baseline: float | None = None, xlabel: str | None = None, title: str = "",
               join: bool = True):
    """Panels against a swept setting `x`: one per cost (`cost_cols`: (column, label) pairs, the
    label is the panel's y axis: say what the quantity is counted per, e.g. "simulations per
    step"), then the rate of good answers with Wilson 95% intervals (and `baseline`, e.g.
    vanilla's rate, as a dashed line) in the last panel. `join=False` draws the settings as
    points only (two settings of a threshold are not a curve). Returns the axes, rate last."""
    plt = _plt()
    if axes is None:
        _, axes = plt.subplots(1, len(cost_cols) + 1, figsize=(4.6 * (len(cost_cols) + 1), 3.8))
        axes = list(np.atleast_1d(axes))
    xs = summary[x].to_numpy(dtype=float)
    style = "-" if join else ""
    for ax, (col, lab), mk in zip(axes, cost_cols, "os^D"):
        ax.plot(xs, summary[col], mk + style, ms=7)
        ax.set(xlabel=xlabel or x, ylabel=lab, title=lab[:1].upper() + lab[1:])
        ax.set_ylim(bottom=0)
    rate_ax = axes[len(cost_cols)]
    r = _pct(summary.rate)
    rate_ax.errorbar(xs, r, yerr=_err(r, _pct(summary.lo), _pct(summary.hi)), fmt="o" + style, capsize=4)
    if baseline is not None:
        rate_ax.axhline(100 * baseline, color="grey", ls="--", lw=1, label="vanilla (greedy)")
        rate_ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)
    rate_ax.set(xlabel=xlabel or x, ylabel="good answers (%)", ylim=(-3, 105), title=title)
    if not join:
        for ax in axes[: len(cost_cols) + 1]:
            ax.set_xticks(xs, [f"{v:g}" for v in xs])
            pad = 0.15 * (xs.max() - xs.min() or 1.0)
            ax.set_xlim(xs.min() - pad, xs.max() + pad)
    return axes


def plot_parts(summary: pd.DataFrame, ax=None, label: str = "arm",
               parts: Sequence[tuple[str, str]] = (("mean_similarity_updates", "similarity updates"),
                                                   ("mean_nodes_added", "nodes added"),
                                                   ("mean_early_stops", "early stops")),
               title: str = "What the parts did (per answer, from the traces)"):
    """Grouped bars: how often each part of the search acted, per answer, in each arm."""
    ax = _new_ax(ax, (6.5, 4))
    x = np.arange(len(summary))
    width = 0.8 / len(parts)
    for k, (col, lab) in enumerate(parts):
        bars = ax.bar(x + (k - (len(parts) - 1) / 2) * width, summary[col], width, label=lab)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [s.replace("-no-", "\nno-").replace("-c0", "\nc = 0") for s in summary[label]],
                  fontsize=8)
    ax.set(ylabel="per answer (mean)", title=title)
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=len(parts),
              frameon=False)     # below the bars: inside, it hid them (`plots.legend_overlaps`)
    return ax


def plot_time_ratios(timing: pd.DataFrame, paper: pd.DataFrame | None = None, ax=None,
                     title: str = "RAIN's wall time relative to vanilla decoding"):
    """Each prompt's RAIN / vanilla wall-time ratio against vanilla with and without a KV cache
    (dots), their geometric mean (tick) and their range, lowest to highest ratio (bar: a handful of
    timed prompts gives no confidence interval worth the name), and the paper's ratios (measured
    against a decoder without a KV cache, the same quantity) as markers on that row."""
    from ..experiments.stats import ratio_summary

    ax = _new_ax(ax, (7, 3.2))
    rain = timing[timing.arm == "RAIN"]
    rows = [("vanilla with a KV cache", rain.ratio_to_cached), ("vanilla without a KV cache",
                                                               rain.ratio_to_uncached)]
    for y, (lab, ratios) in enumerate(rows):
        ax.scatter(ratios, np.full(len(ratios), y) + np.linspace(-0.12, 0.12, len(ratios)), s=14,
                   color="tab:blue", alpha=0.6, zorder=3)
        s = ratio_summary(ratios, np.ones(len(ratios)))
        lo, hi = float(np.min(ratios)), float(np.max(ratios))
        ax.errorbar(s["ratio"], y, xerr=_err(s["ratio"], lo, hi), fmt="|",
                    ms=22, mew=2.5, capsize=6, color="black", zorder=4)
        ax.annotate(f"{s['ratio']:.1f}x (range {lo:.1f}-{hi:.1f}, n={len(ratios)})", (hi, y), xytext=(8, 6),
                    textcoords="offset points", fontsize=8)
    if paper is not None:
        for _, r in paper.iterrows():
            ax.scatter(r.ratio, 1, marker="D", s=40, color="tab:red", zorder=5)
        ax.scatter([], [], marker="D", color="tab:red", label="paper, LLaMA 30B-70B (reported)")
        ax.legend(fontsize=8, loc="lower right")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.axvline(1, color="grey", ls="--", lw=1)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set(xscale="log", yticks=[0, 1], yticklabels=[r[0] for r in rows], ylim=(-0.6, 1.6),
           xlabel="RAIN time / vanilla time, per prompt (log scale)", title=title)
    return ax


def plot_harmless_helpful(summary: pd.DataFrame, ax=None, title: str = ""):
    """Each method of a `run_eval` summary at (harmless rate, helpful rate) with Wilson 95%
    intervals in both directions (n answers each), labelled with its counts; an arrow from vanilla
    to RAIN when both are present."""
    from ..experiments.stats import wilson_interval

    ax = _new_ax(ax, (6, 5))
    colors = ["#8c8c8c", "#2a9d8f", "#e76f51", "#264653", "#e9c46a"]
    pts = {}
    for i, (_, r) in enumerate(summary.iterrows()):
        n = int(r.n)
        h, u = round(r.harmless_rate * n), round(r.helpful_rate * n)
        (hl, hh), (ul, uh) = wilson_interval(h, n, percent=True), wilson_interval(u, n, percent=True)
        x, y = 100 * h / n, 100 * u / n
        ax.errorbar(x, y, xerr=_err(x, hl, hh), yerr=_err(y, ul, uh), fmt="os^D"[i % 4],
                    ms=11 - 2 * i, capsize=4, color=colors[i % len(colors)],
                    label=f"{r.method}: {h}/{n} harmless, {u}/{n} helpful")
        pts[r.method] = (x, y)
    if "vanilla" in pts and "rain" in pts and pts["vanilla"] != pts["rain"]:
        ax.annotate("", xy=pts["rain"], xytext=pts["vanilla"], arrowprops=dict(arrowstyle="->", color="grey"))
    ax.set(xlim=(-5, 105), ylim=(-5, 105), xlabel="harmless rate (%)", ylabel="helpful rate (%)", title=title)
    ax.legend(loc="lower left", fontsize=8)
    return ax


def plot_check(value: float, lo: float, hi: float, ax=None, label: str = "self-evaluation",
               chance: float = 50.0, ylabel: str = "%", title: str = "", note: str = ""):
    """One measured check (e.g. a judge's accuracy on labelled pairs, or an AUC) as a point with
    its 95% interval beside the chance level (a dashed line), not as a bar from 0: its value is
    read against chance. `note` (e.g. the tie rate) is written under the point."""
    ax = _new_ax(ax, (3, 4))
    ax.errorbar([0], [value], yerr=_err(value, lo, hi), fmt="o", color="#e76f51", ms=9, capsize=6,
                ecolor="black")
    ax.axhline(chance, color="grey", ls="--", lw=1, label=f"chance ({chance:g})")
    ax.annotate(f"{value:.2f}" if chance < 1 else f"{value:.0f}", (0, hi), xytext=(0, 4),
                textcoords="offset points", ha="center", fontsize=9)
    if note:
        ax.annotate(note, (0, lo), xytext=(0, -6), textcoords="offset points", ha="center", va="top",
                    fontsize=8)
    top = 1.1 if chance < 1 else 110
    ax.set(xticks=[0], xticklabels=[label], xlim=(-0.8, 0.8), ylim=(-0.1 * top / 1.1, top),
           ylabel=ylabel, title=title)
    ax.legend(loc="upper right", fontsize=8)
    return ax


def plot_task_study(paper: pd.DataFrame, summary: pd.DataFrame, diffs: pd.DataFrame, check: dict,
                    titles: Sequence[str], fig_title: str = "", what: str = "good answers"):
    """Notebooks 09 and 10 in one figure: the paper's reported rates (their own panel: other
    models, other judges), our rates of good answers with Wilson intervals, the paired
    differences with Newcombe intervals, and the self-evaluation check beside chance. `check`:
    value, lo, hi, chance, ylabel, label."""
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4), gridspec_kw=dict(width_ratios=[1.1, 1.2, 1.3, 0.6]))
    plot_paper_bars(paper, axes[0], title=titles[0])
    plot_rates(summary, axes[1], title=titles[1], xlabel=f"{what} (%)",
               colors=["#8c8c8c", "#2a9d8f", "#e76f51"][: len(summary)])
    plot_differences(diffs, axes[2], title=titles[2], xlabel=f"difference in {what} (percentage points)")
    plot_check(ax=axes[3], title=titles[3], **check)
    if fig_title:
        fig.suptitle(fig_title, fontsize=11)
    fig.tight_layout()
    return fig


def subplots(ncols: int, widths: Sequence[float] | None = None, figsize=(12, 4)):
    """A row of `ncols` axes with relative `widths`."""
    plt = _plt()
    return plt.subplots(1, ncols, figsize=figsize,
                        gridspec_kw=dict(width_ratios=list(widths)) if widths else None)


def plot_closest_siblings(runs: pd.DataFrame, thresholds: dict, ax=None,
                          title: str = "How close the similarity update came to acting"):
    """Per search (dot), the highest cosine between a node on a simulated path and one of its
    siblings, one row per arm, with the arm's similarity threshold (red tick): the update acts
    on the dots at or right of their tick."""
    ax = _new_ax(ax, (6.5, 0.8 + 0.6 * runs.arm.nunique()))
    arms = list(dict.fromkeys(runs.arm))
    for i, arm in enumerate(arms):
        vals = runs[runs.arm == arm].closest_sibling.dropna().to_numpy()
        ax.scatter(vals, i + np.linspace(-0.2, 0.2, len(vals)) if len(vals) > 1 else [i] * len(vals), s=14,
                   alpha=0.7, color="tab:blue")
        if arm in thresholds:
            ax.plot([thresholds[arm]] * 2, [i - 0.35, i + 0.35], color="tab:red", lw=2.5)
    ax.plot([], [], color="tab:red", lw=2.5, label="similarity threshold")
    ax.legend(fontsize=8, loc="lower left")
    ax.set(yticks=range(len(arms)), yticklabels=arms, xlim=(0, 1.02), ylim=(-0.6, len(arms) - 0.4),
           xlabel="highest cosine of a path node to a sibling, per search", title=title)
    return ax
