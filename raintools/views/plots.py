"""Figures for the notebooks: tree drawings, value curves, comparisons. They read traces and
tables, never the search internals. Every figure is saved with the data behind it.

Tree drawings use a networkx graph (`trace_to_graph`) and a tidy layered layout computed here
(`tree_layout`: leaves side by side, each parent centred over its children, one row per depth),
so no graphviz is needed. In `draw_tree` node colour is the value q, node size the visit count n,
grey nodes are unvisited candidates, and a highlighted path (the selected or committed one) is
drawn thick.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ..trace import CommitRecord, NodeRecord, Trace

VALUE_CMAP = "RdYlGn"
PATH_COLOUR = "#1f4e9c"


def save_figure(fig, name: str, data: pd.DataFrame | None = None, dpi: int = 120) -> Path:
    """Write `fig` to figures/<name>.png (and `data` to figures/<name>.csv); returns the PNG path.
    The folder is RAINTOOLS_FIGURES when set (the tests point it at a temporary folder)."""
    from .notebooks import figures_dir

    out = figures_dir()
    png = out / f"{name}.png"
    fig.savefig(png, dpi=dpi, bbox_inches="tight")
    if data is not None:
        data.to_csv(out / f"{name}.csv", index=False)
    return png


def _plt():
    import matplotlib.pyplot as plt

    return plt


def _new_ax(ax, figsize=(7, 4)):
    if ax is not None:
        return ax
    fig, ax = _plt().subplots(figsize=figsize)
    return ax


def legend_overlaps(fig) -> list[str]:
    """What each legend of `fig` covers: one line per data artist (a line's drawn segments, a
    scatter point, an error bar, a bar, a value written on the plot) of any of the figure's axes
    that lies under a legend's box once drawn. An empty list: no legend hides data. Reference
    lines count as data (a legend over a threshold hides it too); grid lines and spines do not."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [(ax, ax.get_legend()) for ax in fig.axes if ax.get_legend() is not None]
    legends += [(None, leg) for leg in fig.legends]
    found = []

    def inside(box, pts):
        pts = np.asarray(pts, dtype=float).reshape(-1, 2)
        pts = pts[np.isfinite(pts).all(axis=1)]
        return bool(((pts[:, 0] > box.x0 + 1) & (pts[:, 0] < box.x1 - 1) &
                     (pts[:, 1] > box.y0 + 1) & (pts[:, 1] < box.y1 - 1)).any())

    def dense(xy, step=2.0):
        """Points every `step` pixels along a polyline (display coordinates)."""
        xy = np.asarray(xy, dtype=float).reshape(-1, 2)
        out = [xy[:1]]
        for a, b in zip(xy[:-1], xy[1:]):
            if not (np.isfinite(a).all() and np.isfinite(b).all()):
                continue
            k = max(2, int(np.hypot(*(b - a)) / step) + 1)
            out.append(a + np.linspace(0, 1, k)[:, None] * (b - a))
        return np.concatenate(out)

    for owner, leg in legends:
        box = leg.get_window_extent(renderer)
        for ax in fig.axes:
            where = ax.get_title() or ax.get_ylabel() or "an axes"
            for line in ax.lines:
                if line.get_visible() and len(line.get_xydata()):
                    xy = line.get_transform().transform(line.get_xydata())
                    segs = dense(xy) if line.get_linestyle() not in ("None", "", " ") else xy
                    if inside(box, segs):
                        found.append(f"legend of {owner.get_title() if owner else 'the figure'!r} covers "
                                     f"line {line.get_label()!r} in {where!r}")
            for coll in ax.collections:
                if not coll.get_visible():
                    continue
                pts = []
                if hasattr(coll, "get_segments"):
                    for seg in coll.get_segments():
                        pts.append(dense(coll.get_transform().transform(seg)))
                elif len(coll.get_offsets()):
                    pts.append(coll.get_offset_transform().transform(coll.get_offsets()))
                if pts and inside(box, np.concatenate(pts)):
                    found.append(f"legend covers points or bars of {coll.get_label()!r} in {where!r}")
            for patch in ax.patches:
                ext = patch.get_window_extent(renderer)
                if patch.get_visible() and ext.width > 0.5 and ext.height > 0.5 and ext.overlaps(box):
                    found.append(f"legend covers a bar or patch in {where!r}")
            for text in ax.texts:
                if text.get_visible() and text.get_text().strip() and \
                        text.get_window_extent(renderer).overlaps(box):
                    found.append(f"legend covers the text {text.get_text()!r} in {where!r}")
    return found


def short(text: str, width: int = 14, keep: str = "start") -> str:
    """A one-line label for token text: newlines shown as ⏎, spaces as ·, other unprintable
    characters as ¿, '$' escaped for matplotlib, cut to `width` characters; `keep="end"` keeps
    the end instead of the start (siblings that share their start differ at the end)."""
    t = "".join("⏎" if ch == "\n" else "·" if ch == " " else ch if ch.isprintable() else "¿"
                for ch in text)
    if len(t) > width:
        t = "…" + t[len(t) - width + 1:] if keep == "end" else t[: width - 1] + "…"
    return t.replace("$", r"\$")


# ---------------------------------------------------------------------------------------------
# The algorithm at a glance


RAIN_STEPS = (
    ("1  select", "from the root, walk down\nto a leaf: at each node the\nchild with the largest\nqh + c p sqrt(N) / (1 + n)"),
    ("2  expand", "the leaf gets candidate\ntoken sets (1, 2, 4, then\n10 tokens by depth) with\nthe model's priors p"),
    ("3  evaluate", "finish the clause; the\nmodel judges its own text:\nvalue v in [-1, 1]"),
    ("4  back up", "on the path: n += 1 and\nq moves towards v; similar\nsiblings get a fraction of v"),
    ("5  commit", "the most visited child of\nthe root is committed and\nbecomes the root; every\nother branch is dropped\n(the rewind)"),
)


def plot_rain_diagram(ax=None):
    """RAIN in one picture: the inner loop (select, expand, evaluate, back up), repeated until a
    child of the root is visited and valued enough or the budget is spent, then the outer loop's
    commit with the rewind. Returns the axes."""
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

    ax = _new_ax(ax, (13, 4.4))
    ax.set_xlim(0, 15)
    ax.set_ylim(0, 5.2)
    ax.set_axis_off()
    w, h, y = 2.55, 2.1, 2.6
    xs = [1.5, 4.4, 7.3, 10.2, 13.5]
    colours = ["#dbe7f5", "#e2f0d9", "#fdebd3", "#ead8f0", "#f5d5d5"]
    for (title, body), x, colour in zip(RAIN_STEPS, xs, colours):
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.08",
                                    fc=colour, ec="#555555", lw=1.2))
        ax.text(x, y + h / 2 - 0.22, title, ha="center", va="top", fontsize=11, weight="bold")
        ax.text(x, y - 0.2, body, ha="center", va="center", fontsize=8.3)

    def arrow(a, b, text="", rad=0.0, colour="#333333", at=None):
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=16, color=colour, lw=1.6,
                                     connectionstyle=f"arc3,rad={rad}"))
        if text:
            ax.text(*at, text, ha="center", va="center", fontsize=9, color=colour, style="italic")

    for a, b in zip(xs[:3], xs[1:4]):
        arrow((a + w / 2 + 0.1, y), (b - w / 2 - 0.1, y))
    arrow((xs[3], y - h / 2 - 0.12), (xs[0], y - h / 2 - 0.12), rad=-0.22, colour="#1f4e9c",
          text="inner loop: next simulation, until a child of the root has > T_m visits with q > V, "
               "or T simulations", at=(5.85, 0.12))
    arrow((xs[3] + w / 2 + 0.1, y), (xs[4] - w / 2 - 0.1, y), text="step\ndone", at=(11.85, y + 0.45))
    arrow((xs[4], y + h / 2 + 0.12), (xs[0], y + h / 2 + 0.12), rad=0.12, colour="#a33",
          text="outer loop: the next step starts from the new root (its subtree and visits kept)",
          at=(7.5, 5.0))
    return ax


# ---------------------------------------------------------------------------------------------
# Trees


