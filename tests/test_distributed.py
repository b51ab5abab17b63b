"""Sharded evaluation: two CPU processes under torchrun (gloo) on the tiny model write part files
that rank 0 merges into one results.jsonl and one summary, equal to a one-process run's; and the
same sharding, merging and resuming simulated rank by rank in one process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raintools import RainConfig
from raintools.experiments import runner
from raintools.cli import main as cli_main
from raintools.experiments.methods import MethodConfig
from raintools.experiments.runner import PARTS, RESULTS, SUMMARY, DistContext, run_eval

from test_runner import (PROMPTS, comparable, eval_args, lines, one_torch_thread,  # noqa: F401
                         subprocess_env, write_csv)

COST = ("mean_time_s", "time_ratio")


def torchrun(args, cwd, timeout=300):
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun is not installed")
    cmd = [exe, "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 2000),
           "-m", "raintools", *args]
    return subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True,
                          timeout=timeout)


def test_two_processes_match_one(tmp_path):
    data = write_csv(tmp_path / "prompts.csv", PROMPTS[:5])   # 5 items: shards of 3 and 2
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    res = torchrun(eval_args(data, sharded, tokens=6), cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (sharded / PARTS).exists(), "part files should be merged and removed"
    assert cli_main(eval_args(data, single, tokens=6)) == 0

    a, b = lines(sharded / RESULTS), lines(single / RESULTS)
    assert [(r["id"], r["method"]) for r in a] == [(r["id"], r["method"]) for r in b]
    assert [comparable(r) for r in a] == [comparable(r) for r in b]
    sa, sb = pd.read_csv(sharded / SUMMARY), pd.read_csv(single / SUMMARY)
    keep = [c for c in sa.columns if c not in COST]
    pd.testing.assert_frame_equal(sa[keep], sb[keep])
    assert json.loads((sharded / "run.json").read_text())["info"]["world_size"] == 2


def test_shards_merge_and_resume_rank_by_rank(tmp_path, monkeypatch, tiny_lm):
    """Ranks run one after the other in this process (barriers are no-ops): rank 1 writes its
    part, is 'killed' mid-line and resumed, then rank 0 merges. The merged file equals a
    one-process run, and a rerun of any world size recomputes nothing."""
    data = write_csv(tmp_path / "prompts.csv", PROMPTS[:5])
    mc = MethodConfig(rain=RainConfig.cpu_demo(), max_new_tokens=5)
    out = tmp_path / "sharded"

    def as_rank(rank, world=2):
        monkeypatch.setattr(runner, "dist_context", lambda *a, **k: DistContext(rank, world))
        return run_eval(data, ["vanilla", "rain"], ["refusal"], out, lm=tiny_lm, method_config=mc,
                        progress=False)

    as_rank(1)
    part = out / PARTS / "rank1-of-2.jsonl"
    assert not (out / RESULTS).exists()
    assert [(r["id"], r["method"]) for r in lines(part)] == [
        (f"prompts-{i:04d}", m) for i in (1, 3) for m in ("vanilla", "rain")]
    raw = part.read_bytes()
    part.write_bytes(raw[: raw.rstrip(b"\n").rfind(b"\n") + 25])     # torn last line
    assert as_rank(1).computed == 1
    run0 = as_rank(0)
    assert run0.computed == 6 and not (out / PARTS).exists()

    monkeypatch.setattr(runner, "dist_context", lambda *a, **k: DistContext())
    single = run_eval(data, ["vanilla", "rain"], ["refusal"], tmp_path / "single", lm=tiny_lm,
                      method_config=mc, progress=False)
    merged = lines(out / RESULTS)
    assert [comparable(r) for r in merged] == [comparable(r) for r in lines(single.results_path)]
    keep = [c for c in run0.summary.columns if c not in COST]
    pd.testing.assert_frame_equal(run0.summary[keep], single.summary[keep])

    assert run_eval(data, ["vanilla", "rain"], ["refusal"], out, lm=tiny_lm, method_config=mc,
                    progress=False).computed == 0
    assert lines(out / RESULTS) == merged
