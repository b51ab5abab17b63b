"""Decoding methods by name, one interface for all of them.

A method is a function `fn(lm, prompt, task, config, seed) -> RainResult`:

- `lm`: a `raintools.LanguageModel`;
- `prompt`: the user request (already made from the data row by the task);
- `task`: a `raintools.experiments.tasks.Task` (its self-evaluation template steers RAIN and best-of-N);
- `config`: a `MethodConfig` (the RAIN constants plus the few settings other methods need);
- `seed`: the run's seed (every draw is keyed by it, so a result does not depend on the order or
  the process in which prompts are answered).

Built in: `vanilla` (greedy), `sampled` (temperature / top-k sampling), `rain`, and `bon`
(best-of-N with the same self-evaluator as RAIN: the paper's "cherry-pick" baseline). New methods
plug in with the decorator:

    from raintools.experiments.methods import register_method

    @register_method("rain-soft")
    def rain_soft(lm, prompt, task, config, seed):
        cfg = config.replace(rain=config.rain.replace(eval_mode="soft"))
        return METHODS["rain"](lm, prompt, task, cfg, seed)

and then `python -m raintools eval --methods vanilla,rain-soft` finds them (import the module
that registers them first, or register in a notebook and call `raintools.experiments.runner.run_eval`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Callable

from ..config import RainConfig
from ..errors import ConfigError
from ..trace import RainResult

MethodFn = Callable[..., RainResult]
METHODS: dict[str, MethodFn] = {}
VARIANTS: dict[str, dict] = {}     # name -> {"base": ..., "changes": {...}} (see register_variant)


@dataclass
class MethodConfig:
    """Settings shared by every method of one evaluation run.

    `rain`: the RAIN constants (its `max_new_tokens` is overridden by the one here, so all
    methods answer with the same length budget). `temperature` / `top_k`: sampling for `sampled`
    and the best-of-N candidates. `bon_n`: N of best-of-N. `engine`: RAIN's engine
    ("auto": fast where the model allows; "fast" or "reference"). `embedder`: optional callable list[str] -> Tensor for RAIN's
    similarity update (default all-MiniLM-L6-v2). `client`: the `VllmClient` RAIN's engine uses
    when it runs on a vLLM server (default the model's shared one, `vllm_engine.shared_client`;
    the eval runner gives its searches a view with the run's own stop, `VllmClient.stopping`).
    `embedder` and `client` are runtime objects, not part of the run's identity (`to_dict`)."""

    rain: RainConfig = field(default_factory=RainConfig)
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int | None = None
    bon_n: int = 4
    engine: str = "auto"
    embedder: Callable | None = field(default=None, compare=False, repr=False)
    client: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}.")
        if isinstance(self.bon_n, bool) or not isinstance(self.bon_n, int) or self.bon_n < 1:
            raise ConfigError(f"bon_n must be a positive integer, got {self.bon_n!r}.")
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature!r}.")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ConfigError(f"top_k must be a positive integer or None, got {self.top_k!r}.")

    def replace(self, **changes) -> "MethodConfig":
        return dataclasses.replace(self, **changes)

    def rain_config(self, seed: int) -> RainConfig:
        """The RAIN config actually run: this run's length budget and seed, no trace."""
        return self.rain.replace(max_new_tokens=self.max_new_tokens, seed=int(seed),
                                 record_trace=False)

    def to_dict(self) -> dict:
        """What identifies the run's settings (recorded in run.json; resume compares it)."""
        return {"rain": self.rain_config(0).to_dict() | {"seed": None}, "max_new_tokens": self.max_new_tokens,
                "temperature": self.temperature, "top_k": self.top_k, "bon_n": self.bon_n,
                "engine": self.engine,
                "embedder": None if self.embedder is None else getattr(self.embedder, "name",
                                                                       type(self.embedder).__name__)}


def register_method(name: str, fn: MethodFn | None = None):
    """Register `fn` under `name` (usable as a decorator). Re-registering a name replaces it."""
    if not isinstance(name, str) or not name or "," in name or name != name.strip():
        raise ConfigError(f"A method name must be a non-empty string without commas, got {name!r}.")

    def deco(f: MethodFn) -> MethodFn:
        if not callable(f):
            raise ConfigError(f"Method {name!r} must be callable.")
        METHODS[name] = f
        VARIANTS.pop(name, None)
        return f

    return deco(fn) if fn is not None else deco


