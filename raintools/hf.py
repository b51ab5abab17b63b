"""RAIN from transformers itself: `model.generate(..., custom_generate=...)`.

transformers (5.x) lets `generate` hand the decoding to a *custom generation method*, given as

* a callable: `model.generate(**inputs, custom_generate=raintools.hf.rain_decoding, ...)`.
  transformers prepares the inputs and the generation config, then calls the callable. No trust
  flag is needed (it is code you imported). transformers does not pass the tokenizer on to a
  callable, so wrap the pair once first: `raintools.wrap(model, tokenizer)` (`load_model` and
  `tiny_model` do it for you; a model loaded from a local folder also works without it);
* a folder or Hub repository holding `custom_generate/generate.py` (the repository's `hub/rain/`):
  `model.generate(**inputs, custom_generate="hub/rain", trust_remote_code=True, tokenizer=tok, ...)`.
  transformers runs that file's `generate(model, *args, **kwargs)`, which is `generate` below: it
  refuses what RAIN cannot honour, then runs transformers' input preparation with `rain_decoding`
  (the pattern transformers' documentation suggests for custom methods).

Both return what `generate` returns: token ids [batch, prompt + response], or with
`return_dict_in_generate=True` a `RainGenerateOutput` (a `GenerateDecoderOnlyOutput` with
`sequences`, plus `results`: one `RainResult` per row, with its text, token sets, stats and trace).

Arguments:

* `rain_config=RainConfig(...)`: the search (default `RainConfig()`, the paper's HH setting);
  `evaluator=` (a callable `(query, response) -> [-1, 1]`, or a judging template name such as
  "harm" or "truthful"; default the model's own self-evaluation with
  `rain_config.judge_template`, "harm" unless the preset names another), `embedder=`,
  `engine=`, `seed=`, `query=` (what the judge sees, see below), `progress=`, `concurrency=`.
* Generation-config fields with the same meaning are honoured when the call sets them (as keyword
  arguments or in a `generation_config` you pass): `max_new_tokens` / `max_length` (the response
  cap; without them the call uses `rain_config.max_new_tokens`, and without that transformers'
  default length), `top_k` and `temperature` (RAIN's rollout sampling; `top_k=0` means no
  truncation), `eos_token_id` (these ids stop a response, on top of the model's own end-of-turn
  tokens), `pad_token_id` (pads the shorter rows of a batch, as transformers does). `do_sample` is
  not consulted: RAIN's rollouts always sample and its commit follows `rain_config.commit_rule`.
  The model's own generation-config defaults for sampling (e.g. `top_p=0.9`) belong to ordinary
  decoding and are not used.
* Options RAIN cannot honour raise one `ConfigError` naming them all: beam search
  (`num_beams > 1`), several sequences per prompt, assistant models / speculative decoding,
  streamers, custom logits processors or stopping criteria, constrained decoding, guidance,
  `inputs_embeds` or a cache to continue from, score/attention outputs, and sampling or penalty
  fields (`top_p`, `repetition_penalty`, `min_new_tokens`, `stop_strings`, ...).

Batched `input_ids` (several prompts, left padding, with their `attention_mask`) run as one batched
search (`rain_generate_batch`): the same tokens as one prompt at a time. Each row's prompt is the
tokens its attention mask attends; the output keeps each input row as given and pads shorter
responses on the right with the pad id.

The query: the self-evaluator judges a response *to a query*. Given raw ids, RAIN decodes them and
takes the last user turn of the chat template when the ids end in the template's generation prompt
(for ids made with `tokenizer.apply_chat_template(..., add_generation_prompt=True)` that is exactly
the user's message, so the search equals `rain_generate(lm, message)`); otherwise (plain text, a
prompt that is not chat-formatted) the whole decoded prompt is the query. `query=` overrides it
(a string, or one per row). `query_from_ids` is the function.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.utils import GenerateDecoderOnlyOutput, GenerationMixin

from .config import RainConfig
from .errors import ConfigError, ModelLoadError, PromptError
from .models import LanguageModel, wrap, wrapped
from .search import rain_generate_batch
from .trace import RainResult

__all__ = ["RainGenerateOutput", "generate", "query_from_ids", "rain_decoding", "language_model"]


@dataclass
class RainGenerateOutput(GenerateDecoderOnlyOutput):
    """`generate`'s output with `return_dict_in_generate=True`: `sequences` [batch, prompt +
    response] as transformers returns them, and `results`, one `RainResult` per row (the response
    text and tokens, the committed token sets, `stats` with forward passes and tokens counted, and
    the search `trace`). `scores`, `logits`, `attentions` and `hidden_states` stay None."""

    results: list[RainResult] | None = None

    @property
    def stats(self) -> list[dict]:
        return [r.stats for r in self.results or []]

    @property
    def traces(self) -> list:
        return [r.trace for r in self.results or []]

    @property
    def texts(self) -> list[str]:
        return [r.text for r in self.results or []]


# ---------------------------------------------------------------------------------------------
# What RAIN can and cannot honour

# named arguments of `GenerationMixin.generate` that ask for something RAIN does not do
_ARGUMENTS = {
    "assistant_model": "assistant models (assisted / speculative decoding)",
    "streamer": "streamers (RAIN commits tokens only after each search step)",
    "prefix_allowed_tokens_fn": "prefix_allowed_tokens_fn (constrained decoding)",
    "negative_prompt_ids": "negative prompts (classifier-free guidance)",
    "negative_prompt_attention_mask": "negative prompts (classifier-free guidance)",
    "logits_processor": "custom logits processors",
    "stopping_criteria": "custom stopping criteria",
    "synced_gpus": "synced_gpus (DeepSpeed ZeRO-3 / FSDP generation)",
    "assistant_tokenizer": "assistant models (assisted / speculative decoding)",
}
# model inputs RAIN cannot start from
_INPUTS = {"inputs_embeds": "inputs_embeds (RAIN needs token ids)",
           "past_key_values": "a cache to continue from", "cache": "a cache to continue from"}
# generation-config fields with RAIN's meaning (mapped onto the search)
SAME_MEANING = ("max_new_tokens", "max_length", "eos_token_id", "pad_token_id", "top_k", "temperature")
# fields that do not change what is decoded here
_NO_EFFECT = {"do_sample", "use_cache", "cache_implementation", "cache_config", "compile_config",
              "disable_compile", "low_memory", "bos_token_id", "decoder_start_token_id",
              "return_dict_in_generate", "transformers_version", "_from_model_config", "is_assistant",
              "max_cache_len", "prefill_chunk_size", "continuous_batching_config", "length_penalty",
              "early_stopping"}
# values of the other fields that ask for nothing beyond plain decoding
_NEUTRAL = {"num_beams": 1, "num_return_sequences": 1, "num_beam_groups": 1, "output_scores": False,
            "output_logits": False, "output_attentions": False, "output_hidden_states": False,
            "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "top_p": 1.0,
            "typical_p": 1.0, "min_p": 0.0, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0,
            "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "min_length": 0,
            "min_new_tokens": 0, "renormalize_logits": False, "remove_invalid_values": False,
            "diversity_penalty": 0.0, "guidance_scale": 1.0, "token_healing": False,
            "num_assistant_tokens": None, "penalty_alpha": None}
_GEN_FIELDS = frozenset(GenerationConfig().to_dict()) - {"transformers_version"}


def _is_set(name: str, value) -> bool:
    if value is None:
        return False
    if name == "synced_gpus":
        return bool(value)
    if name in ("logits_processor", "stopping_criteria"):
        return len(value) > 0
    return True


def _problems(arguments: dict, call_fields: dict, generation_config: GenerationConfig | None) -> list[str]:
    """What in one generate() call RAIN cannot honour, in words (empty: nothing)."""
    out = []
    for name, what in _ARGUMENTS.items():
        if _is_set(name, arguments.get(name)) and what not in out:
            out.append(what)
    for name, what in _INPUTS.items():
        if arguments.get(name) is not None and what not in out:
            out.append(what)
    for name, value in sorted(call_fields.items()):
        if name in SAME_MEANING or name in _NO_EFFECT or name not in _GEN_FIELDS:
            continue
        if value is None or (name in _NEUTRAL and value == _NEUTRAL[name]):
            continue
        out.append(f"{name}={value!r}")
    # whatever set them, these change the shape of the batch transformers hands over
    gc = generation_config
    if gc is not None:
        for name in ("num_beams", "num_return_sequences"):
            v = getattr(gc, name, None)
            if v is not None and v > 1 and f"{name}={v!r}" not in out:
                out.append(f"{name}={v!r}")
    return out


def _baseline(model) -> GenerationConfig:
    """The generation config transformers prepares for a call that sets nothing."""
    try:
        return model._prepare_generation_config(None)[0]
    except Exception:  # noqa: BLE001 - a transformers without this helper: the model's own config
        return model.generation_config


def _refuse(problems: list[str]) -> None:
    if problems:
        raise ConfigError(
            "RAIN cannot honour these generate() options: " + "; ".join(problems) + ". Remove them "
            "(one RAIN search per prompt decides the response; its settings go in "
            "rain_config=RainConfig(...), and max_new_tokens, top_k, temperature, eos_token_id, "
            "pad_token_id and seed are honoured).")


def _generate_call() -> dict | None:
    """The arguments of the `GenerationMixin.generate` call that is running us, read from its frame:
    transformers hands a callable neither the streamer, nor the assistant model, nor the caller's
    own processors, so this is the only place they can be checked. None outside a generate call."""
    code = inspect.unwrap(GenerationMixin.generate).__code__
    frame = inspect.currentframe()
    try:
        while frame is not None:
            if frame.f_code is code:
                return dict(frame.f_locals)
            frame = frame.f_back
        return None
    finally:
        del frame


# ---------------------------------------------------------------------------------------------
# The model's wrapper and the query


def language_model(model, tokenizer=None) -> LanguageModel:
    """The raintools `LanguageModel` for a transformers model inside generate(): the one given by
    `tokenizer`, else the one `raintools.wrap` (or `load_model`) made, else one with the tokenizer
    saved next to the model's local files."""
    if tokenizer is not None:
        return wrap(model, tokenizer)
    lm = wrapped(model)
    if lm is not None:
        return lm
    source = getattr(model, "name_or_path", None)
    if source:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):
            tok = None
        if tok is not None:
            return wrap(model, tok)
    raise ModelLoadError(
        "RAIN needs the model's tokenizer and transformers does not pass it to a custom_generate "
        "callable: call raintools.wrap(model, tokenizer) once before model.generate(...), or use "
        "the folder form with tokenizer=tokenizer.")


