"""bench/rain_speed.py (`make bench`) on a tiny saved model: it prints the variants and the summary
line, writes both CSVs, and a long run can be split over processes (`--shard`) and resumed
(`--run`) with the summary computed from the run's rows; a resumed bf16 check compares with the
fp32 tokens searched again (its fp32 row was written by an earlier process). The quality scripts'
summaries (bench/vllm_quality.py, bench/parallel_quality.py) treat questions, not runs, as the unit
of every interval."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from raintools.experiments.stats import wilson_interval
from raintools.testing import tiny_model

ROOT = Path(__file__).resolve().parents[1]


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


@pytest.mark.slow
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
    assert "prompt 0 (hh) fast_k2" in first
    assert first.strip().splitlines()[-1].startswith("speedup_vs_reference=")

    second = bench(tmp_path, model, "1/2", shared_data)
    rows = pd.read_csv(rows_csv)
    # no reference, bf16 there
    assert sorted(rows[rows.prompt == 1].variant) == ["fast_k1", "fast_k2", "vanilla"]
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
        assert summary.loc[variant, "passes_per_sim_mean"] == pytest.approx(
            g.passes_per_sim.mean(), rel=1e-4, nan_ok=True)
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


def bench_module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                   # a script's dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def correlated_runs(seeds, questions=12):
    """Runs whose seeds of a question all end alike (perfectly correlated): question q is good
    with arm "a" when q % 2 == 0 and with arm "b" when q % 3 == 0, at every seed."""
    rows = []
    for q in range(questions):
        for seed in range(seeds):
            for arm, good in (("a", q % 2 == 0), ("b", q % 3 == 0)):
                rows.append(dict(question=f"q{q}", seed=seed, p=0.8, arm=arm, good=good,
                                 response=f"{arm}{q}", simulations=8, forward_calls=20 + q))
    return pd.DataFrame(rows)


def summaries(seeds):
    """Both scripts' own summary functions on the same runs ("a" as vLLM / K = 4, "b" as fast / K = 1)."""
    runs = correlated_runs(seeds)
    vllm = bench_module("vllm_quality").summarize(
        runs.rename(columns={"question": "prompt"}).assign(engine=runs.arm.map({"a": "vllm", "b": "fast"})))
    parallel = bench_module("parallel_quality").summarize(runs.assign(k=runs.arm.map({"a": 4, "b": 1})), k=4)
    return vllm.iloc[0], parallel.iloc[0]


def test_quality_summaries_resample_questions_not_runs():
    """A question's seeds that all end alike add no information: every interval of both summaries
    is the same with 6 seeds as with 1, and each share's interval is wider than a Wilson interval
    over the 72 runs as if they were independent would be."""
    one, many = summaries(1), summaries(6)
    columns = {0: ["good_fast", "good_vllm", "difference"],
               1: ["good_k1", "good_k4", "difference", "passes_per_sim_k4"]}
    for i, cols in columns.items():
        assert many[i].interval_unit == "question"
        assert many[i].pairs == 72 and one[i].pairs == 12
        for c in cols:
            assert one[i][f"{c}_lo"] < one[i][c] < one[i][f"{c}_hi"]
            for end in ("", "_lo", "_hi"):
                assert many[i][c + end] == pytest.approx(one[i][c + end], abs=1e-12), (c, end)
    vllm, parallel = many
    for share, good in ((vllm.good_vllm, 36), (vllm.good_fast, 24),
                        (parallel.good_k4, 36), (parallel.good_k1, 24)):
        assert share == good / 72
    for lo, hi, good in ((vllm.good_vllm_lo, vllm.good_vllm_hi, 36),
                         (vllm.good_fast_lo, vllm.good_fast_hi, 24),
                         (parallel.good_k4_lo, parallel.good_k4_hi, 36),
                         (parallel.good_k1_lo, parallel.good_k1_hi, 24)):
        runs_lo, runs_hi = wilson_interval(good, 72)
        assert lo < runs_lo and hi > runs_hi


