"""Every walkthrough notebook executes top to bottom in fast mode, and writes its figures."""

from __future__ import annotations

import pytest

from raintools.views.notebooks import notebook_paths, run_notebook

NOTEBOOKS = notebook_paths()


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_in_fast_mode(path, tmp_path):
    nb = run_notebook(path, fast=True, figures=tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    assert list(tmp_path.glob("*.png")), "the notebook wrote no figure"


def test_notebooks_are_paired_and_numbered():
    assert NOTEBOOKS, "no notebooks found"
    for p in NOTEBOOKS:
        assert p.with_suffix(".ipynb").is_file(), f"{p.name} has no paired .ipynb (run make sync-notebooks)"
        text = p.read_text()
        assert "jupytext" in text and "format_name: percent" in text
        assert 'tags=["parameters"]' in text, f"{p.name} lacks a parameters cell"