def _tree_source(obj, sim_index=None):
    """(nodes by uid, root uid, default highlight path, default title) from a Trace (at a
    simulation), a CommitRecord, a dict uid -> NodeRecord or a list of NodeRecords."""
    if isinstance(obj, Trace):
        if not obj.simulations:
            nodes = {obj.root.uid: obj.root} if obj.root else {}
            root = obj.root.uid if obj.root else None
            return nodes, root, [], "search tree (no simulation yet)"
        i = len(obj.simulations) - 1 if sim_index is None else max(0, min(sim_index, len(obj.simulations) - 1))
        sim = obj.simulations[i]
        return obj.tree_at(i), sim.root, list(sim.path), f"Search tree after simulation {i}"
    if isinstance(obj, CommitRecord):
        nodes = {n.uid: n for n in obj.tree}
        return (nodes, obj.root, [obj.root, obj.chosen],
                f"Tree at commit {obj.outer_step}: commits {obj.text!r}")
    if isinstance(obj, dict):
        nodes = dict(obj)
    else:
        nodes = {n.uid: n for n in obj}
    roots = [u for u, n in nodes.items() if n.parent is None or n.parent not in nodes]
    return nodes, (min(roots) if roots else None), [], "search tree"


def trace_to_graph(trace_or_nodes, sim_index: int | None = None):
    """A networkx DiGraph of the tree (edges parent -> child). Node attributes: text, tokens,
    step, n, fn, q, p, depth (below the drawn root). The graph's `root` attribute is the root uid.
    Accepts a Trace (the live tree after `sim_index`, default the last simulation), a
    CommitRecord (the tree at that commit), a dict uid -> NodeRecord or a list of NodeRecords."""
    import networkx as nx

    nodes, root, _, _ = _tree_source(trace_or_nodes, sim_index)
    g = nx.DiGraph(root=root)
    for uid, nd in nodes.items():
        g.add_node(uid, text=nd.text, tokens=list(nd.tokens), step=nd.step, n=nd.n, fn=nd.fn,
                   q=nd.q, p=nd.p)
    for uid, nd in nodes.items():
        if nd.parent is not None and nd.parent in nodes and uid != root:
            g.add_edge(nd.parent, uid)
    if root is not None:
        for uid, d in nx.single_source_shortest_path_length(g, root).items():
            g.nodes[uid]["depth"] = d
    return g


def tree_layout(g, root=None) -> dict:
    """Tidy layered layout: leaves at consecutive x (children in creation order), each parent
    centred over its first and last child, y = -depth. Returns {uid: (x, y)}."""
    root = g.graph.get("root") if root is None else root
    if root is None:
        return {}
    pos: dict = {}
    next_x = [0.0]
    # iterative post-order (trees can be deeper than Python's recursion limit allows)
    stack = [(root, 0, False)]
    while stack:
        u, depth, done = stack.pop()
        kids = sorted(g.successors(u))
        if done or not kids:
            if kids:
                x = (pos[kids[0]][0] + pos[kids[-1]][0]) / 2
            else:
                x = next_x[0]
                next_x[0] += 1.0
            pos[u] = (x, -float(depth))
            continue
        stack.append((u, depth, True))
        for k in reversed(kids):
            stack.append((k, depth + 1, False))
    return pos


def committed_path(trace: Trace) -> list[int]:
    """uids of the committed spine: the first root, then each committed child."""
    if trace.root is None:
        return []
    return [trace.root.uid] + [c.chosen for c in trace.commits]


def whole_search(trace: Trace) -> dict[int, NodeRecord]:
    """Every node the search ever created, with its statistics when last seen (the union of the
    trees recorded at the commits, plus the live tree after the last simulation). Parents are
    kept, so discarded branches hang where they grew."""
    nodes: dict[int, NodeRecord] = {}
    parents: dict[int, int | None] = {}
    trees = [c.tree for c in trace.commits]
    if trace.simulations:
        trees.append(list(trace.tree_at(len(trace.simulations) - 1).values()))
    for tree in trees:
        for nd in tree:
            nodes[nd.uid] = nd
            if parents.get(nd.uid) is None:
                parents[nd.uid] = nd.parent
    if trace.root is not None and trace.root.uid not in nodes:
        nodes[trace.root.uid] = trace.root
    out = {}
    for uid, nd in nodes.items():
        out[uid] = NodeRecord(uid=nd.uid, parent=parents.get(uid), tokens=list(nd.tokens), text=nd.text,
                              step=nd.step, p=nd.p, n=nd.n, fn=nd.fn, q=nd.q)
    return out


def draw_tree(trace_or_nodes, sim_index: int | None = None, highlight_path: Sequence[int] | None = None,
              ax=None, selected: int | None = None, max_labels: int = 20, label_width: int = 12,
              title: str | None = None, colorbar: bool = True, legend: bool = True,
              visited_only: bool = False):
    """Draw a search tree. Node colour = value q (red -1 ... green +1), size = visits n, grey =
    not visited yet; `highlight_path` (uids, root first) is drawn thick; by default it is the
    simulation's selected path for a Trace and [root, chosen] for a CommitRecord (pass [] for
    none). `selected` rings one node. The `max_labels` most visited nodes are labelled with their
    token text. `visited_only` leaves out the candidates never visited (n = 0), so that only the
    part of the tree the search explored is drawn. Returns the axes; the node markers are the
    collection with gid 'tree-nodes'."""
    import matplotlib as mpl
    import networkx as nx
    from matplotlib.lines import Line2D

    nodes, root, default_path, default_title = _tree_source(trace_or_nodes, sim_index)
    path = list(default_path if highlight_path is None else highlight_path)
    if visited_only:
        nodes = {u: nd for u, nd in nodes.items() if nd.n > 0 or u == root}
    g = trace_to_graph(nodes)
    g.graph["root"] = root
    if root is not None:
        for uid, d in nx.single_source_shortest_path_length(g, root).items():
            g.nodes[uid]["depth"] = d
    pos = tree_layout(g, root)
    order = sorted(pos)
    if ax is None:
        width = min(18.0, max(6.0, 0.22 * (max((x for x, _ in pos.values()), default=1) + 1)))
        depth = max((-y for _, y in pos.values()), default=1)
        _, ax = _plt().subplots(figsize=(width, 1.2 + 1.1 * (depth + 1)))
    cmap = mpl.colormaps[VALUE_CMAP]
    norm = mpl.colors.Normalize(-1.0, 1.0)
    max_n = max((g.nodes[u]["n"] for u in order), default=1.0) or 1.0
    colours = [cmap(norm(g.nodes[u]["q"])) if g.nodes[u]["n"] > 0 else (0.8, 0.8, 0.8, 1.0) for u in order]
    sizes = [18 + 420 * math.sqrt(g.nodes[u]["n"] / max_n) for u in order]
    edges = nx.draw_networkx_edges(g, pos, ax=ax, edge_color="#9a9a9a", width=0.8, arrows=False)
    if edges is not None and hasattr(edges, "set_gid"):
        edges.set_gid("tree-edges")
    path_edges = [(a, b) for a, b in zip(path, path[1:]) if g.has_edge(a, b)]
    if path_edges:
        pe = nx.draw_networkx_edges(g, pos, edgelist=path_edges, ax=ax, edge_color=PATH_COLOUR,
                                    width=3.2, arrows=False)
        pe.set_gid("tree-path")
    coll = nx.draw_networkx_nodes(g, pos, nodelist=order, node_color=colours, node_size=sizes, ax=ax,
                                  edgecolors=[PATH_COLOUR if u in path else "#555555" for u in order],
                                  linewidths=[2.0 if u in path else 0.5 for u in order])
    coll.set_gid("tree-nodes")
    coll.set_zorder(3)
    if selected is not None and selected in pos:
        sel = ax.scatter([pos[selected][0]], [pos[selected][1]], s=sizes[order.index(selected)] + 260,
                         facecolors="none", edgecolors="black", linewidths=2.0, zorder=4)
        sel.set_gid("tree-selected")
    visited = sorted((u for u in order if g.nodes[u]["n"] > 0 and u != root),
                     key=lambda u: -g.nodes[u]["n"])[:max_labels]
    if root is not None:
        ax.annotate("root", pos[root], xytext=(0, 9), textcoords="offset points", ha="center",
                    va="bottom", fontsize=7, zorder=5, gid="tree-label")
    last: dict = {}            # per depth: (x of the previous label, whether it was lowered)
    for u in sorted(visited, key=lambda u: (pos[u][1], pos[u][0])):
        x, y = pos[u]
        px, low = last.get(y, (-1e9, True))
        low = (not low) if x - px < 0.35 * label_width else False   # stagger neighbours
        last[y] = (x, low)
        ax.annotate(short(g.nodes[u]["text"], label_width), (x, y), xytext=(0, -20 if low else -10),
                    textcoords="offset points", ha="center", va="top", fontsize=7, zorder=5,
                    gid="tree-label")
    if colorbar:
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        cb = ax.figure.colorbar(sm, ax=ax, fraction=0.025, pad=0.01)
        cb.set_label("value q")
    if legend:
        handles = [
            Line2D([], [], color=PATH_COLOUR, lw=3, label="highlighted path"),
            Line2D([], [], marker="o", ls="", color=(0.8, 0.8, 0.8), markeredgecolor="#555555",
                   label="not visited yet"),
            Line2D([], [], marker="o", ls="", color="#999999", markersize=4, label="few visits"),
            Line2D([], [], marker="o", ls="", color="#999999", markersize=11, label=f"{max_n:g} visits"),
        ]
        if visited_only:
            handles = [h for h in handles if h.get_label() != "not visited yet"]
        if not path_edges:
            handles = handles[1:]
        ax.legend(handles=handles, loc="upper right", fontsize=7, framealpha=0.85)
    depth = int(max((-y for _, y in pos.values()), default=0))
    ax.set_yticks([-d for d in range(depth + 1)], [str(d) for d in range(depth + 1)])
    ax.tick_params(axis="y", left=True, labelleft=True)
    ax.set_xticks([])
    ax.set_ylabel("depth below the root (token sets)")
    ax.set_xlabel("candidates, siblings side by side (size = visits, colour = value)")
    ax.set_ylim(-depth - 0.6, 0.6)
    ax.grid(False)
    for s in ("top", "right", "bottom"):
        ax.spines[s].set_visible(False)
    ax.set_title(title if title is not None else default_title)
    return ax


