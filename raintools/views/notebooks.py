"""Executing the walkthrough notebooks (jupytext percent scripts in notebooks/).

    python -m raintools.views.notebooks run --all            # fast mode, figures to a temp folder
    python -m raintools.views.notebooks run --all --full     # what `make figures` does

Conventions every notebook follows: a first code cell tagged `parameters` reads `FAST`, `MODEL`,
`DEVICE` and `SEED` from `settings()` below (environment variables RAINTOOLS_FAST, RAINTOOLS_MODEL,
RAINTOOLS_DEVICE, RAINTOOLS_SEED), so the same notebook runs on the embedded model here and on a
30B model on a GPU; figures are written with `raintools.views.plots.save_figure`.

Where things go: `figures_dir()` is figures/ (or RAINTOOLS_FIGURES) for the embedded model on a
CPU, and its subfolder named after the model and device for any other run
(`figures/Llama-2-13b-chat-hf-cuda/`, see `raintools.experiments.naming.run_tag`), so a GPU run
never overwrites the committed figures. The runner also writes a rendered copy of each executed
notebook, outputs included, to `<that folder>/notebooks/NN_name.html` (readable in a browser
without running anything).
"""

from __future__ import annotations

import argparse
import html
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"


@dataclass
class Settings:
    fast: bool
    model: str
    device: str | None
    seed: int


def settings() -> Settings:
    """Notebook parameters from the environment (fast mode is what the tests use)."""
    return Settings(fast=os.environ.get("RAINTOOLS_FAST", "0") == "1",
                    model=os.environ.get("RAINTOOLS_MODEL", "smollm2-135m"),
                    device=os.environ.get("RAINTOOLS_DEVICE") or None,
                    seed=int(os.environ.get("RAINTOOLS_SEED", "0")))


def base_figures_dir() -> Path:
    """figures/ of the repository, or RAINTOOLS_FIGURES when set (the tests set a temporary one)."""
    return Path(os.environ.get("RAINTOOLS_FIGURES", REPO / "figures"))


def figure_tag(s: Settings | None = None) -> str:
    """'' for the embedded model on a CPU, else '<model>-<device kind>' (`naming.run_tag`)."""
    from ..experiments.naming import run_tag

    s = settings() if s is None else s
    return run_tag(s.model, s.device)


def figures_dir(s: Settings | None = None) -> Path:
    """Where this run's figures and CSVs go (created): `base_figures_dir()`, or its subfolder
    `figure_tag()` for any run but the embedded model on a CPU."""
    d = base_figures_dir() / figure_tag(s)
    d.mkdir(parents=True, exist_ok=True)
    return d


def notebook_paths(names: list[str] | None = None) -> list[Path]:
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.py"))
    if names:
        paths = [p for p in paths if any(p.stem.startswith(n) or p.name == n for n in names)]
    return paths


PAGE_CSS = """
body { max-width: 1100px; margin: 2em auto; padding: 0 1em; font: 15px/1.5 system-ui, sans-serif;
       color: #222; }
.jp-Cell, .cell { margin: 0.8em 0; }
.jp-InputArea, .input_area { background: #f6f8fa; border: 1px solid #e1e4e8; border-radius: 4px; }
pre { margin: 0; padding: 0.5em 0.8em; overflow-x: auto; font: 13px/1.4 ui-monospace, monospace; }
.jp-OutputArea pre, .output_area pre { background: none; border: none; color: #333; }
.jp-InputPrompt, .jp-OutputPrompt, .prompt { display: none; }
.jp-RenderedImage img, .output_png img, img { max-width: 100%; height: auto; }
table { border-collapse: collapse; font-size: 13px; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
thead th { background: #f0f0f0; }
.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"], .output_stderr { background: #fff5f5; }
code { background: #f3f3f3; padding: 0 3px; border-radius: 3px; }
.anchor-link { font-size: 0.6em; color: #bbb; text-decoration: none; margin-left: 0.3em; }
"""


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ("<p><em>(an interactive widget: progress bar or explorer; it works when the notebook "
               "runs in Jupyter)</em></p>")


