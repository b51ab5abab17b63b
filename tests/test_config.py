"""RainConfig with numbers alone: every bound of `validate` (the value at the bound accepted, the
next one refused, with its exact message), the presets' exact constants, the ablations, the
derived helpers. Model-free and fast: part of `make mutation`'s selection."""

from __future__ import annotations

import dataclasses
import math

import pytest

from raintools.config import CPU_BUDGET, PRESETS, RainConfig
from raintools.errors import ConfigError

DEFAULTS = dict(c=2.0, tie_break="random", num_candidates=10, token_set_lengths=(1, 2, 4, 10), top_k=15, temperature=1.0,
                token_temperature=1.0, sample_attempts=9, add_attempts=1, root_prior_mix=0.25,
                complete_clause=True, complete_until="clause", cut_at_last_stop=False,
                clause_max_tokens=None, eval_mode="votes", judge_template="harm",
                similarity_update=True, sim_gamma=0.2, sim_threshold=0.95, node_addition=True,
                max_children=20, add_variance_factor=0.03, max_simulations=50, min_visits=6,
                value_threshold=0.8, extra_simulations=15, commit_rule="argmax",
                parallel_simulations=1, max_length=2048, max_new_tokens=None, max_commits=None,
                seed=0, record_trace=True, name="hh")


def refused(**change) -> str:
    with pytest.raises(ConfigError) as err:
        RainConfig(**change)
    msg = str(err.value)
    assert msg.startswith("Invalid RainConfig: ")
    return msg[len("Invalid RainConfig: "):]


def test_defaults_are_the_papers_hh_constants():
    assert dataclasses.asdict(RainConfig()) == DEFAULTS
    assert RainConfig.hh() == RainConfig()
    assert RainConfig.hh(seed=3).seed == 3 and RainConfig.hh(seed=3).name == "hh"


# (field, accepted values at and inside the bounds, [(refused value, message after "Invalid
# RainConfig: ")])
BOUNDS = [
    ("c", [0, 0.0, 7.5], [(-1e-9, "c must be >= 0, got -1e-09."),
                          (float("nan"), "c must be a finite number, got nan."),
                          (float("inf"), "c must be a finite number, got inf."),
                          (True, "c must be a finite number, got True."),
                          (None, "c must be a finite number, got None."),
                          ("2", "c must be a finite number, got '2'.")]),
    ("num_candidates", [1, 3], [(0, "num_candidates must be >= 1, got 0."),
                                (2.0, "num_candidates must be an integer, got 2.0."),
                                (False, "num_candidates must be an integer, got False.")]),
    ("top_k", [1], [(0, "top_k must be >= 1, got 0."), (1.5, "top_k must be an integer, got 1.5.")]),
    ("temperature", [1e-9, 2.0], [(0.0, "temperature must be > 0, got 0.0."),
                                  (-1.0, "temperature must be > 0, got -1.0.")]),
    ("token_temperature", [1e-9], [(0, "token_temperature must be > 0, got 0.")]),
    ("sample_attempts", [0, 19], [(-1, "sample_attempts must be >= 0, got -1."),
                                  (1.0, "sample_attempts must be an integer, got 1.0.")]),
    ("add_attempts", [0, 3], [(-1, "add_attempts must be >= 0, got -1."),
                              (0.5, "add_attempts must be an integer, got 0.5.")]),
    ("root_prior_mix", [0, 0.5, 1], [(-0.01, "root_prior_mix must be >= 0, got -0.01."),
                                     (1.01, "root_prior_mix must be <= 1, got 1.01.")]),
    ("clause_max_tokens", [None, 0, 16], [(-1, "clause_max_tokens must be >= 0, got -1."),
                                          (1.5, "clause_max_tokens must be an integer, got 1.5.")]),
    ("complete_until", ["clause", "turn"],
     [("eos", "complete_until must be 'clause' or 'turn', got 'eos'.")]),
    ("eval_mode", ["votes", "soft"], [("maybe", "eval_mode must be 'votes' or 'soft', got 'maybe'.")]),
    ("judge_template", ["harm", "truthful_yesno"],
     [("", "judge_template must name a judging template, got ''."),
      ("  ", "judge_template must name a judging template, got '  '."),
      (None, "judge_template must name a judging template, got None.")]),
    ("sim_gamma", [0, 1], [(-0.1, "sim_gamma must be >= 0, got -0.1."),
                           (1.5, "sim_gamma must be <= 1, got 1.5.")]),
    ("sim_threshold", [0, 1], [(-0.5, "sim_threshold must be >= 0, got -0.5."),
                               (2.0, "sim_threshold must be <= 1, got 2.0.")]),
    ("max_children", [1], [(0, "max_children must be >= 1, got 0."),
                           (20.0, "max_children must be an integer, got 20.0.")]),
    ("add_variance_factor", [0, 0.5], [(-0.01, "add_variance_factor must be >= 0, got -0.01.")]),
    ("max_simulations", [1], [(0, "max_simulations must be >= 1, got 0."),
                              (None, "max_simulations must be an integer, got None.")]),
    ("min_visits", [0], [(-1, "min_visits must be >= 0, got -1."),
                         (6.0, "min_visits must be an integer, got 6.0.")]),
    ("value_threshold", [-1, 1, 0.0], [(-1.01, "value_threshold must be >= -1, got -1.01."),
                                       (1.5, "value_threshold must be <= 1, got 1.5.")]),
    ("extra_simulations", [1], [(0, "extra_simulations must be >= 1, got 0."),
                                (15.0, "extra_simulations must be an integer, got 15.0.")]),
    ("parallel_simulations", [1, 8], [(0, "parallel_simulations must be >= 1, got 0."),
                                      (4.0, "parallel_simulations must be an integer, got 4.0.")]),
    ("tie_break", ["random", "public"], [("first", "tie_break must be 'random' or 'public', got 'first'.")]),
    ("commit_rule", ["argmax", "sample"], [("best", "commit_rule must be 'argmax' or 'sample', got 'best'.")]),
    ("max_length", [2], [(1, "max_length must be >= 2, got 1."),
                         (2048.0, "max_length must be an integer, got 2048.0.")]),
    ("max_new_tokens", [None, 1], [(0, "max_new_tokens must be >= 1, got 0."),
                                   (32.5, "max_new_tokens must be an integer, got 32.5.")]),
    ("max_commits", [None, 1], [(0, "max_commits must be >= 1, got 0."),
                                (2.0, "max_commits must be an integer, got 2.0.")]),
    ("seed", [0, -5, 2**40], [(1.5, "seed must be an integer, got 1.5."),
                              (None, "seed must be an integer, got None.")]),
]


