"""bench/rain_speed.py (`make bench`) on a tiny saved model: it prints the variants and the summary
line, writes both CSVs, and a long run can be split over processes (`--shard`) and resumed
(`--run`) with the summary computed from the run's rows; a resumed bf16 check compares with the
fp32 tokens searched again (its fp32 row was written by an earlier process)."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raintools.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def bench(tmp_path, model, shard, data, bf16="1"):
    cmd = [sys.executable, str(ROOT / "bench" / "rain_speed.py"), "--model", str(model), "--frame", "ours",
           "--prompts", "2", "--commits", "2", "--ks", "1,2", "--reference-prompts", "1",
           "--reference-commits", "1", "--bf16-prompts", bf16, "--simulations", "2", "--threads", "1",
           "--bandwidth-mb", "16", "--run", "t", "--shard", shard, "--out", str(tmp_path / "out"),
           "--hh", str(data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"),
           "--advbench", str(data / "advbench" / "harmful_behaviors.csv")]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_bench_shards_resume_and_summary(tmp_path, shared_data):
    src = tiny_model(seed=0, chat=True)
    model = tmp_path / "tiny"
    src.model.save_pretrained(model)
    src.tokenizer.save_pretrained(model)
    rows_csv = tmp_path / "out" / "rain_speed_prompts.csv"

    first = bench(tmp_path, model, "0/2", shared_data, bf16="0")
    rows = pd.read_csv(rows_csv)
    assert set(rows.prompt) == {0}                         # shard 0 of 2: prompt 0 only
    assert sorted(rows.variant) == ["fast_k1", "fast_k2", "reference", "vanilla"]
    assert "prompt 0 (hh) fast_k2" in first and first.strip().splitlines()[-1].startswith("speedup_vs_reference=")

    second = bench(tmp_path, model, "1/2", shared_data)
    rows = pd.read_csv(rows_csv)
    assert sorted(rows[rows.prompt == 1].variant) == ["fast_k1", "fast_k2", "vanilla"]   # no reference, bf16 there
    again = bench(tmp_path, model, "0/2", shared_data)     # resumed: only the bf16 check runs
    assert "prompt 0 (hh) fast" not in again and "4 of its rows already written" in again, again
    rows = pd.read_csv(rows_csv)
    assert len(rows) == 8 and sorted(rows[rows.prompt == 0].variant) == [
        "bf16_k1", "fast_k1", "fast_k2", "reference", "vanilla"]
    fp32 = rows[(rows.variant == "fast_k1") & (rows.prompt == 0)].iloc[0]
    # the fp32 tokens searched again (their row came from the CSV): the same search as the row's
    assert (f"prompt 0 (hh) fp32 K = 1 searched again (its row is an earlier process's): "
            f"{fp32.committed_tokens} tokens, {fp32.simulations} simulations") in again, again
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    assert set(rows.code) == {head}                        # every row names the code's commit (run_meta)
    by_prompt = rows.set_index(["variant", "prompt"]).committed_tokens
    assert (by_prompt["vanilla"] == by_prompt["fast_k1"]).all()   # vanilla decodes as many tokens as K = 1

    summary = pd.read_csv(tmp_path / "out" / "rain_speed.csv").set_index("variant")
    for variant, g in rows.groupby("variant"):             # the summary comes from both shards' rows
        assert summary.loc[variant, "prompts"] == len(g)
        assert summary.loc[variant, "passes_per_sim_mean"] == pytest.approx(g.passes_per_sim.mean(), rel=1e-4, nan_ok=True)
        assert summary.loc[variant, "forward_calls"] == g.forward_calls.sum()
    assert summary.loc["fast_k2", "prompts"] == 2
    assert summary.loc["bf16_k1", "same_tokens_as_fp32"] in (0, 1)
    # the reference against each fast variant at the same commit of the same prompt
    ref = rows[rows.variant == "reference"].iloc[0]
    for k in (1, 2):
        fast = rows[(rows.variant == f"fast_k{k}") & (rows.prompt == 0)].iloc[0]
        at = float(str(fast.commit_s).split(";")[int(ref.commits_made) - 1])
        assert summary.loc[f"fast_k{k}", "speedup_vs_reference"] == pytest.approx(ref.wall_s / at, rel=1e-3)
    last = second.strip().splitlines()[-1]
    assert f"passes_per_sim={summary.loc['fast_k2', 'passes_per_sim_mean']:.2f}" in last
    assert "bandwidth_floor_ratio=" in last


def test_append_row_refuses_another_layout(tmp_path):
    """A row whose columns differ from the file's header is refused, never written under the wrong
    names (a resumed run of another version of a script)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from _common import append_row

    path = tmp_path / "rows.csv"
    append_row(path, {"run": "r"}, {"a": 1.234567, "b": 2})
    append_row(path, {"run": "r"}, {"a": 3, "b": 4})
    with pytest.raises(SystemExit, match="columns"):
        append_row(path, {"run": "r"}, {"b": 5, "a": 6})
    assert pd.read_csv(path).to_dict("list") == {"run": ["r", "r"], "a": [1.23457, 3], "b": [2, 4]}
