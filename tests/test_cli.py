"""The command line: JSON output, clear errors (exit 2, one line, no traceback), the config checked
before any model loads, no weight-loading bars outside --verbose, the demo's table printed whole.
Calls `raintools.cli.main` in-process; one test runs `python -m raintools` itself."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from raintools import cli


@pytest.fixture(autouse=True)
def library_defaults():
    """cli.main switches the libraries' progress bars and verbosity process-wide: restore them."""
    yield
    cli.quiet_libraries(verbose=True)


def run(capsys, *args) -> tuple[int, str, str]:
    rc = cli.main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test: the checks must come first."""
    import raintools.experiments.demo as demo
    import raintools.models as models

    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the configuration was checked")

    monkeypatch.setattr(models, "load_model", refuse)
    monkeypatch.setattr(demo, "load_model", refuse)


@pytest.mark.parametrize("args,msg", [
    (["generate", "--prompt", "   "], "--prompt is empty"),
    (["generate", "--prompt", "hi", "--simulations", "-3"], "max_simulations"),
    (["generate", "--prompt", "hi", "--simulations", "0", "--model", "/no/such/folder"], "max_simulations"),
    (["generate", "--prompt", "hi", "--value-threshold", "7"], "value_threshold"),
    (["generate", "--prompt", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["demo", "--simulations", "-1"], "max_simulations"),
    (["demo", "--prompts", "0"], "--prompts"),
    (["generate", "--prompt", "hi", "--preset", "truthfulqa-yesno", "--min-visits", "-1",
      "--model", "/no/such/folder"], "min_visits"),
])
def test_bad_config_fails_before_any_model_loads(capsys, no_model, args, msg):
    rc, out, err = run(capsys, *args)
    assert rc == 2 and err.startswith("error: ")
    assert msg in err and "Traceback" not in err


@pytest.mark.slow
def test_python_dash_m_entry_point_reports_a_missing_model():
    r = subprocess.run([sys.executable, "-m", "raintools", "generate", "--prompt", "hi", "--model",
                        "/no/such/folder"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2
    assert "does not exist" in r.stderr and "Traceback" not in r.stderr


def test_demo_table_is_printed_whole():
    from raintools.experiments.demo import summary_table

    df = pd.DataFrame([dict(prompt="p", method=m, response="r", tokens=32, seconds=1.5 * (i + 1),
                            forward_calls=40 * (i + 1), forward_per_token=1.25 * (i + 1),
                            computed_per_token=10.0 * (i + 1), simulations=8 * i)
                       for i, m in enumerate(["vanilla", "rain"] * 2)])
    with pd.option_context("display.max_columns", 3, "display.width", 40):
        text = summary_table(df)
    assert "..." not in text and "rows x" not in text
    for col in ("tokens", "seconds", "forward_calls", "forward_per_token", "computed_per_token",
                "simulations"):
        assert col in text


@pytest.mark.embedded
def test_generate_json_vanilla_and_rain_without_loading_bars(capsys):
    rc, out, err = run(capsys, "generate", "--method", "vanilla", "--prompt", "Name a colour.",
                       "--max-new-tokens", "6", "--json")
    assert rc == 0, err
    assert "Loading weights" not in err and "it/s" not in err
    d = json.loads(out.strip().splitlines()[-1])
    assert d["method"] == "vanilla" and d["text"] and d["stats"]["committed_tokens"] <= 6
    rc, out, err = run(capsys, "generate", "--method", "rain", "--prompt", "Name a colour.",
                       "--max-new-tokens", "3", "--simulations", "3", "--json", "--trace")
    assert rc == 0, err
    assert "Loading weights" not in err
    d = json.loads(out.strip().splitlines()[-1])
    assert d["method"] == "rain" and d["stats"]["committed_tokens"] == 3
    assert d["stats"]["simulations"] >= 3 and d["trace"]["commits"]
    # --verbose keeps the libraries' bars: the check above can see them
    rc, out, err = run(capsys, "generate", "--method", "vanilla", "--prompt", "Hi.",
                       "--max-new-tokens", "1", "--verbose")
    assert rc == 0 and "Loading weights" in err