@pytest.mark.parametrize("field,ok,bad", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_each_bound_accepts_its_edge_and_refuses_the_next_value(field, ok, bad):
    for v in ok:
        assert getattr(RainConfig(**{field: v}), field) == v
    for v, msg in bad:
        assert refused(**{field: v}) == msg


def test_every_field_with_a_rule_is_in_the_table():
    checked = {b[0] for b in BOUNDS} | {"token_set_lengths", "name"} | {
        f for f in DEFAULTS if isinstance(DEFAULTS[f], bool)}
    assert checked == set(DEFAULTS)


@pytest.mark.parametrize("flag", ["complete_clause", "cut_at_last_stop", "similarity_update",
                                  "node_addition", "record_trace"])
def test_flags_are_booleans(flag):
    assert getattr(RainConfig(**{flag: False}), flag) is False
    assert refused(**{flag: 1}) == f"{flag} must be True or False."
    assert refused(**{flag: "yes"}) == f"{flag} must be True or False."


def test_token_set_lengths():
    assert RainConfig(token_set_lengths=[1, 2.0, "3"]).token_set_lengths == (1, 2, 3)
    assert RainConfig(token_set_lengths=(5,)).token_set_lengths == (5,)
    assert refused(token_set_lengths=()) == \
        "token_set_lengths must be a non-empty list of lengths >= 1, got ()."
    assert refused(token_set_lengths=(1, 0)) == \
        "token_set_lengths must be a non-empty list of lengths >= 1, got (1, 0)."
    cfg = RainConfig()
    assert [cfg.token_set_length(s) for s in range(7)] == [1, 2, 4, 10, 10, 10, 10]
    assert [RainConfig(token_set_lengths=(3,)).token_set_length(s) for s in (0, 4)] == [3, 3]


def test_validate_returns_the_config_and_checks_changes_made_later():
    cfg = RainConfig()
    assert cfg.validate() is cfg
    cfg.c = -1.0
    with pytest.raises(ConfigError, match="c must be >= 0"):
        cfg.validate()


def test_replace_validates_and_leaves_the_original():
    cfg = RainConfig()
    new = cfg.replace(c=0.5, min_visits=2)
    assert (new.c, new.min_visits, cfg.c, cfg.min_visits) == (0.5, 2, 2.0, 6)
    assert isinstance(new, RainConfig) and new is not cfg
    with pytest.raises(ConfigError):
        cfg.replace(c=-1.0)


def test_to_dict_is_plain_data():
    d = RainConfig(token_set_lengths=(1, 3)).to_dict()
    assert d == {**DEFAULTS, "token_set_lengths": [1, 3]}
    assert type(d["token_set_lengths"]) is list


def changes(cfg: RainConfig) -> dict:
    return {k: v for k, v in dataclasses.asdict(cfg).items() if v != DEFAULTS[k]}


def test_presets_change_exactly_their_constants():
    assert changes(RainConfig.advbench()) == dict(
        name="advbench", min_visits=5, temperature=2.0, token_temperature=2.0, sample_attempts=19,
        add_attempts=3)
    assert changes(RainConfig.truthfulqa()) == dict(name="truthfulqa", min_visits=16,
                                                    judge_template="truthful")
    assert changes(RainConfig.truthfulqa_yesno()) == dict(
        name="truthfulqa-yesno", min_visits=16, complete_until="turn", cut_at_last_stop=True,
        judge_template="truthful_yesno")
    assert changes(RainConfig.sentiment()) == dict(name="sentiment", judge_template="sentiment")
    assert changes(RainConfig.cpu_demo()) == dict(name="cpu-demo", **CPU_BUDGET)
    assert CPU_BUDGET == dict(max_simulations=8, extra_simulations=4, min_visits=3, clause_max_tokens=16)
    assert set(PRESETS) == {"hh", "advbench", "truthfulqa", "truthfulqa-yesno", "sentiment", "cpu-demo"}
    for name, make in PRESETS.items():
        assert make().name == name
        assert make(seed=7).seed == 7 and make(seed=7).name == name      # overrides reach the preset
        assert make(name="x").name == "x"                                  # and win over it
    assert RainConfig.advbench(min_visits=9).min_visits == 9
    assert RainConfig.truthfulqa_yesno(cut_at_last_stop=False).cut_at_last_stop is False
    assert RainConfig.cpu_demo(max_simulations=2).max_simulations == 2


def test_cpu_budget_names():
    assert RainConfig().with_cpu_budget().name == "cpu-demo"
    assert RainConfig.cpu_demo().with_cpu_budget() == RainConfig.cpu_demo()
    assert RainConfig.advbench().with_cpu_budget().name == "advbench-cpu"
    assert RainConfig.advbench().with_cpu_budget().with_cpu_budget().name == "advbench-cpu"
    assert changes(RainConfig.sentiment().with_cpu_budget()) == dict(
        name="sentiment-cpu", judge_template="sentiment", **CPU_BUDGET)


def test_ablations_are_cumulative():
    assert RainConfig.ablation("full") == RainConfig()
    assert changes(RainConfig.ablation("no-sim")) == dict(similarity_update=False)
    assert changes(RainConfig.ablation("no-sim-no-add")) == dict(similarity_update=False,
                                                                 node_addition=False)
    assert changes(RainConfig.ablation("no-sim-no-add-c0")) == dict(similarity_update=False,
                                                                    node_addition=False, c=0.0)
    base = RainConfig.cpu_demo()
    assert RainConfig.ablation("no-sim", base) == base.replace(similarity_update=False)
    with pytest.raises(ConfigError) as err:
        RainConfig.ablation("none")
    assert str(err.value) == ("Unknown ablation 'none'; choose from "
                              "['full', 'no-sim', 'no-sim-no-add', 'no-sim-no-add-c0'].")


def test_numbers_of_other_kinds():
    assert RainConfig(c=3).c == 3 and math.isfinite(RainConfig(c=1e300).c)
    assert refused(c=-float("inf")) == "c must be a finite number, got -inf."


def test_the_clause_completion_budget_is_what_is_left_capped_and_none_without_completion():
    """A clause completion may draw what is left of the response (never below 0), at most
    clause_max_tokens (None: no cap, as the paper); nothing without complete_clause."""
    assert [RainConfig().completion_budget(r) for r in (-3, 0, 1, 50)] == [0, 0, 1, 50]
    capped = RainConfig(clause_max_tokens=4)
    assert [capped.completion_budget(r) for r in (-3, 0, 3, 4, 5, 50)] == [0, 0, 3, 4, 4, 4]
    assert RainConfig(clause_max_tokens=0).completion_budget(9) == 0
    assert RainConfig(complete_clause=False).completion_budget(50) == 0
    assert RainConfig(complete_clause=False, clause_max_tokens=4).completion_budget(50) == 0
