"""Interactive explorers for JupyterLab (ipywidgets). They read `Trace`s only.

    from raintools.views.widgets import TreeExplorer
    TreeExplorer(result.trace)          # a slider over simulations, a node picker, the tree, the text

The callbacks are plain methods (`show(sim_index, node=None)`), so the explorer is testable
without a browser: after `show(i)` the figure holds the tree after simulation i
(`explorer.ax`), and `explorer.text.value` the text at the selected node.
"""

from __future__ import annotations

import html
import io

from .plots import draw_tree, drawn_node_count, node_text, short
from ..trace import Trace


class TreeExplorer:
    """Slider over the simulations of a trace; redraws the live tree after the chosen simulation
    (selected path highlighted) and shows the text at a node (default: the simulation's leaf):
    the committed text so far, the node's own path, and what was evaluated with its value."""

    def __init__(self, trace: Trace, figsize=(11, 4.6), max_labels: int = 16):
        import ipywidgets as W
        import matplotlib.pyplot as plt

        if not trace.simulations:
            raise ValueError("The trace has no simulations to explore (was record_trace off?).")
        self.trace = trace
        self.max_labels = max_labels
        self.fig = plt.figure(figsize=figsize)
        plt.close(self.fig)            # drawn into the Image widget, not shown by the backend
        self.ax = None
        self.sim_index = 0
        self.node = None
        n = len(trace.simulations)
        self.slider = W.IntSlider(value=0, min=0, max=n - 1, step=1, description="simulation",
                                  continuous_update=False, layout=W.Layout(width="60%"))
        self.play = W.Play(value=0, min=0, max=n - 1, step=1, interval=700, description="play")
        W.jslink((self.play, "value"), (self.slider, "value"))
        self.picker = W.Dropdown(description="node", layout=W.Layout(width="40%"))
        self.image = W.Image(format="png")
        self.text = W.HTML()
        self._quiet = False
        self.slider.observe(self._on_slider, names="value")
        self.picker.observe(self._on_pick, names="value")
        self.widget = W.VBox([W.HBox([self.play, self.slider, self.picker]), self.image, self.text])
        self.show(0)

    # -- callbacks
    def _on_slider(self, change):
        if not self._quiet:
            self.show(int(change["new"]))

    def _on_pick(self, change):
        if not self._quiet and change["new"] is not None:
            self.show(self.sim_index, int(change["new"]))

    # -- drawing
    def show(self, sim_index: int, node: int | None = None):
        """Redraw the tree after simulation `sim_index` and show the text at `node` (default: that
        simulation's leaf). Returns the axes drawn on."""
        sims = self.trace.simulations
        sim_index = max(0, min(int(sim_index), len(sims) - 1))
        sim = sims[sim_index]
        tree = self.trace.tree_at(sim_index)
        node = sim.leaf if node is None or node not in tree else node
        self.sim_index, self.node = sim_index, node
        self._quiet = True                     # widget changes below must not re-enter show()
        try:
            self.slider.value = sim_index
            order = sorted(tree, key=lambda u: (tree[u].step, u))
            self.picker.options = [(("root" if u == sim.root else short(tree[u].text, 18))
                                    + f" (n={tree[u].n:.3g}, q={tree[u].q:+.2f})", u) for u in order]
            self.picker.value = node
        finally:
            self._quiet = False
        self.fig.clear()
        self.ax = self.fig.add_subplot(111)
        draw_tree(self.trace, sim_index=sim_index, ax=self.ax, selected=node, max_labels=self.max_labels,
                  title=f"Simulation {sim_index} (commit step {sim.outer_step}"
                        f"{self._round_note(sim)}): selected path in blue, value {sim.value:+.2f}")
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        self.image.value = buf.getvalue()
        self.text.value = self._text_html(sim_index, node)
        return self.ax

    def _round_note(self, sim) -> str:
        """', walk r in start order' for a parallel search's simulation (the trace's `round`: the
        order its walk started in; its index is the order of back-ups)."""
        if sim.round < 0 or self.trace.config.get("parallel_simulations", 1) == 1:
            return ""
        return f", walk {sim.round} in start order"

    @property
    def drawn_nodes(self) -> int:
        return drawn_node_count(self.ax) if self.ax is not None else 0

    def _text_html(self, sim_index: int, node: int) -> str:
        sim = self.trace.simulations[sim_index]
        committed, path = node_text(self.trace, sim_index, node)
        nd = self.trace.tree_at(sim_index)[node]
        e = html.escape
        rows = [
            f"<b>Prompt:</b> {e(self.trace.prompt)}",
            f"<b>Text at the selected node</b> (committed so far in bold, then the path to the node):<br>"
            f"<span style='font-family:monospace'><b>{e(committed)}</b>{e(path)}</span>",
            f"<b>Node statistics:</b> visits n = {nd.n:.3g} (real {nd.fn}), value q = {nd.q:+.3f}, "
            f"prior p = {nd.p:.3f}",
            f"<b>This simulation evaluated</b> (value {sim.value:+.2f}"
            f"{', from the memo' if sim.memo_hit else ''}):<br>"
            f"<span style='font-family:monospace'>{e(sim.evaluated_text)}</span>",
        ]
        if sim.similarity:
            rows.append(f"<b>Similarity updates:</b> {len(sim.similarity)} sibling(s)")
        if sim.added:
            rows.append(f"<b>Dynamic node addition:</b> {len(sim.added)} new candidate(s)")
        return "<br>".join(rows)

    def _repr_mimebundle_(self, **kwargs):
        """Display as the widget (JupyterLab shows the explorer when it is a cell's value)."""
        return self.widget._repr_mimebundle_(**kwargs)


def show_source(*objects):
    """The source code of functions or classes (e.g. `raintools.tree.backup`), as one highlighted
    code block for a notebook: the rule the notebook explains, as the package runs it."""
    import inspect

    from IPython.display import Code

    return Code("\n\n".join(inspect.getsource(o).rstrip() for o in objects), language="python")
