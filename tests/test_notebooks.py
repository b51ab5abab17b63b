"""Every walkthrough notebook executes top to bottom in fast mode, and writes its figures."""

from __future__ import annotations

import pytest

from raintools.views.notebooks import notebook_paths, render_html, run_notebook

NOTEBOOKS = notebook_paths()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, tmp_path):
    nb = run_notebook(path, fast=True, figures=tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert list(tmp_path.rglob("*.png")), "the notebook wrote no figure"


@pytest.mark.notebook
def test_runner_renders_the_executed_notebook_with_its_figures(tmp_path, monkeypatch):
    """A rendered copy (HTML, figures embedded) of what the kernel produced, beside the figures."""
    monkeypatch.delenv("RAINTOOLS_MODEL", raising=False)
    monkeypatch.setenv("RAINTOOLS_DEVICE", "cpu")
    src = tmp_path / "98_tiny.py"
    src.write_text("# %% [markdown]\n# # 98 · A tiny notebook\n\n# %%\nimport matplotlib.pyplot as plt\n"
                   "import pandas as pd\nfrom raintools.views.plots import save_figure\n\n# %%\n"
                   "fig, ax = plt.subplots()\nax.plot([0, 1], [1, 0])\n"
                   "save_figure(fig, '98_line', pd.DataFrame({'x': [0, 1]}))\nprint('answer', 6 * 7)\n")
    figures = tmp_path / "figures"
    run_notebook(src, fast=True, figures=figures, render=figures / "notebooks")
    page = (figures / "notebooks" / "98_tiny.html").read_text()
    assert (figures / "98_line.png").is_file() and (figures / "98_line.csv").is_file()
    assert "<title>98 · A tiny notebook</title>" in page and "answer 42" in page
    assert page.count("data:image/png;base64,") == 1          # the figure, shown inline
    assert len(page) < 60_000                                  # no 300 kB of theme CSS


def test_render_html_embeds_outputs_and_stays_small(tmp_path):
    import base64

    import nbformat

    nb = nbformat.v4.new_notebook()
    png = base64.b64encode(b"\x89PNG fake image bytes").decode()
    nb.cells = [nbformat.v4.new_markdown_cell("# 97 · Title\n\nSome *prose* and $q + c p$."),
                nbformat.v4.new_code_cell("x = 1", outputs=[
                    nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "<Figure>"}),
                    nbformat.v4.new_output("stream", name="stdout", text="hello out\n"),
                    nbformat.v4.new_output("display_data", data={
                        "application/vnd.jupyter.widget-view+json": {"model_id": "abc123", "version_major": 2,
                                                                     "version_minor": 0},
                        "text/plain": "HBox(children=(FloatProgress(value=0.0),))"})])]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc123": {"x": "y" * 5000}}}}
    page = render_html(nb, tmp_path / "sub" / "97_title.html").read_text()
    assert f"data:image/png;base64,{png}" in page and "hello out" in page
    # widgets (tqdm bars, the explorer) cannot run in a static page: a note instead, no state
    assert "abc123" not in page and "y" * 5000 not in page and "interactive widget" in page
    assert "widgets" in nb.metadata                            # the notebook itself is left as it was
    assert "<em>prose</em>" in page and "<title>97 · Title</title>" in page
    assert len(page) < 30_000


def test_notebooks_are_paired_and_numbered():
    assert NOTEBOOKS, "no notebooks found"
    for p in NOTEBOOKS:
        assert p.with_suffix(".ipynb").is_file(), f"{p.name} has no paired .ipynb (run make sync-notebooks)"
        text = p.read_text()
        assert "jupytext" in text and "format_name: percent" in text
        assert 'tags=["parameters"]' in text, f"{p.name} lacks a parameters cell"


# Cell-length limits (issue #18): no code cell over MAX_CELL_LINES lines, and a median code cell of
# at most MEDIAN_CELL_LINES lines, in every notebook: loops and plotting live in raintools.views.
MAX_CELL_LINES = 20
MEDIAN_CELL_LINES = 8
# Notebooks still being rebuilt under #18 by other helpers: expected to fail until they are done.
# strict: once one passes, this test fails until its name is removed from the set.
PENDING_CELL_LIMITS: set[str] = set()


def code_cell_lengths(path) -> list[int]:
    """Lines of each code cell (blank lines at the start and end of a cell not counted)."""
    import jupytext

    nb = jupytext.read(path)
    return [len(c.source.strip("\n").splitlines()) for c in nb.cells if c.cell_type == "code"]


def test_code_cell_lengths_are_counted_as_the_reader_sees_them(tmp_path):
    p = tmp_path / "99_x.py"
    p.write_text("# %% [markdown]\n# # title\n\n# %%\nimport os\n\nx = 1\n\n\n# %%\nprint(x)\n")
    assert code_cell_lengths(p) == [3, 1]


@pytest.mark.parametrize("path", [pytest.param(p, marks=pytest.mark.xfail(
    strict=True, reason=f"{p.stem} is being rebuilt (#18); remove it from PENDING_CELL_LIMITS once it passes"))
    if p.stem in PENDING_CELL_LIMITS else p for p in NOTEBOOKS], ids=[p.stem for p in NOTEBOOKS])
def test_code_cells_are_short(path):
    import statistics

    lengths = code_cell_lengths(path)
    assert lengths, f"{path.name} has no code cell"
    assert max(lengths) <= MAX_CELL_LINES, f"{path.name}: a code cell of {max(lengths)} lines"
    assert statistics.median(lengths) <= MEDIAN_CELL_LINES, \
        f"{path.name}: median code cell {statistics.median(lengths)} lines"
