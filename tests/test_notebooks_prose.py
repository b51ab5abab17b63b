"""Notebook prose says where its numbers come from, and the source holds them.

* Every repository path a notebook's markdown names in backticks (`figures/...`, `bench/...`,
  `raintools/...`) exists, and a figure or rendered notebook is named with its folder.
* In a sentence of markdown that cites a committed CSV (`figures/*.csv`, `bench/results/*.csv`) or a
  rendered full run (`figures/notebooks/*.html`), every decimal and every percentage appears in
  what it cites: in the CSV's numbers, or in the rendered page's *outputs* (never its own prose),
  as written or as a share (0.81 for "81%"), to the precision the prose gives.

No notebook is executed; the committed files are read as they are.
"""

from __future__ import annotations

import re
from functools import cache

import jupytext
import numpy as np
import pandas as pd
import pytest

from raintools.views.notebooks import REPO, notebook_paths

NOTEBOOKS = notebook_paths()
TICKED = re.compile(r"`([^`\s]+)`")
CITED = re.compile(r"`((?:figures|bench/results)/[^`\s]+\.(?:csv|html))`")
# a sentence ends at . ; ! ? before a capital, a backtick, a bracket or an emphasis mark; or at a
# blank line or a bullet
SENTENCE = re.compile(r"(?<=[.;!?])\s+(?=[A-Z*`(\"])|\n\s*\n|\n\s*[*-] ")
# a decimal, or a whole number with a percent sign, either maybe a ratio ("4.36x"); "95%" as an
# interval's level is no claim
QUANTITY = re.compile(r"(?<![\w.,])(\d+\.\d+[%x]?|\d+[%x])(?![\w]|\.\d)")
LEVELS = {"95%"}


def prose(path) -> str:
    return "\n\n".join(c.source for c in jupytext.read(path).cells if c.cell_type == "markdown")


def repo_paths(text: str) -> list[str]:
    """Backticked names whose first folder is one of the repository's (templated ones skipped)."""
    top = {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return [t for t in TICKED.findall(text)
            if "/" in t and t.split("/")[0] in top and not re.search(r"[<>*{}]", t)]


def bare_artefacts(text: str) -> list[str]:
    """Figure files or rendered notebooks named without their folder (`10_sentiment.html`)."""
    return [t for t in TICKED.findall(text) if re.fullmatch(r"\d\d_[\w.-]+\.(?:csv|png|html)", t)]


@cache
def cited_numbers(rel: str) -> np.ndarray:
    path = REPO / rel
    if path.suffix == ".csv":
        values = pd.read_csv(path).select_dtypes("number").to_numpy(dtype=float).ravel()
        return values[~np.isnan(values)]
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
    outputs = " ".join(o.get_text(" ") for o in soup.select("div.output_area"))
    return np.array([float(x) for x in re.findall(r"\d+(?:\.\d+)?", outputs)])


def unmatched(sentence: str, values: np.ndarray) -> list[str]:
    """The quantities of `sentence` that no value matches, as written or as a share x 100."""
    missing = []
    for q in QUANTITY.findall(sentence):
        if q in LEVELS:
            continue
        number = q.rstrip("%x")
        x = float(number)
        tol = 0.5 * 10.0 ** -(len(number.split(".")[1]) if "." in number else 0) + 1e-9
        if not (np.any(np.abs(values - x) <= tol) or np.any(np.abs(100 * values - x) <= tol)):
            missing.append(q)
    return missing


def citing_sentences(text: str):
    for sentence in SENTENCE.split(text):
        cited = sorted(set(CITED.findall(sentence)))
        if cited:
            yield sentence, cited


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_paths_named_in_notebook_prose_exist(path):
    text = prose(path)
    assert not [t for t in repo_paths(text) if not (REPO / t).exists()]
    assert not bare_artefacts(text), "name figures and rendered notebooks with their folder"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_numbers_next_to_a_citation_are_in_what_it_cites(path):
    bad = []
    for sentence, cited in citing_sentences(prose(path)):
        values = np.concatenate([cited_numbers(c) for c in cited if (REPO / c).is_file()] or [[]])
        if missing := unmatched(sentence, values):
            bad.append((cited, missing, " ".join(sentence.split())[:160]))
    assert not bad, "\n".join(map(str, bad))


def test_the_checks_can_fail():
    """A wrong quote, a missing file and a bare name are caught (the checks are not vacuous)."""
    shares = np.array([0.81, 0.52, 64.4, 69.3, 0.0554])
    assert unmatched("81% and 52%, 64.4% -> 69.3%, at most 0.055, 69.3x", shares) == []
    assert unmatched("82% and 64.5%, at most 0.07, 4.36x; a 95% interval", shares) == [
        "82%", "64.5%", "0.07", "4.36x"]
    assert repo_paths("`figures/no_such.csv`, `figures/<model>-cuda/`, `summary.csv`") == ["figures/no_such.csv"]
    assert bare_artefacts("`10_sentiment.html` and `figures/notebooks/10_sentiment.html`") == ["10_sentiment.html"]
    sentences = list(citing_sentences("A claim of 97.0% (`figures/06_x.csv`). Another 12.5% here."))
    assert sentences == [("A claim of 97.0% (`figures/06_x.csv`).", ["figures/06_x.csv"])]