def _without_widgets(nb):
    """A copy of `nb` whose widget outputs (tqdm bars, the tree explorer) are a one-line note and
    without the saved widget state: a static page cannot run them (they need the widget
    JavaScript and a kernel), and their state is most of a page's weight besides the figures."""
    import copy

    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                out["data"] = {"text/html": WIDGET_NOTE}
                out.get("metadata", {}).pop(WIDGET_MIME, None)
    return nb


def render_html(nb, out: str | Path) -> Path:
    """Write an executed notebook, outputs included, as one self-contained HTML page: the figures
    are embedded, the page carries a small stylesheet of its own (nbconvert's 'basic' template:
    about 10 kB of page around the outputs instead of the 'lab' template's 300 kB of CSS)."""
    from nbconvert import HTMLExporter
    from pygments.formatters import HtmlFormatter

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    body, _ = HTMLExporter(template_name="basic").from_notebook_node(_without_widgets(nb))
    title = next((c.source.lstrip("# ").splitlines()[0] for c in nb.cells
                  if c.cell_type == "markdown" and c.source.startswith("#")), out.stem)
    code_css = HtmlFormatter(style="default").get_style_defs(".highlight")
    # formulas: typeset by MathJax when the reader is online, readable TeX otherwise
    mathjax = ('<script>window.MathJax = {tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]]}};</script>'
               '<script async src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>')
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>\n"
            f"<style>{PAGE_CSS}\n{code_css}</style>\n{mathjax}</head>\n<body>\n{body}\n</body></html>\n")
    out.write_text(page, encoding="utf-8")
    return out


def run_notebook(path: str | Path, fast: bool = True, timeout: int = 1200,
                 figures: str | Path | None = None, save_ipynb: bool = False,
                 render: str | Path | None = None):
    """Execute one notebook top to bottom in a fresh kernel; returns the executed notebook.
    `render`: a folder to write the rendered copy to (`<folder>/<notebook name>.html`), also
    when a cell fails (the page then shows the error)."""
    import jupytext
    from nbclient import NotebookClient

    path = Path(path)
    nb = jupytext.read(path)
    env_before = dict(os.environ)
    os.environ["RAINTOOLS_FAST"] = "1" if fast else "0"
    if figures is not None:
        os.environ["RAINTOOLS_FIGURES"] = str(figures)
    # figures inline in the executed notebook (its outputs, and the rendered copy, show them)
    os.environ["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        client.execute()
    finally:
        if render is not None:
            render_html(nb, Path(render) / f"{path.stem}.html")
        os.environ.clear()
        os.environ.update(env_before)
    if save_ipynb:
        import nbformat
        nbformat.write(nb, path.with_suffix(".ipynb"))
    return nb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m raintools.views.notebooks")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute notebooks")
    r.add_argument("names", nargs="*", help="notebook name prefixes, e.g. 00 04_rewind")
    r.add_argument("--all", action="store_true")
    r.add_argument("--full", action="store_true", help="full mode (default: fast mode)")
    r.add_argument("--figures", default=None, help="figure folder (default: figures/ in full mode, "
                                                   "a temporary folder in fast mode); runs of other "
                                                   "models than the embedded one on a CPU write "
                                                   "into a subfolder named after the model")
    r.add_argument("--timeout", type=int, default=None,
                   help="seconds one cell may run (default: 1200 in fast mode, 10800 in full mode)")
    r.add_argument("--no-render", action="store_true",
                   help="do not write the rendered copies (<figures>/notebooks/NN_name.html)")
    args = ap.parse_args(argv)
    paths = notebook_paths(None if args.all else args.names)
    if not paths:
        print("no notebooks matched", file=sys.stderr)
        return 2
    figures = args.figures or (str(REPO / "figures") if args.full else tempfile.mkdtemp(prefix="rt-fig-"))
    out = Path(figures) / figure_tag()
    render = None if args.no_render else out / "notebooks"
    for p in paths:
        t0 = time.perf_counter()
        print(f"running {p.name} ({'full' if args.full else 'fast'} mode) ...", flush=True)
        run_notebook(p, fast=not args.full, figures=figures, render=render,
                     timeout=args.timeout or (10800 if args.full else 1200))
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"figures in {out}" + ("" if render is None else f", rendered notebooks in {render}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