def nodes_frame(nodes) -> pd.DataFrame:
    """A table of tree nodes (a dict uid -> NodeRecord, or NodeRecords): the data behind a tree
    drawing."""
    recs = nodes.values() if isinstance(nodes, dict) else nodes
    cols = ["uid", "parent", "step", "text", "n", "fn", "q", "p"]
    return pd.DataFrame([{c: getattr(r, c) for c in cols} for r in recs], columns=cols)


def drawn_node_count(ax) -> int:
    """How many tree nodes `draw_tree` drew on `ax` (for tests and the widget)."""
    for coll in ax.collections:
        if coll.get_gid() == "tree-nodes":
            return len(coll.get_offsets())
    return 0


def highlighted_edge_count(ax) -> int:
    for coll in ax.collections:
        if coll.get_gid() == "tree-path":
            return len(coll.get_segments())
    return 0


def node_text(trace: Trace, sim_index: int, uid: int) -> tuple[str, str]:
    """(committed text before this simulation's root, text from the root down to node `uid`)."""
    sim = trace.simulations[sim_index]
    committed = "".join(c.text for c in trace.commits if c.outer_step < sim.outer_step)
    tree = trace.tree_at(sim_index)
    parts, u = [], uid
    while u is not None and u in tree and u != sim.root:
        parts.append(tree[u].text)
        u = tree[u].parent
    return committed, "".join(reversed(parts))


# ---------------------------------------------------------------------------------------------
# Value curves and the commit timeline


def child_values_frame(trace: Trace) -> pd.DataFrame:
    """One row per (simulation, child of the then-current root): q, n, p, text, outer step and
    whether that child was the one committed at the end of the step."""
    chosen = {c.outer_step: c.chosen for c in trace.commits}
    rows = []
    for s in trace.simulations:
        tree = trace.tree_at(s.index)
        for uid, nd in tree.items():
            if nd.parent == s.root:
                rows.append(dict(simulation=s.index, outer_step=s.outer_step, uid=uid, text=nd.text,
                                 q=nd.q, n=nd.n, p=nd.p, committed=chosen.get(s.outer_step) == uid))
    return pd.DataFrame(rows, columns=["simulation", "outer_step", "uid", "text", "q", "n", "p", "committed"])


def plot_child_values(trace: Trace, axes=None, frame: pd.DataFrame | None = None):
    """Value q (top) and visits n (bottom) of the root's children over simulations. The child
    each step commits is drawn in colour and named; its siblings are thin grey lines; dashed
    lines mark the commits. The early-stop thresholds from the trace's config are drawn as
    horizontal lines: V on the values, T_m on the visits (a step stops once its most visited
    child has more than T_m real visits and a value above V). Returns the figure."""
    plt = _plt()
    df = child_values_frame(trace) if frame is None else frame
    if axes is None:
        fig, axes = plt.subplots(2, 1, figsize=(9, 5.5), sharex=True)
    fig = axes[0].figure
    palette = plt.get_cmap("tab10")
    grey_done = False
    for k, (uid, d) in enumerate(df.groupby("uid", sort=True)):
        d = d.sort_values("simulation")
        if d.committed.any():
            step = int(d.outer_step.iloc[0])
            kw = dict(color=palette(step % 10), lw=2.2, label=f"step {step}: {short(d.text.iloc[0], 16)}")
        else:
            kw = dict(color="#b5b5b5", lw=0.8, label=None if grey_done else "other candidates")
            grey_done = True
        axes[0].plot(d.simulation, d.q, marker="o" if len(d) < 3 else None, ms=3, **kw)
        kw.pop("label")
        axes[1].plot(d.simulation, d.n, marker="o" if len(d) < 3 else None, ms=3, **kw)
    for c in trace.commits:
        end = c.first_simulation + c.simulations - 0.5
        for ax in axes:
            ax.axvline(end, color="black", ls="--", lw=0.8, alpha=0.6)
    v_thr, t_m = trace.config.get("value_threshold"), trace.config.get("min_visits")
    if v_thr is not None:
        axes[0].axhline(v_thr, color="#2ca02c", ls=":", lw=1.5, label=f"V = {v_thr:g} (early stop: q above)")
    if t_m is not None:
        axes[1].axhline(t_m, color="#2ca02c", ls=":", lw=1.5)
        axes[1].annotate(f"T_m = {t_m:g} (early stop: visits above)", (0, t_m), xytext=(2, 3),
                         textcoords="offset points", fontsize=7, color="#2ca02c")
    axes[0].set(ylabel="value q", ylim=(-1.08, 1.08),
                title="Root children over simulations (dashed: commit, then the root moves on)")
    axes[1].set(ylabel="visits n", xlabel="simulation")
    axes[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), title="committed child")
    fig.tight_layout()
    return fig


def plot_trees_at_commits(trace: Trace, visited_only: bool = True, max_labels: int = 12):
    """One tree drawing per commit (the live tree just before it, the committed child's edge
    highlighted); by default only the nodes the search visited. Returns (figure, table of the
    drawn trees' nodes)."""
    plt = _plt()
    k = max(len(trace.commits), 1)
    fig, axes = plt.subplots(k, 1, figsize=(14, 3.4 * k), squeeze=False)
    for ax, c in zip(axes[:, 0], trace.commits):
        hidden = sum(1 for nd in c.tree if nd.n == 0) if visited_only else 0
        draw_tree(c, ax=ax, max_labels=max_labels, legend=c.outer_step == 0, visited_only=visited_only,
                  title=f"Commit {c.outer_step}: after {c.simulations} simulations, commits {c.text!r}"
                        + (f"  ({hidden} candidates never visited not drawn)" if hidden else ""))
    fig.tight_layout()
    rows = pd.concat([nodes_frame(c.tree).assign(commit=c.outer_step, chosen=c.chosen) for c in trace.commits],
                     ignore_index=True) if trace.commits else nodes_frame([])
    rows["chosen"] = rows.uid == rows.get("chosen")
    return fig, rows


def commit_choice_frame(trace: Trace, outer_step: int) -> pd.DataFrame:
    """The root's children at one commit: text, prior p, visits n (and real fn), value q, the
    rank of each by prior / visits / value, and which was committed."""
    c = next(c for c in trace.commits if c.outer_step == outer_step)
    kids = [nd for nd in c.tree if nd.parent == c.root]
    df = pd.DataFrame([dict(uid=nd.uid, text=nd.text, p=nd.p, n=nd.n, fn=nd.fn, q=nd.q,
                            committed=nd.uid == c.chosen) for nd in kids])
    for col in ("p", "n", "q"):
        df[f"rank_{col}"] = df[col].rank(ascending=False, method="min").astype(int)
    first = commit_visit_history(trace, outer_step).groupby("uid").first()
    df["first_simulation"] = df.uid.map(first.simulation).astype("Int64")   # <NA>: never visited
    df["first_value"] = df.uid.map(first.value)
    return df.sort_values("p", ascending=False).reset_index(drop=True)


def commit_visit_history(trace: Trace, outer_step: int) -> pd.DataFrame:
    """Every real visit of the root's children at one commit, in the order the simulations made
    them (visits from earlier steps included: a committed child keeps its subtree's visits):
    uid, text, simulation (global index), step (the outer step it ran in), visit (1, 2, ... per
    child) and the value that simulation backed up."""
    c = next(c for c in trace.commits if c.outer_step == outer_step)
    kids = {nd.uid: nd.text for nd in c.tree if nd.parent == c.root}
    rows = [dict(uid=u, text=kids[u], simulation=s.index, step=s.outer_step, value=s.value)
            for s in trace.simulations if s.index < c.first_simulation + c.simulations
            for u in s.path if u in kids]
    df = pd.DataFrame(rows, columns=["uid", "text", "simulation", "step", "value"])
    df["visit"] = df.groupby("uid").cumcount() + 1
    return df


