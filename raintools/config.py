"""`RainConfig`: every constant of the search, validated, with the paper's values as defaults.

Sources: Li et al., ICLR 2024 (arXiv 2309.07124) and the authors' public code; see
`docs/rain-spec.md` of the project's shared docs. The presets are classmethods (`RainConfig.hh()`
is the default), by name in `PRESETS`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType

from .errors import ConfigError


@dataclass
class RainConfig:
    # -- forward / selection
    c: float = 2.0                      # exploration constant of the PUCT-style bonus; c = 0:
                                        # no exploration, the child with the highest normalised
                                        # value (unvisited children count 0), ties by tie_break
    tie_break: str = "random"           # children with exactly equal scores: "random" (a keyed
                                        # draw) or "public" (the public code's order; tree.tie_rule)
    # -- expansion
    num_candidates: int = 10            # candidate token sets per expansion (top-10 / greedy+9)
    token_set_lengths: tuple[int, ...] = (1, 2, 4, 10)  # by absolute depth; the last repeats
    top_k: int = 15                     # truncation of rollout sampling
    temperature: float = 1.0            # rollout sampling temperature (AdvBench: 2)
    token_temperature: float = 1.0      # softmax temperature of the 1-token level's priors (AdvBench: 2)
    sample_attempts: int = 9            # sampled rollouts per expansion (AdvBench: 19)
    add_attempts: int = 1               # sampled rollouts per node addition, the first new one
                                        # kept (AdvBench: 3)
    root_prior_mix: float = 0.25        # root children priors: (1-m) p + m uniform
    # -- evaluation
    complete_clause: bool = True        # sample to the end of the clause before judging
    complete_until: str = "clause"      # "clause" (paper) or "turn": to EOS / a user turn only
                                        # (the public code's TruthfulQA script)
    cut_at_last_stop: bool = False      # judge the response cut after its last "." (TruthfulQA
                                        # script); a response without one is judged whole
    clause_max_tokens: int | None = None  # None: up to max_length (as the paper)
    eval_mode: str = "votes"            # "votes" (paper) or "soft" (probability difference)
    judge_template: str = "harm"        # the self-evaluator's judging template when none is given
                                        # (raintools/templates: harm, truthful, truthful_yesno, ...)
    # -- backward
    similarity_update: bool = True
    sim_gamma: float = 0.2
    sim_threshold: float = 0.95
    # -- dynamic node addition
    node_addition: bool = True
    max_children: int = 20
    add_variance_factor: float = 0.03   # threshold = factor * token-set length
    # -- outer loop
    max_simulations: int = 50           # T
    min_visits: int = 6                 # T_m (HH 6, AdvBench 5, TruthfulQA 16)
    value_threshold: float = 0.8        # V
    extra_simulations: int = 15         # at least this many new simulations per step
    commit_rule: str = "argmax"         # "argmax" (code) or "sample" (paper: from visit counts)
    parallel_simulations: int = 1       # K: simulations in flight at once (raintools.search;
                                        # 1: the paper's sequential search)
    # -- lengths
    max_length: int = 2048              # prompt + response tokens
    max_new_tokens: int | None = None   # optional cap on the response
    max_commits: int | None = None      # stop after this many outer steps (the search horizon
                                        # stays max_length / max_new_tokens; for benchmarks/demos)
    # -- bookkeeping
    seed: int = 0
    record_trace: bool = True
    name: str = "hh"

    def __post_init__(self):
        self.token_set_lengths = tuple(int(x) for x in self.token_set_lengths)
        self.validate()

    def validate(self) -> "RainConfig":
        def bad(msg):
            raise ConfigError(f"Invalid RainConfig: {msg}")

        def number(*names, lo=None, hi=None, lo_open=False, integer=False, allow_none=False):
            for name in names:
                v = getattr(self, name)
                if v is None and allow_none:
                    continue
                ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
                if isinstance(v, bool) or not ok_type or (not integer and not math.isfinite(v)):
                    bad(f"{name} must be a{'n integer' if integer else ' finite number'}, got {v!r}.")
                if lo is not None and (v <= lo if lo_open else v < lo):
                    bad(f"{name} must be {'>' if lo_open else '>='} {lo}, got {v!r}.")
                if hi is not None and v > hi:
                    bad(f"{name} must be <= {hi}, got {v!r}.")

        def choice(name, *options):
            if getattr(self, name) not in options:
                bad(f"{name} must be {' or '.join(map(repr, options))}, got {getattr(self, name)!r}.")

        number("c", lo=0)
        choice("tie_break", "random", "public")
        number("num_candidates", lo=1, integer=True)
        if not self.token_set_lengths or any(x < 1 for x in self.token_set_lengths):
            bad(f"token_set_lengths must be a non-empty list of lengths >= 1, got {self.token_set_lengths}.")
        number("top_k", lo=1, integer=True)
        number("temperature", "token_temperature", lo=0, lo_open=True)
        number("sample_attempts", "add_attempts", lo=0, integer=True)
        number("root_prior_mix", lo=0, hi=1)
        number("clause_max_tokens", lo=0, integer=True, allow_none=True)
        choice("complete_until", "clause", "turn")
        if not isinstance(self.judge_template, str) or not self.judge_template.strip():
            bad(f"judge_template must name a judging template, got {self.judge_template!r}.")
        choice("eval_mode", "votes", "soft")
        number("sim_gamma", "sim_threshold", lo=0, hi=1)   # threshold < 0: negative weights, extrapolation
        number("max_children", lo=1, integer=True)
        number("add_variance_factor", lo=0)
        number("max_simulations", lo=1, integer=True)
        number("min_visits", lo=0, integer=True)
        number("value_threshold", lo=-1, hi=1)
        number("extra_simulations", "parallel_simulations", lo=1, integer=True)
        choice("commit_rule", "argmax", "sample")
        number("max_length", lo=2, integer=True)
        number("max_new_tokens", "max_commits", lo=1, integer=True, allow_none=True)
        number("seed", integer=True)
        for f in dataclasses.fields(self):
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):
                bad(f"{f.name} must be True or False.")
        return self

    # -- derived
    def token_set_length(self, step: int) -> int:
        """Length of the token sets that a node at absolute depth `step` expands into."""
        lengths = self.token_set_lengths
        return lengths[min(step, len(lengths) - 1)]

    @property
    def needs_embeddings(self) -> bool:
        """Whether a search embeds its path texts: only the similarity update and node addition
        read embeddings."""
        return self.similarity_update or self.node_addition

    def completion_budget(self, remaining: int) -> int:
        """Tokens a clause completion may draw: none without `complete_clause`, else what is left
        of the response (`remaining`), at most `clause_max_tokens`."""
        if not self.complete_clause:
            return 0
        return max(0, remaining if self.clause_max_tokens is None else min(remaining, self.clause_max_tokens))

    def replace(self, **changes) -> "RainConfig":
        return dataclasses.replace(self, **changes)

    def with_cpu_budget(self) -> "RainConfig":
        """This configuration with the CPU budget (`CPU_BUDGET`) and every rule unchanged. The name
        says so: `hh` becomes `cpu-demo` (the same configuration), another preset `<name>-cpu`."""
        name = ("cpu-demo" if self.name in ("hh", "cpu-demo") else
                self.name if self.name.endswith("-cpu") else f"{self.name}-cpu")
        return self.replace(**CPU_BUDGET, name=name)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["token_set_lengths"] = list(self.token_set_lengths)
        return d

    # -- presets
    @classmethod
    def hh(cls, **overrides) -> "RainConfig":
        """The Anthropic HH harmlessness setting of the paper (the default)."""
        return cls(**{"name": "hh", **overrides})

    @classmethod
    def advbench(cls, **overrides) -> "RainConfig":
        """The AdvBench setting of the public code: T_m = 5, temperature 2 at every level (the
        rollouts and the 1-token level's priors), up to 19 sampling attempts per expansion and 3
        per node addition (the HH setting: 9 and 1)."""
        return cls(**{"name": "advbench", "min_visits": 5, "temperature": 2.0,
                      "token_temperature": 2.0, "sample_attempts": 19, "add_attempts": 3,
                      **overrides})

    @classmethod
    def truthfulqa(cls, **overrides) -> "RainConfig":
        """The TruthfulQA setting: T_m = 16."""
        return cls(**{"name": "truthfulqa", "min_visits": 16, "judge_template": "truthful",
                      **overrides})

    @classmethod
    def truthfulqa_yesno(cls, **overrides) -> "RainConfig":
        """The public code's TruthfulQA script: T_m = 16, the evaluation completes the answer to
        the end of the turn (not of the clause) and judges it cut after its last full stop. Use it
        with the `truthful_yesno` judging template (one question answered Yes/No, one vote:
        v in {-1, +1}), which the preset carries; `tasks.get_task("truthful-yesno")` pairs the two."""
        return cls(**{"name": "truthfulqa-yesno", "min_visits": 16, "complete_until": "turn",
                      "cut_at_last_stop": True, "judge_template": "truthful_yesno", **overrides})

    @classmethod
    def sentiment(cls, **overrides) -> "RainConfig":
        """The IMDB positive-sentiment setting. The paper names no search constants of its own
        for it, so these are the HH constants under their own name (results record the preset)."""
        return cls(**{"name": "sentiment", "judge_template": "sentiment", **overrides})

    @classmethod
    def ablation(cls, which: str, base: "RainConfig | None" = None) -> "RainConfig":
        """The paper's cumulative ablation: 'full', 'no-sim', 'no-sim-no-add', 'no-sim-no-add-c0'."""
        base = base or cls()
        steps = {
            "full": {},
            "no-sim": {"similarity_update": False},
            "no-sim-no-add": {"similarity_update": False, "node_addition": False},
            "no-sim-no-add-c0": {"similarity_update": False, "node_addition": False, "c": 0.0},
        }
        if which not in steps:
            raise ConfigError(f"Unknown ablation {which!r}; choose from {list(steps)}.")
        return base.replace(**steps[which])

    @classmethod
    def cpu_demo(cls, **overrides) -> "RainConfig":
        """The HH setting with the budget of a laptop CPU and a 135M model (`CPU_BUDGET`); another
        preset on a CPU: `RainConfig.<preset>().with_cpu_budget()`."""
        return cls(**{"name": "cpu-demo", **CPU_BUDGET, **overrides})


CPU_BUDGET = MappingProxyType({"max_simulations": 8, "extra_simulations": 4, "min_visits": 3,
                               "clause_max_tokens": 16})
"""What a CPU changes (`RainConfig.with_cpu_budget`, `RainConfig.cpu_demo`): the budget only (fewer
simulations per step, a short clause completion), never a rule."""


PRESETS = MappingProxyType({"hh": RainConfig.hh, "advbench": RainConfig.advbench,
                            "truthfulqa": RainConfig.truthfulqa,
                            "truthfulqa-yesno": RainConfig.truthfulqa_yesno,
                            "sentiment": RainConfig.sentiment, "cpu-demo": RainConfig.cpu_demo})
