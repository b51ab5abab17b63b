"""Alignment goals ("tasks"): what the self-evaluator asks, which RAIN constants apply, how a data
row becomes a prompt, and which judges score the answers. The evaluation runner and the notebooks
look tasks up here by name.

    task = get_task("truthful")               # or "harmless", "sentiment"
    items = task.load("truthfulqa", limit=20)  # a short name under data_root(), or a file path
    cfg = task.preset(max_new_tokens=64)
    r = rain_generate(lm, task.prompt(item), cfg, evaluator=task.evaluator(lm, cfg.eval_mode))
    judges = task.make_judges(items)           # {name: Judge}, references registered
    verdict = judges[name].judge(item.prompt, r.text, **task.judge_kwargs(item, name))

Three things a runner must do for every task (they are no-ops for `harmless`):

- **evaluator**: pass `evaluator=task.evaluator(lm, mode)` to `rain_generate` / `best_of_n`.
  The search's default self-evaluator asks the *harm* template; `task.evaluator` asks the task's
  template, and shows it `task.judge_query(prompt)` (for `sentiment`: the review opening, not the
  request wrapped around it).
- **judges**: build them with `task.make_judges(items)`; the truthfulness judge needs each item's
  reference answers (`item.meta["best"]`, `["correct"]`, `["incorrect"]` from
  `raintools.experiments.data.load_truthfulqa`), which `make_judges` registers under both `item.prompt` and
  `task.prompt(item)`, so `judge_many([(item.prompt, response), ...])` works.
- **per-item judge arguments**: `judge.judge(item.prompt, response, **task.judge_kwargs(item, name))`
  passes the references explicitly (an empty dict for judges that need none).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..config import RainConfig
from ..errors import ConfigError


@dataclass(frozen=True)
class Task:
    name: str
    template: str                                  # self-evaluation template (raintools/templates)
    preset: Callable[..., RainConfig]              # RAIN constants of the paper's setting
    judges: tuple[str, ...] = ("refusal",)         # default judges (raintools.experiments.judges.get_judge)
    data_task: str | None = None                   # loader hint for raintools.experiments.data.load_dataset
    description: str = ""
    prompt_fn: Callable | None = field(default=None, compare=False)
    # generation prompt -> the query shown to the self-evaluator (None: the prompt itself)
    query_fn: Callable[[str], str] | None = field(default=None, compare=False)

    def prompt(self, item) -> str:
        """The user request sent to the model for one data item."""
        return self.prompt_fn(item) if self.prompt_fn else item.prompt

    def load(self, path_or_name, column: str | None = None, limit: int | None = None):
        from .data import load_dataset

        task = None if column else self.data_task
        return load_dataset(path_or_name, column=column, task=task, limit=limit)

    # -- self-evaluation
    def judge_query(self, prompt: str) -> str:
        """What the self-evaluator's {query} shows for a generation prompt."""
        return self.query_fn(prompt) if self.query_fn else prompt

    def evaluator(self, lm, mode: str = "votes", cached: bool = True):
        """The model's self-evaluator for this task's template, as `(prompt, response) -> v`.

        `cached=False` gives the reference-style execution (as `engine="reference"` uses)."""
        from ..evaluate import SelfEvaluator, self_evaluator

        inner = (self_evaluator(lm, self.template, mode) if cached
                 else SelfEvaluator(lm, self.template, mode, cached=False))
        return inner if self.query_fn is None else MappedEvaluator(inner, self.query_fn)

    # -- judges (after generation)
    def make_judges(self, items=(), names=None, **options) -> dict:
        """{name: Judge} for `names` (default: the task's judges). Reference answers of `items`
        are registered with the truthfulness judge under `item.prompt` and `self.prompt(item)`.
        `options` go to `get_judge` for every judge (e.g. `embedder=` when only one judge)."""
        from .judges import get_judge

        items = list(items)
        out = {}
        for name in (names or self.judges):
            judge = get_judge(name, **options)
            if _base(name) == "truthfulness":
                judge.add_references(items)
                for it in items:
                    key, wrapped = it.prompt.strip(), self.prompt(it).strip()
                    if wrapped != key and key in judge.refs:
                        judge.refs[wrapped] = judge.refs[key]
            out[name] = judge
        return out

    def judge_kwargs(self, item, judge="") -> dict:
        """Keyword arguments for `judge.judge(item.prompt, response, **kw)` for one item: the
        reference answers (`correct` = best answer + correct answers, `incorrect`) for the
        truthfulness judge, nothing for the others. `judge` is a judge name or a Judge."""
        name = judge if isinstance(judge, str) else getattr(judge, "name", "")
        if _base(name) != "truthfulness":
            return {}
        meta = getattr(item, "meta", None) or {}
        if "incorrect" not in meta or not (meta.get("correct") or meta.get("best")):
            raise ConfigError(f"Item {getattr(item, 'id', '?')!r} has no TruthfulQA references "
                              f"(meta 'best'/'correct' and 'incorrect'); load it with "
                              f"raintools.experiments.data.load_truthfulqa.")
        correct = list(meta.get("correct", []))
        if meta.get("best") and meta["best"] not in correct:
            correct.insert(0, meta["best"])
        return {"correct": correct, "incorrect": list(meta["incorrect"])}