def commit_against_value(trace: Trace) -> int:
    """The first commit whose committed child is not the visited child with the best value (0
    when every commit took the best-valued child)."""
    for c in trace.commits:
        kids = [nd for nd in c.tree if nd.parent == c.root and nd.n > 0]
        if kids and max(kids, key=lambda nd: nd.q).uid != c.chosen and \
                max(nd.q for nd in kids) > next(nd.q for nd in kids if nd.uid == c.chosen):
            return c.outer_step
    return 0


def plot_commit_choice(df: pd.DataFrame, title: str = "", history: pd.DataFrame | None = None):
    """Three panels over the same children of the root (one row each, likeliest first): prior p,
    visits n and value q of the children that were visited; the committed child in colour, the
    one with the best value outlined. With `history` (`commit_visit_history`) a fourth panel
    shows each child's values in the order its visits came (x: simulation index), which is where
    the visits came from. `df`: `commit_choice_frame`."""
    plt = _plt()
    d = df[df.n > 0].reset_index(drop=True)
    panels = 3 if history is None else 4
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, max(2.8, 1.4 + 0.42 * len(d))), sharey=True)
    best = d.q.idxmax() if len(d) else None
    colours = ["#1f4e9c" if c else "#b5b5b5" for c in d.committed]
    edges = ["black" if i == best else "none" for i in range(len(d))]
    ys = np.arange(len(d))
    for ax, col, label in zip(axes, ("p", "n", "q"), ("prior p", "visits n", "value q")):
        ax.barh(ys, d[col], color=colours, edgecolor=edges, linewidth=2)
        ax.set(xlabel=label, title=label)
        for y, v in zip(ys, d[col]):
            ax.annotate(f"{v:.2g}", (v, y), xytext=(3 if v >= 0 else -3, 0), textcoords="offset points",
                        va="center", ha="left" if v >= 0 else "right", fontsize=7)
    axes[2].axvline(0, color="grey", lw=0.8)
    axes[2].set_xlim(-1.3, 1.3)
    if history is not None:
        row = {u: i for i, u in enumerate(d.uid)}
        h = history[history.uid.isin(row)]
        cmap = plt.get_cmap(VALUE_CMAP)
        axes[3].scatter(h.simulation, [row[u] for u in h.uid], c=[cmap((v + 1) / 2) for v in h.value],
                        s=46, edgecolor="black", linewidth=0.5, zorder=3)
        for y, u in enumerate(d.uid):
            xs = h[h.uid == u].simulation
            if len(xs):
                axes[3].plot([xs.min(), xs.max()], [y, y], color="#cccccc", lw=1, zorder=1)
        axes[3].set(xlabel="simulation (colour: its value, red -1 to green +1)",
                    title="values in the order the visits came")
        axes[3].xaxis.get_major_locator().set_params(integer=True)
    axes[0].set_yticks(ys, [short(t, 14) for t in d.text], fontsize=8)
    axes[0].invert_yaxis()
    axes[0].set_ylabel("visited children,\nlikeliest first")
    from matplotlib.patches import Patch

    axes[-1].legend(handles=[Patch(color="#1f4e9c", label="committed (most visits)"),
                             Patch(facecolor="white", edgecolor="black", linewidth=2, label="best value q")],
                    fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title or "What the commit follows: the visits, not the value")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def commits_frame(trace: Trace) -> pd.DataFrame:
    """One row per commit: its simulations, whether the step stopped early, the committed text,
    and the committed child's real visits `chosen_fn` and value `chosen_q` at the commit (what the
    early stop compares with T_m and V)."""
    def chosen(c):
        return next((nd for nd in c.tree if nd.uid == c.chosen), None)

    rows = [dict(outer_step=c.outer_step, first_simulation=c.first_simulation, simulations=c.simulations,
                 early_stop=c.early_stop, text=c.text, tokens=len(c.tokens), tree_size=len(c.tree),
                 chosen_fn=getattr(chosen(c), "fn", None), chosen_q=getattr(chosen(c), "q", None))
            for c in trace.commits]
    return pd.DataFrame(rows, columns=["outer_step", "first_simulation", "simulations", "early_stop",
                                       "text", "tokens", "tree_size", "chosen_fn", "chosen_q"])


def plot_commit_timeline(trace: Trace, ax=None):
    """One bar per outer step over the simulations it ran, labelled with the committed text;
    green when the early-stop test ended the step, orange when the budget ran out."""
    from matplotlib.patches import Patch

    df = commits_frame(trace)
    ax = _new_ax(ax, (9, 0.6 + 0.45 * max(len(df), 1)))
    colours = ["#2ca02c" if e else "#ff7f0e" for e in df.early_stop]
    ax.barh(df.outer_step, df.simulations, left=df.first_simulation - 0.5, color=colours,
            edgecolor="black", linewidth=0.5)
    for _, r in df.iterrows():
        ax.text(r.first_simulation + r.simulations - 0.3, r.outer_step, f" {short(r.text, 30)}",
                va="center", fontsize=8)
    ax.set(xlabel="simulation", ylabel="commit (outer step)",
           title="Commit timeline: simulations per step and the committed token set")
    ax.invert_yaxis()
    right = float((df.first_simulation + df.simulations).max()) if len(df) else 1.0
    ax.set_xlim(-0.8, right * 1.25 + 2)
    ax.legend(handles=[Patch(color="#2ca02c", label="early stop (visited and valued enough)"),
                       Patch(color="#ff7f0e", label="budget spent")], fontsize=8, loc="upper right")
    return ax


# ---------------------------------------------------------------------------------------------
# Similarity


def cosine_similarity_matrix(embeddings) -> np.ndarray:
    e = np.asarray(embeddings.detach().cpu() if hasattr(embeddings, "detach") else embeddings, dtype=float)
    e = e / np.clip(np.linalg.norm(e, axis=1, keepdims=True), 1e-12, None)
    return e @ e.T


def plot_similarity_heatmap(sim_or_embeddings, labels: Sequence[str], threshold: float = 0.95,
                            gamma: float = 0.2, ax=None, title: str | None = None):
    """Cosine similarity of sibling embeddings. Cells at or above `threshold` (off the diagonal)
    are boxed: those siblings share a value, with weight gamma * similarity. Accepts a square
    similarity matrix or an [n, d] embedding matrix."""
    import seaborn as sns
    from matplotlib.patches import Rectangle

    m = np.asarray(sim_or_embeddings.detach().cpu() if hasattr(sim_or_embeddings, "detach")
                   else sim_or_embeddings, dtype=float)
    square = m.ndim == 2 and m.shape[0] == m.shape[1]
    if not (square and np.allclose(m, m.T, atol=1e-6) and np.allclose(np.diag(m), 1.0, atol=1e-4)):
        m = cosine_similarity_matrix(m)      # rows are embeddings
    names = [short(t, 14) for t in labels]
    ax = _new_ax(ax, (1.6 + 0.6 * len(names), 1.2 + 0.5 * len(names)))
    # the diagonal (a sibling with itself, always 1) is masked: it carries no information
    sns.heatmap(pd.DataFrame(m, index=names, columns=names), ax=ax, vmin=min(0.0, float(m.min())), vmax=1.0,
                cmap="viridis", annot=len(names) <= 12, fmt=".2f", annot_kws={"fontsize": 7},
                cbar_kws={"label": "cosine similarity"}, mask=np.eye(len(names), dtype=bool))
    hits = 0
    for i in range(len(names)):
        for j in range(len(names)):
            if i != j and m[i, j] >= threshold:
                ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="red", lw=2))
                hits += 1
    ax.set(xlabel="sibling", ylabel="sibling",
           title=title or f"Sibling similarity: boxed cells (>= {threshold}) share values, "
                          f"w = {gamma} x similarity ({hits // 2} pairs)")
    return ax