def register_variant(name: str, base: str, **changes) -> str:
    """Register `name` as the method `base` run with some settings changed, e.g.

        register_variant("bon-8", "bon", bon_n=8)
        register_variant("rain-T16", "rain", max_simulations=16)

    `changes` are `MethodConfig` fields (bon_n, max_new_tokens, temperature, top_k, engine) or
    `RainConfig` fields (max_simulations, value_threshold, c, similarity_update, ...). The
    runner records a variant's definition in run.json, so a resumed run cannot silently mix two
    definitions under one name. Returns `name`."""
    base_fn = get_method(base)
    method_fields = {f.name for f in dataclasses.fields(MethodConfig)} - {"rain", "embedder", "client"}
    rain_fields = {f.name for f in dataclasses.fields(RainConfig)} - {"seed", "record_trace"}
    unknown = sorted(set(changes) - method_fields - rain_fields)
    if unknown:
        raise ConfigError(f"register_variant: unknown setting(s) {unknown}; use MethodConfig or "
                          f"RainConfig fields.")
    on_method = {k: v for k, v in changes.items() if k in method_fields}
    on_rain = {k: v for k, v in changes.items() if k not in method_fields}
    MethodConfig().replace(**on_method, rain=RainConfig().replace(**on_rain))   # validate now

    def variant(lm, prompt, task, config: MethodConfig, seed: int) -> RainResult:
        cfg = config.replace(**on_method)
        if on_rain:
            cfg = cfg.replace(rain=cfg.rain.replace(**on_rain))
        result = base_fn(lm, prompt, task, cfg, seed)
        result.method = name
        return result

    variant.__doc__ = f"{base} with {changes}"
    register_method(name, variant)
    VARIANTS[name] = {"base": base, "changes": dict(changes)}
    return name


def get_method(name: str) -> MethodFn:
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(f"Unknown method {name!r}; choose from {', '.join(METHODS)}.") from None


def split_names(spec, what: str = "name") -> list[str]:
    """'a, b' or a list -> list of names (order kept); a repeated name is an error."""
    names = [m.strip() for m in spec.split(",")] if isinstance(spec, str) else list(spec or [])
    names = [m for m in names if m]
    if len(set(names)) != len(names):
        raise ConfigError(f"A {what} is listed twice in {names}.")
    return names


def parse_methods(spec) -> list[str]:
    """'vanilla,rain' or a list -> checked list of registered names (order kept, no repeats)."""
    names = split_names(spec, "method")
    if not names:
        raise ConfigError("Give at least one method (e.g. --methods vanilla,rain).")
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ConfigError(f"Unknown method(s) {', '.join(map(repr, unknown))}; choose from "
                          f"{', '.join(METHODS)}.")
    return names


def task_evaluator(lm, task, config: MethodConfig, cached: bool = True):
    """The model's own self-evaluator for the task (shared by RAIN and best-of-N): the task's
    template, shown the task's query (`Task.evaluator`). `cached=False`: the reference-style
    execution."""
    if hasattr(task, "evaluator"):
        return task.evaluator(lm, config.rain.eval_mode, cached=cached)
    from ..evaluate import SelfEvaluator, self_evaluator

    return (self_evaluator(lm, task.template, config.rain.eval_mode) if cached
            else SelfEvaluator(lm, task.template, config.rain.eval_mode, cached=False))


# --------------------------------------------------------------------------------------------
# Built-in methods


@register_method("vanilla")
def vanilla(lm, prompt: str, task, config: MethodConfig, seed: int) -> RainResult:
    """Greedy decoding with a KV cache (the paper's vanilla auto-regressive inference)."""
    from ..vanilla import generate_vanilla

    return generate_vanilla(lm, prompt, max_new_tokens=config.max_new_tokens, seed=seed)


@register_method("sampled")
def sampled(lm, prompt: str, task, config: MethodConfig, seed: int) -> RainResult:
    """Sampled vanilla decoding (temperature, optional top-k)."""
    from ..vanilla import generate_vanilla

    return generate_vanilla(lm, prompt, max_new_tokens=config.max_new_tokens, do_sample=True,
                            temperature=config.temperature, top_k=config.top_k, seed=seed)


@register_method("rain")
def rain(lm, prompt: str, task, config: MethodConfig, seed: int) -> RainResult:
    """RAIN with the task's self-evaluator."""
    from ..search import make_engine, rain_generate, resolve_engine
    from ..vllm_engine import ENGINE_MODES

    # the reference engine pairs with the straightforward, uncached judge passes
    evaluator = task_evaluator(lm, task, config, cached=config.engine != "reference")
    cfg, engine = config.rain_config(seed), config.engine
    if config.client is not None and resolve_engine(lm, engine) in ENGINE_MODES:
        engine = make_engine(lm, engine, cfg, client=config.client)     # on the given client
    return rain_generate(lm, prompt, cfg, evaluator=evaluator, embedder=config.embedder, engine=engine)


@register_method("bon")
def bon(lm, prompt: str, task, config: MethodConfig, seed: int) -> RainResult:
    """Best-of-N: N sampled answers, the one the task's self-evaluator scores highest."""
    from ..vanilla import best_of_n

    r = best_of_n(lm, prompt, n=config.bon_n, evaluator=task_evaluator(lm, task, config),
                  max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                  top_k=config.top_k, seed=seed)
    r.method = "bon"
    return r