@pytest.mark.embedded
def test_committed_judge_prompt_token_counts_are_current(tmp_path, shared_data):
    """bench/results/judge_prompt_tokens.csv (the source of the READMEs' judging-prompt lengths)
    is what bench/judge_prompt_tokens.py counts now with the embedded tokenizer on today's frames
    and prompts: a changed frame, template or tokenizer without a new CSV fails here."""
    out = tmp_path / "tokens.csv"
    bench_module("judge_prompt_tokens").main([
        "--out", str(out),
        "--hh", str(shared_data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"),
        "--advbench", str(shared_data / "advbench" / "harmful_behaviors.csv")])
    committed = pd.read_csv(ROOT / "bench" / "results" / "judge_prompt_tokens.csv")
    pd.testing.assert_frame_equal(pd.read_csv(out), committed)


def test_committed_quality_summaries_are_the_scripts_summaries_of_the_committed_runs(tmp_path):
    """The summary CSVs the READMEs quote are what the scripts' own `--summary-only` path writes
    from the committed runs CSVs now (nothing edited by hand, nothing left from an older summary)."""
    results = ROOT / "bench" / "results"
    for runs, summary in (
            ("vllm_quality_runs.csv", "vllm_quality_summary.csv"),
            ("vllm_quality_runs_before_issue25.csv", "vllm_quality_summary_before_issue25.csv")):
        out = tmp_path / summary
        bench_module("vllm_quality").main(["--summary-only", "--runs-csv", str(results / runs),
                                           "--summary-csv", str(out)])
        pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(results / summary))
    out = tmp_path / "parallel_summary.csv"
    bench_module("parallel_quality").main(["--summary-only", "--summary-csv", str(out)])
    pd.testing.assert_frame_equal(pd.read_csv(out), pd.read_csv(results / "parallel_quality_summary.csv"))


def test_the_k4_rerun_repeats_the_committed_k4_runs():
    """bench/README's "240 of 240": the K = 4 half of the parallel quality study rerun on later
    code gives, run by run, the committed K = 4 rows' response, verdict, simulations and passes."""
    results = ROOT / "bench" / "results"
    runs = pd.read_csv(results / "parallel_quality_runs.csv")
    rerun = pd.read_csv(results / "parallel_quality_k4_rerun_2ae7034.csv")
    key, same = ["question", "seed", "k"], ["response", "good", "simulations", "forward_calls"]
    both = runs[runs.k == 4].merge(rerun, on=key, suffixes=("", "_rerun"), validate="one_to_one")
    assert len(both) == len(rerun) == 240
    for col in same:
        assert (both[col] == both[f"{col}_rerun"]).all(), col


def test_committed_speed_summaries_are_the_scripts_summaries_of_the_committed_rows(tmp_path):
    """bench/results/rain_speed.csv (the READMEs' 8-prompt table) and each prompt-0 rerun's summary
    are what bench/rain_speed.py's `--summary-only` writes from the committed rows of their run in
    rain_speed_prompts.csv now, and README.md quotes each run's wall speedups over the reference
    style as the summary's values rounded to 0.1 (nothing edited by hand, no quoted ratio left from
    an older run)."""
    import shutil

    sys.path.insert(0, str(ROOT / "bench"))           # the script imports its folder's _common
    results = ROOT / "bench" / "results"
    readme = " ".join((ROOT / "README.md").read_text().split())    # reflowed lines alike
    summaries = {"rain_speed.csv": "idle-2026-12-07"}
    summaries.update({p.name: p.stem.removeprefix("rain_speed_")
                      for p in results.glob("rain_speed_final-*-prompt0.csv")})
    assert len(summaries) >= 3
    for name, run in summaries.items():
        out = tmp_path / run
        out.mkdir()
        shutil.copy(results / "rain_speed_prompts.csv", out)
        assert bench_module("rain_speed").main(["--summary-only", "--run", run, "--out", str(out)]) == 0
        committed = pd.read_csv(results / name)
        pd.testing.assert_frame_equal(pd.read_csv(out / "rain_speed.csv"), committed)
        speedups = committed.set_index("variant").speedup_vs_reference
        quoted = " / ".join(f"{speedups[f'fast_k{k}']:.1f}x" for k in (1, 4, 8))
        assert quoted in readme, (name, quoted)