def plot_sibling_similarity(pairs: pd.DataFrame, group: int | None, threshold: float = 0.95,
                            gamma: float = 0.2):
    """Left: every sibling pair's cosine similarity (`analysis.sibling_similarities`), stacked by
    depth, against the similarity update's threshold. Right: the similarity matrix of one sibling
    group (`group`: a parent uid, e.g. `analysis.most_similar_group`), diagonal masked, pairs at
    or above the threshold boxed. Returns the figure."""
    plt = _plt()
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw=dict(width_ratios=[1, 1.15]))
    depths = sorted(pairs.depth.unique())
    bins = np.linspace(min(-0.2, float(pairs.cosine.min()) if len(pairs) else 0.0), 1.0, 31)
    if depths:
        ax.hist([pairs[pairs.depth == d].cosine for d in depths], bins=bins, stacked=True,
                label=[f"depth {d} ({int((pairs.depth == d).sum())} pairs)" for d in depths],
                color=[plt.get_cmap("viridis")(i / max(len(depths) - 1, 1)) for i in range(len(depths))])
    else:
        ax.text(0.5, 0.5, "no two siblings have\nbeen evaluated yet", ha="center", va="center",
                transform=ax.transAxes, color="grey")
    above = int((pairs.cosine >= threshold).sum())
    ax.axvline(threshold, color="#d62728", ls="--", lw=1.5,
               label=f"threshold {threshold}: {above} of {len(pairs)} pairs at or above")
    ax.set(xlabel="cosine similarity of the two siblings' embeddings", ylabel="sibling pairs",
           title="Every pair of siblings in the tree")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)  # below:
    if group is None:                                           # inside, it hid bars (`legend_overlaps`)
        ax2.set_axis_off()
    else:
        g = pairs[pairs.parent == group]
        uids = list(dict.fromkeys(list(g.a) + list(g.b)))
        text = {**dict(zip(g.a, g.text_a)), **dict(zip(g.b, g.text_b))}
        m = np.eye(len(uids))
        for r in g.itertuples():
            i, j = uids.index(r.a), uids.index(r.b)
            m[i, j] = m[j, i] = r.cosine
        n_above = int((g.cosine >= threshold).sum())
        plot_similarity_heatmap(m, [text[u] for u in uids], threshold=threshold, gamma=gamma, ax=ax2,
                                title=f"The group with the most similar siblings (depth {int(g.depth.iloc[0])}):\n"
                                      f"{n_above} pair(s) >= {threshold} share values (w = {gamma} x cosine)")
        ax2.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def plot_similarity_counts(df: pd.DataFrame, threshold: float = 0.95, ax=None):
    """How often the similarity update fired in each of several searches: one bar per search
    (`request`, `similarity_updates`), with the highest cosine of an update written beside it
    (`highest_cosine`, NaN where none fired)."""
    ax = _new_ax(ax, (7, 0.8 + 0.38 * len(df)))
    y = np.arange(len(df))
    ax.barh(y, df.similarity_updates, color="#2a9d8f")
    for yi, (k, c) in enumerate(zip(df.similarity_updates, df.highest_cosine)):
        ax.annotate(f"{int(k)}" + (f" (highest cosine {c:.3f})" if k else ""), (k, yi), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, list(df.request), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(1.0, float(df.similarity_updates.max())) * 1.45)
    ax.set(xlabel=f"similarity updates in the search (siblings with cosine >= {threshold})",
           title=f"The similarity update on real text: {int((df.similarity_updates > 0).sum())} of "
                 f"{len(df)} searches")
    return ax


def plot_node_addition_timeline(df: pd.DataFrame, axes=None):
    """What the node-addition test sees at a node over simulations (`analysis.
    node_addition_timeline`): top, the variance norm of its children's embeddings against the
    threshold, each simulation that added a child marked; bottom, its number of children.
    Returns the figure."""
    plt = _plt()
    if axes is None:
        _, axes = plt.subplots(2, 1, figsize=(9, 5.4), sharex=True, gridspec_kw=dict(height_ratios=[1.6, 1]))
    ax, ax2 = axes
    ax.plot(df.simulation, df.variance_norm, marker="o", ms=3, color="#4c72b0",
            label="variance norm of the children's embeddings")
    ax.step(df.simulation, df.threshold, where="mid", color="#d62728", ls="--", lw=1.2,
            label=f"threshold = factor x level length ({df.threshold.iloc[0]:g} here)" if len(df) else None)
    fired = df[df.added > 0]
    ax.plot(fired.simulation, fired.variance_norm, ls="", marker="*", ms=13, color="#ff7f0e",
            markeredgecolor="black", label=f"a child added ({int(df.added.sum())} in all)")
    waiting = df[df.variance_norm.isna() & (df.children > 0)]
    for i, s in enumerate(waiting.simulation):
        ax.axvspan(s - 0.5, s + 0.5, color="#dddddd", lw=0, label="a child not tried yet (no test)" if i == 0 else None)
    ax.set(ylabel="variance norm", title="Dynamic node addition: below the threshold with every child q < 0, "
                                         "the node gets a new child")
    ax.legend(fontsize=8, loc="upper right")
    ax2.step(df.simulation, df.children, where="post", color="black", label="children of the node")
    ax2.set(xlabel="simulation", ylabel="children")
    if (df.added_anywhere > df.added).any():
        ax2.plot(df.simulation, df.added_anywhere.cumsum(), color="grey", ls=":",
                 label="children added anywhere in the tree (cumulative)")
    ax2.legend(fontsize=8, loc="upper left")
    ax.figure.tight_layout()
    return ax.figure


# ---------------------------------------------------------------------------------------------
# Figures of the other notebooks


def plot_method_stats(df: pd.DataFrame, metrics: Sequence[str] = ("wall_time_s", "forward_calls",
                                                                  "tokens_computed"), axes=None):
    """One bar panel per statistic, one bar per method (rows of `df` with a 'method' column)."""
    plt = _plt()
    metrics = [m for m in metrics if m in df.columns]
    if axes is None:
        _, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3.2))
    axes = np.atleast_1d(axes)
    colours = {m: c for m, c in zip(df.method.unique(), plt.get_cmap("tab10").colors)}
    names = {"wall_time_s": "wall time (s)", "forward_calls": "model forward calls",
             "tokens_computed": "tokens computed", "committed_tokens": "response tokens",
             "simulations": "simulations"}
    for ax, m in zip(axes, metrics):
        ax.bar(df.method, df[m], color=[colours[x] for x in df.method])
        ax.set(title=names.get(m, m), ylabel=names.get(m, m), xlabel="method")
        for x, y in zip(df.method, df[m]):
            ax.annotate(f"{y:,.0f}" if abs(y) >= 100 else f"{y:.3g}", (x, y), ha="center", va="bottom",
                        fontsize=8)
    axes[0].figure.suptitle("What RAIN costs compared with vanilla decoding (same prompt)")
    axes[0].figure.tight_layout()
    return axes[0].figure


def _spread(xs: Sequence[float], factor: float = 1.12) -> list[float]:
    """Log-scale x positions with equal values pulled apart (x, x*f, x/f, x*f^2, ...)."""
    seen: dict[float, int] = {}
    out = []
    for x in xs:
        k = seen.get(x, 0)
        seen[x] = k + 1
        step = (k + 1) // 2 * (1 if k % 2 else -1)
        out.append(x * factor ** step)
    return out