def _render_around(lm: LanguageModel) -> tuple[str, str, str] | None:
    """(text before the query, the user-turn opener, text after the query) of this model's prompt
    format, found by rendering a placeholder query; None if the format cannot be split."""
    cache = lm.__dict__.setdefault("_query_frame", {})
    if "frame" in cache:
        return cache["frame"]
    mark = "QQQ_RAIN_QUERY_QQQ"
    frame = None
    try:
        text = lm.chat.prompt_text(lm.tokenizer, mark)
    except Exception:  # noqa: BLE001 - a template that rejects the probe: no split
        text = ""
    if text.count(mark) == 1:
        pre, post = text.split(mark)
        hits = [(pre.rfind(m), m) for m in lm.chat.user_markers if m and pre.rfind(m) >= 0]
        if hits:
            at = max(h for h, _ in hits)
            frame = (pre, pre[at:], post)
    cache["frame"] = frame
    return frame


def query_from_ids(lm: LanguageModel, ids) -> str:
    """What RAIN's judge takes as the query of a prompt given as token ids: the last user turn when
    the ids end in the chat template's generation prompt (or, for plain models, the Human:/Assistant:
    frame), else the whole decoded prompt."""
    ids = [int(t) for t in ids]
    frame = _render_around(lm)
    if frame is not None:
        _, opener, post = frame
        text = lm.decode_raw(ids)
        if post and text.endswith(post):
            body = text[: len(text) - len(post)]
            at = body.rfind(opener)
            if at >= 0:
                query = body[at + len(opener):]
                if query.strip():
                    return query
    return lm.decode(ids).strip()


