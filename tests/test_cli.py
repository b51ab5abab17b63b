"""The command line: JSON output and clear errors (exit 2, one line, no traceback)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "raintools", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize("args,msg", [
    (["generate", "--prompt", "   "], "--prompt is empty"),
    (["generate", "--prompt", "hi", "--model", "/no/such/folder"], "does not exist"),
    # the config is checked before the model loads (a bad constant is not hidden by a bad path)
    (["generate", "--prompt", "hi", "--simulations", "0", "--model", "/no/such/folder"], "max_simulations"),
    (["generate", "--prompt", "hi", "--preset", "truthfulqa-yesno", "--min-visits", "-1",
      "--model", "/no/such/folder"], "min_visits"),
])
def test_bad_input_gives_one_clear_error(args, msg):
    r = cli(*args)
    assert r.returncode == 2
    assert msg in r.stderr and "Traceback" not in r.stderr


@pytest.mark.embedded
def test_generate_json_vanilla_and_rain(embedded_lm):
    r = cli("generate", "--method", "vanilla", "--prompt", "Name a colour.", "--max-new-tokens", "6", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["method"] == "vanilla" and d["text"] and d["stats"]["committed_tokens"] <= 6
    r = cli("generate", "--method", "rain", "--prompt", "Name a colour.", "--max-new-tokens", "3",
            "--simulations", "3", "--json", "--trace")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert d["method"] == "rain" and d["stats"]["committed_tokens"] == 3
    assert d["stats"]["simulations"] >= 3 and d["trace"]["commits"]
    r = cli("generate", "--prompt", "hi", "--simulations", "0")
    assert r.returncode == 2 and "max_simulations" in r.stderr