def plot_self_eval_by_size(measured: pd.DataFrame, paper: pd.DataFrame | None = None, ax=None,
                           show_paper: bool = True):
    """Self-evaluation accuracy against model size (log x), the paper's reported LLaMA numbers
    as a reference curve (`show_paper=False`: without them; `plot_paper_self_eval` draws them in
    a panel of their own). `measured` rows (one per model and judge mode): model, params_b, judge,
    strict (share of pairs where the less harmful answer scores strictly higher), strict_lo /
    strict_hi (interval), tie_rate, n. Ties are not wins: a judge that ties every pair sits at 0
    here, with its tie rate written beside it."""
    from .analysis import PAPER_SELF_EVAL_ACCURACY

    paper = PAPER_SELF_EVAL_ACCURACY if paper is None else paper
    if not show_paper:
        paper = paper.iloc[0:0]
    ax = _new_ax(ax, (8, 4.6))
    llama = paper[~paper.model.str.contains("LLaMA-2")].sort_values("params_b")
    rest = paper[paper.model.str.contains("LLaMA-2")]
    if len(paper):
        ax.plot(llama.params_b, llama.accuracy, marker="o", color="#4c72b0", lw=1.8,
                label="LLaMA 7B-65B (paper, reported)")
        ax.plot(rest.params_b, rest.accuracy, marker="D", ls="", color="#4c72b0", mfc="white", ms=7,
                label="LLaMA-2 70B (paper, reported)")
    for r in paper.itertuples():
        ax.annotate(f"{r.model}\n{r.accuracy:.0%}", (r.params_b, r.accuracy), xytext=(0, 6),
                    textcoords="offset points", ha="center", fontsize=7, color="#4c72b0")
    colours = dict(zip(sorted(measured.get("judge", pd.Series([""])).fillna("").unique()),
                       ["#d62728", "#ff7f0e", "#2ca02c", "#9467bd"]))
    m = measured.assign(judge=measured.get("judge", "").fillna("") if "judge" in measured else "")
    m = m.assign(x=_spread(list(m.params_b)))
    # points of the same size: labels alternate left / right of the markers
    m = m.assign(side=m.groupby("params_b").cumcount() % 2 * 2 - 1)
    for judge, d in m.groupby("judge", sort=True):
        d = d.sort_values("x")
        c = colours.get(judge, "#d62728")
        lo = d.strict_lo if "strict_lo" in d else d.strict
        hi = d.strict_hi if "strict_hi" in d else d.strict
        yerr = np.clip(np.vstack([d.strict - lo.fillna(d.strict), hi.fillna(d.strict) - d.strict]), 0, None)
        ax.errorbar(d.x, d.strict, yerr=yerr, marker="s", ms=7, capsize=4, color=c, elinewidth=1.2,
                    ls="-" if len(d) > 1 else "none", lw=1,
                    label=f"measured here{f', {judge} judge' if judge else ''} (95% interval)")
        for r in d.itertuples():
            ties = getattr(r, "tie_rate", 0.0)
            n = getattr(r, "n", None)
            text = f"{r.model}\n{r.strict:.0%} right" + (f", {ties:.0%} ties" if ties and ties > 0 else "") \
                + (f"\n(n={int(n)})" if n is not None and pd.notna(n) else "")
            ax.annotate(text, (r.x, r.strict), xytext=(10 * r.side, 0), textcoords="offset points",
                        ha="left" if r.side > 0 else "right", va="center", fontsize=7, color=c)
    ax.axhline(0.5, color="grey", ls="--", lw=1, label="coin flip (50%)")
    xs = list(paper.params_b) + list(m.x)
    ax.set_xscale("log")
    ax.set(xlim=(min(xs) / 8, max(xs) * 2.5), ylim=(-0.1, 1.12),
           xlabel="parameters (billions, log scale)",
           ylabel="share of pairs judged right (ties not counted)",
           title="Self-evaluation accuracy on harmlessness by model size")
    ax.yaxis.set_major_formatter(_plt().FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.legend(fontsize=8, loc="upper left")
    return ax


def plot_pair_outcomes(measured: pd.DataFrame, ax=None):
    """For each judge: the share of preference pairs it got right (the less harmful answer
    scored higher), tied (both answers the same score) and wrong. `measured` rows: model, judge,
    strict, tie_rate, n (and accuracy: ties counted half)."""
    ax = _new_ax(ax, (7, 0.9 + 0.55 * len(measured)))
    names = [f"{r.model} ({r.judge})" if getattr(r, "judge", "") else r.model for r in measured.itertuples()]
    right = measured.strict.to_numpy(float)
    ties = measured.tie_rate.to_numpy(float)
    wrong = 1 - right - ties
    ys = np.arange(len(measured))
    for left, width, colour, label in [(0, right, "#2ca02c", "right"), (right, ties, "#b5b5b5", "tie"),
                                       (right + ties, wrong, "#d62728", "wrong")]:
        bars = ax.barh(ys, width, left=left, color=colour, label=label, edgecolor="white")
        ax.bar_label(bars, labels=[f"{w:.0%}" if w >= 0.06 else "" for w in width], label_type="center",
                     fontsize=8, color="white" if colour != "#b5b5b5" else "black")
    ax.set_yticks(ys, names, fontsize=8)
    ax.invert_yaxis()
    ns = measured.n if "n" in measured else pd.Series([None] * len(measured))
    n_txt = f"{int(ns.iloc[0])} pairs" if len(ns) and pd.notna(ns.iloc[0]) else "pairs"
    ax.set(xlim=(0, 1), xlabel=f"share of {n_txt}", title="Right, tied, wrong")
    ax.xaxis.set_major_formatter(_plt().FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18), frameon=False)
    return ax


def plot_paper_self_eval(paper: pd.DataFrame | None = None, ax=None):
    """The paper's reported self-evaluation accuracies (`analysis.PAPER_SELF_EVAL_ACCURACY`) as
    bars in a panel of their own: the paper does not state how it counts a tie (the two option
    orders disagreeing), so its numbers are not drawn on the axis of our strict measure."""
    from .analysis import PAPER_SELF_EVAL_ACCURACY

    paper = PAPER_SELF_EVAL_ACCURACY if paper is None else paper
    ax = _new_ax(ax, (4.5, 4.6))
    bars = ax.bar(range(len(paper)), paper.accuracy, color="#4c72b0", width=0.6)
    ax.bar_label(bars, labels=[f"{a:.0%}" for a in paper.accuracy], fontsize=8)
    ax.set_xticks(range(len(paper)), [m.replace(" ", "\n", 1) for m in paper.model], fontsize=8)
    ax.set(ylim=(0, 1.12), ylabel="self-evaluation accuracy, as reported",
           title="The paper (reported, not measured here)\nmetric as reported: how ties count is not stated")
    ax.yaxis.set_major_formatter(_plt().FuncFormatter(lambda v, _: f"{v:.0%}"))
    return ax


def plot_self_eval_summary(measured: pd.DataFrame):
    """Notebook 01's figure: our accuracy by model size, ties not counted (left), each judge's
    right / tied / wrong shares (middle), and the paper's reported accuracies in a panel of their
    own (right: the paper does not state its metric's treatment of ties, so they are not drawn on
    our axis). `measured`: `analysis.self_eval_rows`."""
    plt = _plt()
    fig, (ax, ax2, ax3) = plt.subplots(1, 3, figsize=(18, 4.8), gridspec_kw=dict(width_ratios=[1.3, 1, 1]))
    plot_self_eval_by_size(measured, ax=ax, show_paper=False)
    ax.set_title("Measured here: self-evaluation accuracy (ties not counted)")
    plot_pair_outcomes(measured, ax=ax2)
    plot_paper_self_eval(ax=ax3)
    fig.tight_layout()
    return fig