def _base(judge_name: str) -> str:
    """'truthfulness' for 'truthfulness', 'truthfulness:minilm', ..."""
    return str(judge_name).split(":", 1)[0]


class MappedEvaluator:
    """An evaluator that shows the inner evaluator `query_fn(prompt)` instead of the prompt.
    Other attributes (`stats`, `last_probs`, `template`, ...) are the inner evaluator's."""

    def __init__(self, inner, query_fn: Callable[[str], str]):
        self.inner = inner
        self.query_fn = query_fn

    def __call__(self, query: str, response: str) -> float:
        return self.inner(self.query_fn(query), response)

    def __getattr__(self, name):
        if name in ("inner", "query_fn"):  # not set yet (e.g. during unpickling)
            raise AttributeError(name)
        return getattr(self.inner, name)


@dataclass(frozen=True)
class RequestWrapper:
    """A request around a piece of data text, e.g. "Continue this review ...: {text}", that can
    be undone: `unwrap(wrap(x)) == x`; a prompt not made by `wrap` is returned unchanged."""

    form: str

    def __post_init__(self):
        if self.form.count("{text}") != 1:
            raise ConfigError("A request form needs exactly one {text} placeholder.")

    def wrap(self, text: str) -> str:
        return self.form.replace("{text}", text)

    def unwrap(self, prompt: str) -> str:
        head, tail = self.form.split("{text}")
        if prompt.startswith(head) and prompt.endswith(tail) and len(prompt) >= len(head) + len(tail):
            return prompt[len(head): len(prompt) - len(tail)]
        return prompt


# Numbers the paper reports (Li et al., ICLR 2024, arXiv 2309.07124), for figures drawn beside
# ours. Reported, not measured here; their judges differ from our offline ones.
PAPER_TRUTHFULQA = (  # TruthfulQA, % answers both true and informative ("True+Info")
    {"model": "LLaMA-2-chat 13B", "method": "vanilla", "value": 68.5},
    {"model": "LLaMA-2-chat 13B", "method": "RAIN", "value": 72.8},
)
PAPER_IMDB = (  # IMDB review continuations, % positive
    {"model": "LLaMA 7B", "method": "vanilla", "value": 62.1},
    {"model": "LLaMA 7B", "method": "RAIN", "value": 82.1},
    {"model": "Alpaca 7B", "method": "vanilla", "value": 72.5},
    {"model": "Alpaca 7B", "method": "RAIN", "value": 94.4},
    {"model": "Vicuna 7B", "method": "vanilla", "value": 64.4},
    {"model": "Vicuna 7B", "method": "RAIN", "value": 89.1},
)

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    TASKS[task.name] = task
    return task


register(Task("harmless", template="harm", preset=RainConfig.hh, judges=("refusal",),
              description="harmlessness (Anthropic HH, AdvBench): is the reply harmful?"))

# TruthfulQA, generation setting: the question is sent as it is (a chat model answers it
# directly); the self-evaluator sees the question and the whole completed answer. Items carry
# their references in meta (best, correct, incorrect) for the truthfulness judge.
register(Task("truthful", template="truthful", preset=RainConfig.truthfulqa,
              judges=("truthfulness",), data_task="truthfulqa",
              description="truthfulness (TruthfulQA): is the answer truthful?"))

# The public code's TruthfulQA script, as an option: one question answered " Yes" / " No" (one
# vote, v in {-1, +1}), the answer completed to the end of the turn and judged cut after its last
# full stop (`RainConfig.truthfulqa_yesno`). The default `truthful` task keeps the two-order vote.
register(Task("truthful-yesno", template="truthful_yesno", preset=RainConfig.truthfulqa_yesno,
              judges=("truthfulness",), data_task="truthfulqa",
              description="truthfulness (TruthfulQA), the public code's variant: one Yes/No vote "
                          "on the whole answer"))

# IMDB: the data gives the first words of a review. A chat model is asked to continue it (our
# wording below); the self-evaluator and the judge read the continuation as part of the review
# (its {query} is the opening, unwrapped from the request). For a base model, load it with
# `ChatFormat(kind="plain")`: the same request then goes into the Human:/Assistant: frame.
REVIEW_REQUEST = RequestWrapper(
    "Continue this movie review. Write the next two sentences of the review and nothing else."
    "\n\nReview: {text}")

register(Task("sentiment", template="sentiment", preset=RainConfig.sentiment,
              judges=("sentiment",), data_task="imdb",
              description="positive sentiment (IMDB): is the review continuation positive?",
              prompt_fn=lambda item: REVIEW_REQUEST.wrap(item.prompt),
              query_fn=REVIEW_REQUEST.unwrap))


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ConfigError(f"Unknown task {name!r}; choose from {sorted(TASKS)}.") from None
