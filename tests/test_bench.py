"""bench/rain_speed.py (`make bench`) on a tiny saved model: it prints the variants and the summary
line, writes both CSVs, and a long run can be split over processes (`--shard`) and resumed
(`--run`) with the summary computed from the run's rows."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raintools.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def bench(tmp_path, model, shard, data):
    cmd = [sys.executable, str(ROOT / "bench" / "rain_speed.py"), "--model", str(model), "--frame", "ours",
           "--prompts", "2", "--commits", "2", "--ks", "1,2", "--reference-prompts", "1",
           "--reference-commits", "1", "--bf16-prompts", "1", "--simulations", "2", "--threads", "1",
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

    first = bench(tmp_path, model, "0/2", shared_data)
    rows = pd.read_csv(rows_csv)
    assert set(rows.prompt) == {0}                         # shard 0 of 2: prompt 0 only
    assert sorted(rows.variant) == ["bf16_k1", "fast_k1", "fast_k2", "reference", "vanilla"]
    assert "prompt 0 (hh) fast_k2" in first and first.strip().splitlines()[-1].startswith("speedup_vs_reference=")

    second = bench(tmp_path, model, "1/2", shared_data)
    rows = pd.read_csv(rows_csv)
    assert sorted(rows[rows.prompt == 1].variant) == ["fast_k1", "fast_k2", "vanilla"]   # no reference, bf16 there
    again = bench(tmp_path, model, "0/2", shared_data)     # resumed: nothing is run twice
    assert len(pd.read_csv(rows_csv)) == len(rows) == 8
    assert "prompt 0 (hh)" not in again and "5 of its rows already written" in again, again

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