# ---------------------------------------------------------------------------------------------
# The two entries


def rain_decoding(model, input_ids: torch.LongTensor, logits_processor=None, stopping_criteria=None,
                  generation_config: GenerationConfig | None = None, rain_config: RainConfig | None = None,
                  evaluator=None, embedder=None, engine: str = "auto", seed: int | None = None,
                  query: str | list[str] | None = None, progress: bool = False,
                  concurrency: int | None = None, **model_kwargs):
    """RAIN as a transformers decoding method: `model.generate(**inputs,
    custom_generate=raintools.hf.rain_decoding, max_new_tokens=32, rain_config=RainConfig(...))`.
    See the module docstring for the arguments and what is honoured."""
    call = _generate_call()
    gc = generation_config if generation_config is not None else model.generation_config
    if call is not None:
        arguments = dict(call.get("kwargs") or {})
        arguments.update({k: call.get(k) for k in _ARGUMENTS if k in call})
        call_fields = {k: v for k, v in (call.get("kwargs") or {}).items() if k in _GEN_FIELDS}
        has_default_length = bool(call.get("has_default_max_length", False))
    else:
        arguments, call_fields, has_default_length = dict(model_kwargs), {}, False
    arguments.update({k: v for k, v in model_kwargs.items() if k == "inputs_embeds"})
    # fields set by a generation_config passed to this call: where the prepared config differs
    # from what the model's own config and transformers' defaults give
    base = _baseline(model)
    for name in _GEN_FIELDS - {"max_length"}:
        if name not in call_fields and getattr(gc, name, None) != getattr(base, name, None):
            call_fields[name] = getattr(gc, name, None)
    _refuse(_problems(arguments, call_fields, gc))

    if input_ids is None or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise PromptError("RAIN needs input_ids of shape [batch, prompt length] with a prompt.")
    lm = language_model(model)
    cfg = rain_config if rain_config is not None else RainConfig()
    if not isinstance(cfg, RainConfig):
        raise ConfigError(f"rain_config must be a raintools.RainConfig, got {type(cfg).__name__}.")
    changes: dict[str, Any] = {}
    length = input_ids.shape[1]
    # the call's own length (not a model default) overrides rain_config.max_new_tokens
    sets_length = ("max_new_tokens" in call_fields or "max_length" in call_fields
                   or (call is not None and not has_default_length
                       and model.generation_config.max_length is None))
    if sets_length or cfg.max_new_tokens is None:
        new = int(gc.max_length) - length
        if new < 1:
            raise PromptError(f"max_length={gc.max_length} leaves no room after the {length}-token "
                              f"prompt: set max_new_tokens.")
        changes["max_new_tokens"] = new
    if call_fields.get("top_k") is not None:
        k = int(call_fields["top_k"])
        changes["top_k"] = lm.vocab_size if k == 0 else k
    if call_fields.get("temperature") is not None:
        changes["temperature"] = float(call_fields["temperature"])
    if seed is not None:
        changes["seed"] = seed
    if changes:
        cfg = cfg.replace(**changes)
    cfg.validate()
    lm = _with_stops(lm, gc.eos_token_id)
    if isinstance(evaluator, str):
        from .evaluate import self_evaluator

        evaluator = self_evaluator(lm, evaluator, cfg.eval_mode)

    mask = model_kwargs.get("attention_mask")
    rows = []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b]
        if mask is not None:
            ids = ids[mask[b].to(ids.device).bool()]
        rows.append(ids.tolist())
    if query is None:
        queries = [query_from_ids(lm, r) for r in rows]
    elif isinstance(query, str):
        queries = [query] * len(rows)
    else:
        queries = list(query)
        if len(queries) != len(rows) or not all(isinstance(q, str) for q in queries):
            raise PromptError(f"query must be a string or one string per row ({len(rows)} rows).")
    results = rain_generate_batch(lm, queries, cfg, evaluator=evaluator, embedder=embedder,
                                  engine=engine, progress=progress, concurrency=concurrency,
                                  prompt_ids=rows)

    pad = _pad_id(gc, lm)
    width = max(len(r.tokens) for r in results)
    out = torch.full((len(rows), length + width), pad, dtype=input_ids.dtype, device=input_ids.device)
    out[:, :length] = input_ids
    for b, r in enumerate(results):
        if r.tokens:
            out[b, length:length + len(r.tokens)] = torch.tensor(r.tokens, dtype=input_ids.dtype)
    if gc.return_dict_in_generate:
        return RainGenerateOutput(sequences=out, results=results)
    return out