def plot_harmless_by_size(measured: pd.DataFrame, paper: pd.DataFrame | None = None, ax=None):
    """The paper's Figure 1 form: harmless rate of vanilla decoding (hollow) and RAIN (filled),
    joined by an arrow, against model size (log x). `measured` rows: model, params_b, vanilla,
    rain and, where known, vanilla_lo/_hi, rain_lo/_hi (rates in [0, 1]); the paper's reported
    LLaMA numbers (`analysis.PAPER_HH_HARMLESS`) are drawn beside them."""
    from .analysis import PAPER_HH_HARMLESS

    paper = PAPER_HH_HARMLESS if paper is None else paper
    ax = _new_ax(ax, (8, 4.6))
    groups = [(paper, "#4c72b0", "paper (reported, GPT-4 judge)", False),
              (measured, "#d62728", "measured here (95% interval)", True)]
    xs_all = []
    for df, colour, label, bars in groups:
        xs = _spread(list(df.params_b))
        xs_all += xs
        for x, r in zip(xs, df.itertuples()):
            at = {"vanilla": x / 1.05, "rain": x * 1.05}      # side by side, intervals apart
            for m, face in (("vanilla", "white"), ("rain", colour)):
                y = getattr(r, m)
                lo, hi = getattr(r, f"{m}_lo", None), getattr(r, f"{m}_hi", None)
                if bars and lo is not None and pd.notna(lo):
                    ax.errorbar([at[m]], [y], yerr=[[y - lo], [hi - y]], color=colour, capsize=3, lw=1,
                                zorder=2)
                ax.plot([at[m]], [y], marker="o", ms=8, mfc=face, mec=colour, mew=1.5, ls="", zorder=3)
            ax.annotate("", xy=(at["rain"], r.rain), xytext=(at["vanilla"], r.vanilla),
                        arrowprops=dict(arrowstyle="->", color=colour, lw=1.4, shrinkA=5, shrinkB=5))
            low = min(r.vanilla, r.rain)
            if bars and pd.notna(getattr(r, "vanilla_lo", None)):
                low = min(low, r.vanilla_lo, r.rain_lo)
            ax.annotate(f"{str(r.model).split('/')[-1]}\n{r.vanilla:.0%} → {r.rain:.0%}", (x, low),
                        xytext=(0, -8), textcoords="offset points", ha="center", va="top", fontsize=7,
                        color=colour)
        ax.plot([], [], marker="o", ms=8, color=colour, ls="", label=label)
    ax.plot([], [], marker="o", ms=8, mfc="white", mec="grey", ls="", label="vanilla decoding (hollow)")
    ax.plot([], [], marker="o", ms=8, color="grey", ls="", label="RAIN (filled)")
    ax.set_xscale("log")
    ax.set(xlim=(min(xs_all) / 2.5, max(xs_all) * 2.5), ylim=(-0.2, 1.08),
           xlabel="parameters (billions, log scale)", ylabel="harmless rate",
           title="Harmless rate, vanilla decoding → RAIN, by model size")
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.yaxis.set_major_formatter(_plt().FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_selection_sweep(df: pd.DataFrame, axes=None):
    """For each c: how the visits spread over the children (left), and the best child's share
    with the number of children tried (right). `df` from `analysis.selection_sweep`."""
    plt = _plt()
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    cs = sorted(df.c.unique())
    kids = sorted(df.child.unique())
    bottom = np.zeros(len(cs))
    cmap = plt.get_cmap("viridis")
    for k in kids:
        d = df[df.child == k].set_index("c").loc[cs]
        lab = f"child {k} (true {d.true_value.iloc[0]:+.1f}, prior {d.prior.iloc[0]:.2f})"
        axes[0].bar([str(c) for c in cs], d.share, bottom=bottom, color=cmap(k / max(len(kids) - 1, 1)),
                    label=lab, edgecolor="white", linewidth=0.5)
        bottom += d.share.to_numpy()
    axes[0].set(xlabel="exploration constant c", ylabel="share of visits",
                title="Where the visits go")
    axes[0].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    best = df[df.best].set_index("c").loc[cs]
    tried = df[df.visits > 0].groupby("c").size().reindex(cs, fill_value=0)
    axes[1].plot(cs, best.share, marker="o", label="share of visits to the best child")
    axes[1].set_xscale("symlog", linthresh=min([c for c in cs if c > 0], default=1.0))   # c = 0 stays on the axis
    axes[1].set_xticks(cs, [f"{c:g}" for c in cs])
    axes[1].set(xlabel="exploration constant c (log scale, 0 at the left)", ylabel="share of visits", ylim=(0, 1.05),
                title="Exploitation vs exploration")
    ax2 = axes[1].twinx()
    ax2.plot(cs, tried, marker="s", color="#ff7f0e", label="children tried at least once")
    ax2.set_ylabel("children tried")
    ax2.set_ylim(0, len(kids) + 0.5)
    h1, l1 = axes[1].get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    axes[1].legend(h1 + h2, l1 + l2, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2,
                   frameon=False)     # below the axes: inside, it hid the curves (`legend_overlaps`)
    axes[0].figure.tight_layout()
    return axes[0].figure


def plot_candidate_sets(df: pd.DataFrame, top: int = 10):
    """A 2 x 2 grid (one panel per depth): the candidate token sets that expansion proposed and
    their priors. Labels keep the end of each candidate, where siblings that share their start
    differ. `df` from `analysis.candidate_sets`."""
    plt = _plt()
    depths = sorted(df.depth.unique())
    cols = 2 if len(depths) > 1 else 1
    rows = math.ceil(len(depths) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.6 * rows), squeeze=False)
    for ax, d in zip(axes.flat, depths):
        sub = df[df.depth == d].sort_values("rank").head(top)
        ax.barh(range(len(sub)), sub.prior, color="#4c72b0")
        ax.set_yticks(range(len(sub)), [short(t, 44, keep="end") for t in sub.text], fontsize=8,
                      fontfamily="monospace")
        ax.invert_yaxis()
        ax.set(xlabel="prior p", title=f"depth {d}: {int(sub.length.max())}-token sets")
    for ax in list(axes.flat)[len(depths):]:
        ax.set_axis_off()
    for ax in axes[:, 0]:
        ax.set_ylabel("candidate (order proposed)")
    fig.suptitle("Candidate token sets proposed at each depth (following the likeliest candidate; from "
                 "depth 2 on the first is the greedy rollout; labels show the end of each set)")
    fig.tight_layout()
    return fig


def plot_root_priors(root_sets: pd.DataFrame, ax=None):
    """The root's children: the model's probability of each first token (renormalised over the
    candidates) beside its prior after the root mix 0.75 p + 0.25 / k. `root_sets`: rows of
    `analysis.candidate_sets` at the root's depth."""
    import seaborn as sns

    d = root_sets.assign(**{"model probability (renormalised)": root_sets.raw_p / root_sets.raw_p.sum(),
                            "prior after the root mix": root_sets.prior})
    long = d.melt(id_vars="text", value_vars=["model probability (renormalised)", "prior after the root mix"],
                  var_name="kind", value_name="probability")
    labels = [short(t, 12) for t in d.text]
    long["text"] = long.text.map(dict(zip(d.text, range(len(d)))))     # one bar pair per candidate
    ax = _new_ax(ax, (8, 3.6))
    sns.barplot(data=long, x="text", y="probability", hue="kind", ax=ax)
    ax.set_xticks(range(len(d)), labels)
    ax.axhline(1 / len(d), color="grey", ls=":", lw=1, label=f"uniform 1/k = {1 / len(d):.2f}")
    ax.set(title="Priors of the root's children: the model's probabilities, flattened a little",
           xlabel="candidate first token", ylabel="probability")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize=8)
    return ax


