"""environment.yml and pyproject.toml install the same dependencies; the CI script calls the
README's test command."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[;]", spec.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_and_pyproject_agree():
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = py["project"]["dependencies"] + py["project"]["optional-dependencies"]["test"]
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, l in enumerate(lines) if l.strip() == "- pip:")
    conda_pip = [l.strip()[2:] for l in lines[start + 1:] if l.strip().startswith("- ")]
    assert {_name(d): d.replace(" ", "") for d in deps} == {_name(d): d.replace(" ", "") for d in conda_pip}


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in ci and "make test" in readme and "make demo" in readme


def test_licence_is_an_spdx_expression_with_a_backend_that_reads_it():
    """`project.license` as a table is deprecated (setuptools stops building it after 2027-02-18);
    the SPDX string form needs setuptools >= 77 (PEP 639)."""
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert py["project"]["license"] == "MIT"
    (req,) = [r for r in py["build-system"]["requires"] if _name(r) == "setuptools"]
    assert re.fullmatch(r"setuptools>=(\d+)", req.replace(" ", "")) and int(req.split(">=")[1]) >= 77
    assert "setuptools>=77" in (ROOT / "environment.yml").read_text()