def generate(model, *args, **kwargs):
    """The entry of the `custom_generate/generate.py` folder (`hub/rain`): `model.generate(**inputs,
    custom_generate="hub/rain", trust_remote_code=True, tokenizer=tok, rain_config=...)`. Refuses
    what RAIN cannot honour before anything runs, then lets transformers prepare the inputs and
    the generation config and decode with `rain_decoding`."""
    named = {k: kwargs.get(k) for k in list(_ARGUMENTS) + list(_INPUTS)}
    calls = {k: v for k, v in kwargs.items() if k in _GEN_FIELDS}
    passed = kwargs.get("generation_config")
    if isinstance(passed, GenerationConfig):
        default = GenerationConfig()
        for name in _GEN_FIELDS:
            if name not in calls and getattr(passed, name, None) != getattr(default, name, None):
                calls[name] = getattr(passed, name, None)
    _refuse(_problems(named, calls, None))
    rain_config = kwargs.get("rain_config")
    if ("max_new_tokens" not in calls and "max_length" not in calls
            and getattr(rain_config, "max_new_tokens", None) is not None):
        # the RainConfig's own cap, said to transformers (which would warn about its default)
        kwargs["max_new_tokens"] = rain_config.max_new_tokens
    tokenizer = kwargs.pop("tokenizer", None)
    if tokenizer is not None:
        wrap(model, tokenizer)
    # GenerationMixin.generate itself: `model.generate` may be this very function when the model
    # was loaded from a repository that ships it
    return GenerationMixin.generate(model, *args, custom_generate=rain_decoding, **kwargs)


