"""A preset carries its rules and its judging template, and a CPU changes only the budget
(issue 25, item 3): `generate --preset truthfulqa-yesno` judges with `truthful_yesno`, and `eval`
or an attack on a CPU keeps the task's completion rule, cut and template."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from raintools.cli import build_parser
from raintools.config import CPU_BUDGET, PRESETS, RainConfig
from raintools.experiments import runner
from raintools.experiments.tasks import TASKS, get_task
from raintools.cli_options import rain_config_from_args
from raintools.search import RainSearch

# the fields a CPU may change; every other field is a rule and must survive the CPU budget
BUDGET = set(CPU_BUDGET) | {"name"}


def letter_embedder(texts):
    return torch.stack([torch.ones(4) + len(t) for t in texts])


def rules(cfg: RainConfig) -> dict:
    return {k: v for k, v in cfg.to_dict().items() if k not in BUDGET}


def test_presets_carry_their_judging_template():
    assert RainConfig().judge_template == "harm"
    assert RainConfig.truthfulqa_yesno().judge_template == "truthful_yesno"
    assert RainConfig.truthfulqa().judge_template == "truthful"
    assert RainConfig.sentiment().judge_template == "sentiment"
    assert RainConfig.advbench().judge_template == "harm"
    for task in TASKS.values():             # a task's preset names the task's own template
        assert task.preset().judge_template == task.template, task.name


def test_generate_preset_truthfulqa_yesno_judges_with_its_template(llama_lm):
    args = build_parser().parse_args(["generate", "--prompt", "Is the sky green?",
                                      "--preset", "truthfulqa-yesno"])
    for device in ("cpu", "cuda"):
        cfg = rain_config_from_args(args, device)
        assert cfg == RainConfig.truthfulqa_yesno(max_new_tokens=64)   # --preset: as asked
    # what `generate` builds (cmd_generate: rain_generate(lm, prompt, cfg) without an evaluator)
    for engine in ("fast", "reference"):
        s = RainSearch(llama_lm, "Is the sky green?", cfg, embedder=letter_embedder, engine=engine)
        assert s.evaluator.template.name == "truthful_yesno", engine
        assert len(s.evaluator.orders) == 1                 # one question, one Yes/No vote
    plain = RainSearch(llama_lm, "hi", RainConfig.cpu_demo(), embedder=letter_embedder)
    assert plain.evaluator.template.name == "harm"


def test_cpu_budget_changes_only_the_budget():
    for name, make in PRESETS.items():
        full, cpu = make(), make().with_cpu_budget()
        assert rules(cpu) == rules(full), name
        assert {k: getattr(cpu, k) for k in CPU_BUDGET} == CPU_BUDGET
        assert cpu.with_cpu_budget() == cpu                      # idempotent
    assert RainConfig.hh().with_cpu_budget() == RainConfig.cpu_demo()
    y = RainConfig.truthfulqa_yesno().with_cpu_budget()
    assert (y.complete_until, y.cut_at_last_stop, y.judge_template, y.name) == (
        "turn", True, "truthful_yesno", "truthfulqa-yesno-cpu")
    a = RainConfig.advbench().with_cpu_budget()
    assert (a.temperature, a.token_temperature, a.sample_attempts, a.add_attempts) == (2.0, 2.0, 19, 3)


def test_flags_on_a_cpu_override_the_budget_and_keep_the_rules():
    args = build_parser().parse_args(["generate", "--prompt", "hi", "--simulations", "5",
                                      "--min-visits", "2"])
    cfg = rain_config_from_args(args, "cpu", default="truthfulqa-yesno")
    assert (cfg.max_simulations, cfg.min_visits, cfg.extra_simulations) == (5, 2, 4)
    assert (cfg.complete_until, cfg.cut_at_last_stop, cfg.judge_template) == ("turn", True, "truthful_yesno")
    gpu = rain_config_from_args(args, "cuda", default="truthfulqa-yesno")
    assert gpu.extra_simulations == 15 and gpu.clause_max_tokens is None   # no CPU budget
    assert rain_config_from_args(args, "cpu").name == "cpu-demo"           # generate's default


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_eval_keeps_the_tasks_rules_on_every_device(monkeypatch, tmp_path, device):
    seen = {}
    monkeypatch.setattr(runner, "run_eval", lambda *a, **kw: seen.update(kw))
    args = build_parser().parse_args(["eval", "--data", "demo", "--out", str(tmp_path),
                                      "--task", "truthful-yesno", "--device", device])
    assert runner.eval_main(args) == 0
    rain = seen["method_config"].rain
    want = RainConfig.truthfulqa_yesno(seed=0)
    assert rules(rain) == rules(want)                  # turn completion, cut, template, T_m rule...
    assert (rain.complete_until, rain.cut_at_last_stop, rain.judge_template) == ("turn", True, "truthful_yesno")
    if device == "cpu":
        assert rain == want.with_cpu_budget()
        assert rain.min_visits == CPU_BUDGET["min_visits"]
    else:
        assert rain == want


def test_default_method_config_on_a_cpu_keeps_the_tasks_rules(tiny_lm):
    task = get_task("truthful-yesno")
    mc = runner.default_method_config(task, tiny_lm)
    assert mc.rain == task.preset().with_cpu_budget()
    assert (mc.rain.complete_until, mc.rain.cut_at_last_stop, mc.rain.judge_template) == (
        "turn", True, "truthful_yesno")


def test_attack_rain_on_a_cpu_keeps_the_advbench_rules(tiny_lm, monkeypatch):
    import raintools.search
    from raintools.attacks.run import rain_fn

    seen = {}

    def fake(lm, request, config, **kw):
        seen["cfg"] = config
        return dataclasses.make_dataclass("R", ["text"])("ok")

    monkeypatch.setattr(raintools.search, "rain_generate", fake)
    assert rain_fn(max_new_tokens=7)(tiny_lm, "x") == "ok"
    assert seen["cfg"] == RainConfig.advbench(max_new_tokens=7).with_cpu_budget()