def plot_quality_sweep(df: pd.DataFrame, ax=None):
    """RAIN outcome (share of good responses by the ground truth) against simulated judge
    accuracy p, with greedy decoding and the model's own evaluator for reference. `df` from
    `analysis.evaluator_quality_sweep`."""
    from ..experiments.stats import wilson_interval

    ax = _new_ax(ax, (7.5, 4.2))
    sim = df[df.method == "simulated"]
    g = sim.groupby("p").good.agg(["mean", "count", "sum"]).reset_index()
    ci = np.array([wilson_interval(k, n) for k, n in zip(g["sum"], g["count"])]).reshape(-1, 2)
    yerr = np.clip(np.vstack([g["mean"] - ci[:, 0], ci[:, 1] - g["mean"]]), 0, None)
    runs = int(g["count"].max()) if len(g) else 0
    ax.errorbar(g.p, g["mean"], yerr=yerr, marker="o", capsize=4, color="#4c72b0",
                label=f"RAIN + simulated judge (right with prob. p); 95% interval, {runs} runs per p")
    van = df[df.method == "vanilla (greedy)"]
    if len(van):
        ax.axhline(van.good.mean(), color="grey", ls="--", label=f"greedy decoding ({van.good.mean():.0%})")
    own = df[df.method == "own evaluator"]
    xlim = (0.45, 1.03)
    if len(own):
        ties, n = int(own.judge_ties.sum()), int(own.judge_judgements.sum())
        decided = n - ties
        agree = float((own.judge_decided_agreement * (own.judge_judgements - own.judge_ties)).sum())
        tie_note = f"ties (value 0) on {ties} of {n} judgements"
        if decided:   # placed at its agreement where it gave a verdict; ties are not half right
            x, label = agree / decided, (f"RAIN + the model's own evaluator (x = its agreement on the "
                                         f"{decided} judgements with a verdict; {tie_note})")
        else:         # no verdict at all: drawn apart, left of the accuracy axis
            x, xlim = 0.38, (0.33, 1.03)
            label = f"RAIN + the model's own evaluator: no verdict ({tie_note})"
            ax.axvline(0.43, color="black", lw=0.8)
            ax.annotate("all ties\n(no verdict)", (0.38, 0.0), ha="center", va="bottom", fontsize=8)
        ax.scatter([x], [own.good.mean()], marker="*", s=220, color="#d62728", zorder=5, label=label)
    ax.set(xlabel="judge accuracy p (agreement with the ground truth)",
           ylabel="share of good responses", ylim=(-0.05, 1.05), xlim=xlim,
           title="Simulation of judge quality: RAIN is only as good as its evaluator")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_backup(table: pd.DataFrame, ax=None):
    """Value before and after one simulation for each touched node (`analysis.backup_table`)."""
    ax = _new_ax(ax, (8, 3.6))
    x = np.arange(len(table))
    labels = [("root" if r.depth == 0 else short(r.text, 12)) + ("\n(similar)" if r.role == "similar" else "")
              for r in table.itertuples()]
    ax.bar(x - 0.2, table.q_before, 0.4, label="q before", color="#b5b5b5")
    ax.bar(x + 0.2, table.q_after, 0.4, label="q after", color="#4c72b0")
    for xi, r in zip(x, table.itertuples()):
        ax.annotate(f"n {r.n_before:.3g}→{r.n_after:.3g}", (xi, max(r.q_before, r.q_after, 0)),
                    xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
    v = float(table.v.iloc[0]) if len(table) else 0.0
    ax.axhline(v, color="#d62728", ls="--", lw=1, label=f"evaluated value v = {v:+.2f}")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set(ylim=(-1.15, 1.25), ylabel="value q", xlabel="node (path from the root, then similar siblings)",
           title="Backward: every node on the path moves its mean value towards v")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


def plot_node_addition(table: pd.DataFrame, ax=None):
    """Each expanded node's embedding-variance norm against its threshold, marked by whether all
    children look bad and whether node addition fires (`analysis.node_addition_table`)."""
    ax = _new_ax(ax, (7.5, 3.8))
    t = table.dropna(subset=["variance_norm"])
    for (neg, fires), d in t.groupby(["all_negative", "fires"]):
        ax.scatter(d.threshold, d.variance_norm, s=50,
                   marker="*" if fires else "o", label=("fires" if fires else "does not fire")
                   + (", all children q < 0" if neg else ", some child q >= 0"))
    hi = max(float(t.variance_norm.max()) if len(t) else 0.1, float(t.threshold.max()) if len(t) else 0.1)
    ax.plot([0, hi * 1.1], [0, hi * 1.1], color="grey", ls="--", lw=1, label="norm = threshold")
    ax.set(xlabel="threshold = 0.03 x token-set length", ylabel="variance norm of children's embeddings",
           title="Dynamic node addition: children too alike (below the line) and all bad")
    ax.legend(fontsize=8)
    return ax


def plot_judge_breakdown(df: pd.DataFrame):
    """Letter probabilities of the self-evaluator in both option orders, one panel per example
    (rows of `analysis.judge_breakdown` with an 'example' column). The bar of the letter that
    means the positive label is outlined: when it is the taller one, that order votes for it."""
    plt = _plt()
    examples = list(dict.fromkeys(df.example))
    fig, axes = plt.subplots(1, len(examples), figsize=(5.4 * len(examples), 3.8), squeeze=False, sharey=True)
    letters = [c[2:-1] for c in df.columns if c.startswith("P(") and len(c) == 4]
    colours = plt.get_cmap("tab10").colors
    for ax, ex in zip(axes[0], examples):
        d = df[df.example == ex].reset_index(drop=True)
        width = 0.8 / len(letters)
        for k, a in enumerate(letters):
            xs = np.arange(len(d)) + (k - (len(letters) - 1) / 2) * width
            bars = ax.bar(xs, d[f"P({a})"], width, color=colours[k], label=f"letter {a}")
            for b, pos in zip(bars, d.positive_letter):
                if pos == a:
                    b.set_edgecolor("black")
                    b.set_linewidth(2.2)
        ax.set_xticks(range(len(d)), [o.replace(" (B)", "\n(B)") for o in d.options], fontsize=8)
        ax.axhline(0.5, color="grey", ls=":", lw=1)
        votes = int((d.vote > 0).sum())
        ax.set(title=f"{ex}\n{votes}/{len(d)} votes for the positive label, v = {d.value.iloc[0]:+.2f} "
                     f"({d['mode'].iloc[0]})",
               xlabel="option order asked", ylim=(0, 1.05))
    axes[0][0].set_ylabel("probability of the option letter")
    from matplotlib.patches import Patch

    handles = [Patch(color=colours[k], label=f"letter {a}") for k, a in enumerate(letters)]
    handles.append(Patch(facecolor="none", edgecolor="black", linewidth=2.2,
                         label="the letter meaning\nthe positive label"))
    axes[0][-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Self-evaluation: the same question with the options in both orders")
    fig.tight_layout()
    return fig


def plot_selection_terms(df: pd.DataFrame, top: int = 10):
    """The selection score of each child split into its exploitation part (normalised value qh)
    and its exploration bonus (c p sqrt(N) / (1 + n)), one panel per c; a star marks the child
    the next simulation would pick. `df`: `analysis.selection_terms` rows with a 'c' column."""
    plt = _plt()
    cs = sorted(df.c.unique())
    fig, axes = plt.subplots(1, len(cs), figsize=(3.4 * len(cs), 0.9 + 0.32 * min(top, df.uid.nunique())),
                             sharey=True, squeeze=False)
    for ax, c in zip(axes[0], cs):
        d = df[df.c == c].head(top).reset_index(drop=True)
        ys = np.arange(len(d))
        ax.barh(ys, d.exploit, color="#4c72b0", label="exploit: normalised value qh")
        ax.barh(ys, d.explore, left=d.exploit, color="#dd8452", label="explore: c p √N / (1 + n)")
        best = int(d.score.idxmax())
        ax.plot([d.score[best]], [best], marker="*", ms=13, color="black", ls="", label="picked next")
        ax.set(title=f"c = {c:g}", xlabel="selection score")
    labels = [f"{short(t, 14)} (n={n:.3g})" for t, n in zip(d.text, d.n)]
    axes[0][0].set_yticks(np.arange(len(labels)), labels, fontsize=8)
    axes[0][0].invert_yaxis()
    axes[0][0].set_ylabel("child of the root (visits)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle("Selection: value (exploitation) + prior-weighted bonus (exploration)")
    fig.tight_layout()
    return fig


def plot_parallel_quality(table: pd.DataFrame, margin: float = 0.05, axes=None):
    """Three panels from `analysis.parallel_quality_table` (one p), every point with its 95%
    interval over questions: the share of good answers for each K, the paired difference (with 0
    and the -margin it must not fall below), and the cost, forward passes per simulation for each
    K. Draws only what the table holds (the figure agrees with its CSV); no legend."""
    plt = _plt()
    if table.p.nunique() != 1:
        raise ValueError("one judge accuracy p per figure")
    if axes is None:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4), gridspec_kw=dict(width_ratios=[1, 0.7, 1]))
    colours = ["#4c72b0", "#dd8452", "#55a868"]
    for ax, measure in zip(axes, ("share good", "difference", "passes per simulation")):
        rows = table[table.measure == measure].reset_index(drop=True)
        for i, r in rows.iterrows():
            err = np.clip([[r.estimate - r.lo], [r.hi - r.estimate]], 0, None)
            ax.errorbar([i], [r.estimate], yerr=err, fmt="o", capsize=5, ms=7,
                        color=colours[2] if measure == "difference" else colours[i % 2])
        ax.set_xticks(range(len(rows)), [f"K = {k}" + (" (sequential)" if k == "1" else "") for k in rows.k]
                      if measure != "difference" else [f"K = {k.replace(' - ', ' minus K = ')}" for k in rows.k])
        ax.set_xlim(-0.6, len(rows) - 0.4)
    q = table.iloc[0]
    axes[0].set(ylim=(-0.05, 1.05), ylabel="share of good answers",
                title=f"Quality: {q.questions} questions, {q.pairs} runs per K")
    axes[1].axhline(0, color="grey", lw=1)
    axes[1].axhline(-margin, color="#c44e52", ls="--", lw=1)
    d = table[table.measure == "difference"]
    lim = max(0.2, float(np.nanmax(np.abs(np.r_[d.lo, d.hi, -margin]))) + 0.05) if len(d) else 0.2
    axes[1].set(ylim=(-lim, lim), ylabel="paired difference in share good",
                title=f"Paired; dashed: -{margin:g}, the tolerated loss")
    top = float(table[table.measure == "passes per simulation"].hi.max())
    axes[2].set(ylim=(0, (top if np.isfinite(top) else 1) * 1.15), ylabel="forward passes per simulation",
                title="Cost: sequential passes per simulation")
    axes[0].figure.suptitle(f"K slots vs the sequential search, SIMULATED judge p = {q.p:g}, "
                            "equal simulation budget (95% intervals resample questions)")
    axes[0].figure.tight_layout()
    return axes


def plot_flight(log: pd.DataFrame, k: int, ax=None):
    """The simulations of a search with K slots on the flow's logical clock (`FlightLog.frame()`):
    one row per slot, each walk a bar from the tick it started to the tick its value was backed
    up, labelled with its walk number; a walk with no request (a memo hit on a terminal leaf)
    is a tick mark. A dotted line where an outer step begins."""
    ax = _new_ax(ax, figsize=(11, 3.2))
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c"]
    for r in log.itertuples():
        width = r.end_tick - r.start_tick
        if width > 0:
            ax.barh(r.slot, width, left=r.start_tick, height=0.6, color=colours[r.step % len(colours)],
                    edgecolor="black", lw=0.5)
            ax.text(r.start_tick + width / 2, r.slot, str(r.walk), ha="center", va="center", fontsize=7)
        else:
            ax.plot([r.start_tick] * 2, [r.slot - 0.3, r.slot + 0.3], color="black", lw=1.5)
    for t in log.groupby("step").start_tick.min().iloc[1:]:
        ax.axvline(t, color="grey", ls=":", lw=1)
    ax.set(yticks=range(k), yticklabels=[f"slot {s}" for s in range(k)], ylim=(k - 0.5, -0.5),
           xlabel="logical tick (raintools.flow)",
           title=f"K = {k}: simulations in flight (bar: walk start to back-up; colour: outer step)")
    return ax