# ---------------------------------------------------------------------------------------------
# helpers


def _eos_ids(eos) -> list[int]:
    if eos is None:
        return []
    if isinstance(eos, torch.Tensor):
        return [int(x) for x in eos.flatten().tolist()]
    if isinstance(eos, int):
        return [eos]
    return [int(x) for x in eos]


def _with_stops(lm: LanguageModel, eos) -> LanguageModel:
    """`lm`, or a view of it (same model, tokenizer and counters) whose responses also stop at
    the ids in `eos`."""
    extra = set(_eos_ids(eos)) - set(lm.chat.stop_token_ids)
    if not extra:
        return lm
    views = lm.__dict__.setdefault("_stop_views", {})
    key = frozenset(extra)
    if key not in views:
        chat = replace(lm.chat, stop_token_ids=frozenset(lm.chat.stop_token_ids | extra))
        view = LanguageModel(lm.model, lm.tokenizer, name=lm.name, chat=chat, stats=lm.stats)
        view._route = lm.route          # the same model: its route is known (no second self-check)
        views[key] = view
    return views[key]


def _pad_id(gc: GenerationConfig, lm: LanguageModel) -> int:
    for v in (getattr(gc, "_pad_token_tensor", None), gc.pad_token_id):
        if v is not None:
            return int(v.flatten()[0]) if isinstance(v, torch.Tensor) else int(v)
    eos = _eos_ids(gc.eos_token_id)
    if eos:
        return eos[0]
    return int(lm.tokenizer.pad_token_id or 0)
