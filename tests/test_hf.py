"""RAIN from transformers itself: `raintools.wrap` and `model.generate(custom_generate=...)`, as a
callable and as the `hub/rain` folder, checked against `rain_generate` token for token."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import GenerationConfig
from transformers.generation.streamers import BaseStreamer

import raintools as rt
from raintools import hf
from raintools.errors import ConfigError, ModelLoadError, PromptError
from raintools.models import LanguageModel, wrapped
from raintools.testing import tiny_model
from test_search import letter_embedder, vowel_judge  # the toy judge and embedder

ROOT = Path(__file__).resolve().parents[1]
FOLDER = str(ROOT / "hub" / "rain")
FORMS = [hf.rain_decoding, FOLDER]
SMALL = rt.RainConfig(max_simulations=6, extra_simulations=3, min_visits=2, clause_max_tokens=4,
                      similarity_update=False, node_addition=False)


def chat_inputs(tok, *messages, **kw):
    convs = [[{"role": "user", "content": m}] for m in messages]
    return tok.apply_chat_template(convs if len(convs) > 1 else convs[0], add_generation_prompt=True,
                                   return_tensors="pt", return_dict=True, padding=len(convs) > 1, **kw)


def run(model, inputs, form, **kw):
    extra = {"trust_remote_code": True} if isinstance(form, str) else {}
    kw.setdefault("evaluator", vowel_judge)
    return model.generate(**inputs, custom_generate=form, **extra, **kw)


@pytest.fixture
def chat_lm():
    return tiny_model(seed=0, chat=True)


# ------------------------------------------------------------------ wrap


def test_wrap_uses_the_loaded_objects_and_is_remembered(chat_lm):
    model, tok = chat_lm.model, chat_lm.tokenizer
    weights = [p.data_ptr() for p in model.parameters()]
    assert wrapped(model) is chat_lm                     # tiny_model (and load_model) go through wrap
    assert rt.wrap(model, tok) is chat_lm                # same pair: same wrapper, counters, caches
    assert [p.data_ptr() for p in model.parameters()] == weights      # nothing copied or reloaded
    other = tiny_model(seed=0, chat=True).tokenizer
    lm2 = rt.wrap(model, other, name="mine")
    assert lm2 is not chat_lm and lm2.model is model and lm2.name == "mine" and wrapped(model) is lm2
    with pytest.raises(ModelLoadError, match="already a raintools LanguageModel"):
        rt.wrap(chat_lm, tok)
    with pytest.raises(ModelLoadError, match="causal LM"):
        rt.wrap(torch.nn.Linear(2, 2), tok)
    with pytest.raises(ModelLoadError, match="tokenizer"):
        rt.wrap(model, "not a tokenizer")


def test_wrap_on_a_model_loaded_with_transformers(tmp_path):
    """A model saved and loaded back with transformers, in bfloat16: the wrapper runs it where it is,
    and generate() finds the tokenizer saved next to the weights without a wrap() call."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = tiny_model(seed=3, chat=True)
    src.model.save_pretrained(tmp_path)
    src.tokenizer.save_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    inputs = chat_inputs(tok, "hi")
    out = model.generate(**inputs, custom_generate=hf.rain_decoding, max_new_tokens=6,
                         rain_config=SMALL, evaluator=vowel_judge)
    lm = wrapped(model)
    assert lm is not None and lm.dtype == torch.bfloat16 and lm.model is model
    ref = rt.rain_generate(lm, "hi", SMALL.replace(max_new_tokens=6), evaluator=vowel_judge)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == ref.tokens


# ------------------------------------------------------------------ generate == rain_generate


@pytest.mark.parametrize("form", FORMS, ids=["callable", "folder"])
def test_generate_equals_rain_generate(chat_lm, form):
    model, tok = chat_lm.model, chat_lm.tokenizer
    ref = rt.rain_generate(chat_lm, "hello there", SMALL.replace(max_new_tokens=12), evaluator=vowel_judge)
    inputs = chat_inputs(tok, "hello there")
    n = inputs["input_ids"].shape[1]
    assert inputs["input_ids"][0].tolist() == chat_lm.prompt_ids("hello there")
    ids = run(model, inputs, form, tokenizer=tok, max_new_tokens=12, rain_config=SMALL)
    assert isinstance(ids, torch.Tensor)
    assert ids[0, :n].tolist() == inputs["input_ids"][0].tolist()
    assert ids[0, n:].tolist() == ref.tokens and ids.shape[1] == n + len(ref.tokens)
    out = run(model, inputs, form, max_new_tokens=12, rain_config=SMALL, return_dict_in_generate=True)
    assert isinstance(out, hf.RainGenerateOutput) and torch.equal(out.sequences, ids)
    res = out.results[0]
    assert res.prompt == "hello there"                   # the query the judge saw
    assert res.token_sets == ref.token_sets and res.text == ref.text == out.texts[0]
    assert out.stats[0]["simulations_per_step"] == ref.stats["simulations_per_step"]
    assert out.stats[0]["forward_calls"] == ref.stats["forward_calls"]
    assert len(out.traces[0].simulations) == sum(ref.stats["simulations_per_step"])
    assert out.scores is None and out["sequences"] is out.sequences


def test_the_folder_form_needs_the_trust_flag_and_loads_offline(chat_lm, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    inputs = chat_inputs(chat_lm.tokenizer, "hi")
    with pytest.raises(ValueError, match="trust_remote_code"):
        chat_lm.model.generate(**inputs, custom_generate=FOLDER, max_new_tokens=4, rain_config=SMALL,
                               evaluator=vowel_judge)
    out = run(chat_lm.model, inputs, FOLDER, max_new_tokens=4, rain_config=SMALL)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    card = (ROOT / "hub" / "rain" / "README.md").read_text()
    assert "custom_generate" in card.split("---")[1]     # the tag the Hub lists these methods by
    assert (ROOT / "hub" / "rain" / "custom_generate" / "requirements.txt").read_text().startswith("raintools")


@pytest.mark.parametrize("form", FORMS, ids=["callable", "folder"])
def test_batched_ids_equal_one_by_one(chat_lm, form):
    model, tok = chat_lm.model, chat_lm.tokenizer
    tok.padding_side = "left"
    prompts = ["hello there", "why?", "tell me a story"]
    cfg = SMALL.replace(max_new_tokens=10)
    singles = [rt.rain_generate(chat_lm, p, cfg, evaluator=vowel_judge, embedder=letter_embedder)
               for p in prompts]
    inputs = chat_inputs(tok, *prompts)
    assert (inputs["attention_mask"] == 0).any()         # really padded, on the left
    out = run(model, inputs, form, max_new_tokens=10, rain_config=SMALL.replace(similarity_update=True),
              embedder=letter_embedder, return_dict_in_generate=True)
    singles_sim = [rt.rain_generate(chat_lm, p, cfg.replace(similarity_update=True), evaluator=vowel_judge,
                                    embedder=letter_embedder) for p in prompts]
    n = inputs["input_ids"].shape[1]
    width = max(len(r.tokens) for r in singles_sim)
    assert out.sequences.shape == (3, n + width)
    for b, (ref, res) in enumerate(zip(singles_sim, out.results)):
        assert res.prompt == prompts[b] and res.token_sets == ref.token_sets
        row = out.sequences[b].tolist()
        assert row[:n] == inputs["input_ids"][b].tolist()
        assert row[n:] == ref.tokens + [tok.pad_token_id] * (width - len(ref.tokens))
    # and each row alone through generate gives the same tokens
    one = run(model, chat_inputs(tok, prompts[1]), form, max_new_tokens=10,
              rain_config=SMALL.replace(similarity_update=True), embedder=letter_embedder)
    assert one[0, -len(singles_sim[1].tokens):].tolist() == singles_sim[1].tokens
    assert singles[0].tokens     # the plain config ran too (no similarity update)


# ------------------------------------------------------------------ generation-config fields


def test_fields_with_the_same_meaning_are_honoured(chat_lm):
    model, tok = chat_lm.model, chat_lm.tokenizer
    inputs = chat_inputs(tok, "hello there")
    n = inputs["input_ids"].shape[1]

    def tokens(**kw):
        kw.setdefault("rain_config", SMALL)
        return run(model, inputs, hf.rain_decoding, **kw)[0, n:].tolist()

    def ref(**kw):
        return rt.rain_generate(chat_lm, "hello there", SMALL.replace(**kw), evaluator=vowel_judge).tokens

    assert tokens(max_new_tokens=9, top_k=3, temperature=0.7, seed=5) == ref(max_new_tokens=9, top_k=3,
                                                                             temperature=0.7, seed=5)
    # a generation_config object counts as the call's own
    gc = GenerationConfig(max_new_tokens=7, top_k=4)
    assert tokens(generation_config=gc) == ref(max_new_tokens=7, top_k=4)
    # max_length counts the prompt, as in transformers
    assert tokens(max_length=n + 5) == ref(max_new_tokens=5)
    # no length in the call: the RainConfig's own cap
    assert tokens(rain_config=SMALL.replace(max_new_tokens=6)) == ref(max_new_tokens=6)
    # top_k=0 means no truncation
    assert tokens(max_new_tokens=6, top_k=0) == ref(max_new_tokens=6, top_k=chat_lm.vocab_size)
    # extra eos ids stop a response (on top of the model's own stop tokens): the same search as a
    # wrapper with those stop tokens
    for stop in tokens(max_new_tokens=12)[:4]:
        cut = tokens(max_new_tokens=12, eos_token_id=[tok.eos_token_id, stop])
        view = LanguageModel(model, tok, chat=replace(chat_lm.chat,
                                                      stop_token_ids=frozenset({tok.eos_token_id, stop})))
        assert cut == rt.rain_generate(view, "hello there", SMALL.replace(max_new_tokens=12),
                                       evaluator=vowel_judge).tokens
        assert stop not in cut[:-1]
    assert chat_lm.chat.stop_token_ids == frozenset({tok.eos_token_id})     # the wrapper is unchanged


def test_the_models_own_sampling_defaults_do_not_get_in_the_way(chat_lm):
    """Sampling defaults in the model's generation_config (top_p, do_sample, ...) belong to ordinary
    decoding: RAIN does not refuse or use them."""
    model, tok = chat_lm.model, chat_lm.tokenizer
    model.generation_config.do_sample = True
    model.generation_config.top_p = 0.9
    model.generation_config.repetition_penalty = 1.3
    inputs = chat_inputs(tok, "hello there")
    out = run(model, inputs, hf.rain_decoding, max_new_tokens=6, rain_config=SMALL)
    ref = rt.rain_generate(chat_lm, "hello there", SMALL.replace(max_new_tokens=6), evaluator=vowel_judge)
    assert out[0, inputs["input_ids"].shape[1]:].tolist() == ref.tokens


class Recorder(BaseStreamer):
    def __init__(self):
        self.calls = 0

    def put(self, value):
        self.calls += 1

    def end(self):
        self.calls += 1


@pytest.mark.parametrize("form", FORMS, ids=["callable", "folder"])
@pytest.mark.parametrize("options, named", [
    (dict(num_beams=4), ["num_beams=4"]),
    (dict(num_return_sequences=2, do_sample=True), ["num_return_sequences=2"]),
    (dict(top_p=0.9, repetition_penalty=1.2), ["top_p=0.9", "repetition_penalty=1.2"]),
    (dict(min_new_tokens=3), ["min_new_tokens=3"]),
    (dict(stop_strings=["x"], max_time=5.0), ["stop_strings", "max_time=5.0"]),
    (dict(output_scores=True), ["output_scores=True"]),
    (dict(streamer="recorder"), ["streamers"]),
    (dict(assistant_model="self"), ["assistant models"]),
    (dict(prefix_allowed_tokens_fn=lambda b, ids: [5]), ["constrained decoding"]),
    (dict(generation_config=GenerationConfig(num_beams=2, no_repeat_ngram_size=3)),
     ["num_beams=2", "no_repeat_ngram_size=3"]),
])
def test_options_rain_cannot_honour_raise_one_clear_error(chat_lm, form, options, named):
    model, tok = chat_lm.model, chat_lm.tokenizer
    if options.get("streamer") == "recorder":
        options = dict(streamer=Recorder())
    if "stop_strings" in options and not isinstance(form, str):
        pytest.skip("transformers itself refuses stop strings before calling a callable (it does "
                    "not hand the tokenizer on)")
    if options.get("assistant_model") == "self":
        options = dict(assistant_model=tiny_model(seed=1, chat=True).model)
    inputs = chat_inputs(tok, "hello there")
    calls0 = chat_lm.stats.calls
    with pytest.raises(ConfigError, match="RAIN cannot honour these generate\\(\\) options") as err:
        run(model, inputs, form, tokenizer=tok, max_new_tokens=6, rain_config=SMALL, **options)
    for word in named:
        assert word in str(err.value)
    assert chat_lm.stats.calls == calls0             # refused before any forward pass


def test_bad_rain_arguments(chat_lm):
    model, tok = chat_lm.model, chat_lm.tokenizer
    inputs = chat_inputs(tok, "hello there")
    with pytest.raises(ConfigError, match="rain_config must be a raintools.RainConfig"):
        run(model, inputs, hf.rain_decoding, max_new_tokens=6, rain_config={"c": 2})
    with pytest.raises(ConfigError, match="top_k"):
        run(model, inputs, hf.rain_decoding, max_new_tokens=6, rain_config=SMALL, top_k=-2)
    with pytest.raises(PromptError, match="one string per row"):
        run(model, inputs, hf.rain_decoding, max_new_tokens=6, rain_config=SMALL, query=["a", "b"])
    bare = tiny_model(seed=0, chat=True).model
    bare.__dict__.pop("_raintools_lm")
    with pytest.raises(ModelLoadError, match="raintools.wrap"):
        run(bare, inputs, hf.rain_decoding, max_new_tokens=6, rain_config=SMALL)


# ------------------------------------------------------------------ the query of raw ids


def test_the_query_of_raw_ids(chat_lm):
    tok = chat_lm.tokenizer
    # chat-formatted: the user's message, also in a longer conversation (its last user turn)
    assert hf.query_from_ids(chat_lm, chat_lm.prompt_ids("What is 2+2?")) == "What is 2+2?"
    conv = [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "second one"}]
    ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_dict=False)
    assert hf.query_from_ids(chat_lm, ids) == "second one"
    # not chat-formatted: the whole prompt
    plain = tok("The sky is", add_special_tokens=False)["input_ids"]
    assert hf.query_from_ids(chat_lm, plain) == "The sky is"
    no_prompt = tok.apply_chat_template(conv, add_generation_prompt=False, return_dict=False)
    assert hf.query_from_ids(chat_lm, no_prompt) == chat_lm.decode(no_prompt).strip()
    # a base model (no chat template): its Human:/Assistant: frame, else the whole prompt
    base = tiny_model(seed=0)
    assert base.chat.kind == "plain"
    assert hf.query_from_ids(base, base.prompt_ids("How are you?")) == "How are you?"
    assert hf.query_from_ids(base, base.encode("Once upon a time")) == "Once upon a time"


def test_raw_ids_run_as_given_with_that_query(chat_lm):
    """Plain text ids are the model's input as they are (no template added); the judge sees the
    whole prompt as the query; `query=` overrides it."""
    tok, model = chat_lm.tokenizer, chat_lm.model
    seen = []

    def judge(query, response):
        seen.append(query)
        return vowel_judge(query, response)

    inputs = tok(["The sky is"], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    out = model.generate(**inputs, custom_generate=hf.rain_decoding, max_new_tokens=8, rain_config=SMALL,
                         evaluator=judge, return_dict_in_generate=True)
    assert set(seen) == {"The sky is"}
    ref = rt.rain_generate(chat_lm, "The sky is", SMALL.replace(max_new_tokens=8), evaluator=vowel_judge,
                           prompt_ids=ids)
    assert out.results[0].tokens == ref.tokens
    assert out.sequences[0, :len(ids)].tolist() == ids
    seen.clear()
    model.generate(**inputs, custom_generate=hf.rain_decoding, max_new_tokens=4, rain_config=SMALL,
                   evaluator=judge, query="Describe the sky.")
    assert set(seen) == {"Describe the sky."}


def test_prompt_ids_are_checked(chat_lm):
    with pytest.raises(PromptError, match="empty"):
        rt.rain_generate(chat_lm, "q", SMALL, evaluator=vowel_judge, prompt_ids=[])
    with pytest.raises(PromptError, match="outside the vocabulary"):
        rt.rain_generate(chat_lm, "q", SMALL, evaluator=vowel_judge, prompt_ids=[1, 10**6])
    with pytest.raises(PromptError, match="exceeds the model's context"):
        rt.rain_generate(chat_lm, "q", SMALL.replace(max_new_tokens=8), evaluator=vowel_judge,
                         prompt_ids=[7] * chat_lm.max_context)
    with pytest.raises(PromptError, match="rows for"):
        rt.rain_generate_batch(chat_lm, ["a", "b"], SMALL, evaluator=vowel_judge, prompt_ids=[[5]])


# ------------------------------------------------------------------ the embedded model


@pytest.mark.embedded
def test_embedded_model_loaded_with_transformers(minilm):
    """SmolLM2-135M-Instruct loaded with plain transformers: generate(custom_generate=...) equals
    rain_generate (self-evaluation and MiniLM included), one prompt and a left-padded batch."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = rt.models.embedded_model_folder()
    tok = AutoTokenizer.from_pretrained(folder, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(folder)
    cfg = rt.RainConfig.cpu_demo(max_new_tokens=8, max_commits=2)
    prompts = ["How do I bake bread?", "Name a colour."]
    inputs = chat_inputs(tok, *prompts)
    out = model.generate(**inputs, custom_generate=hf.rain_decoding, max_new_tokens=8, rain_config=cfg,
                         embedder=minilm, return_dict_in_generate=True)
    lm = wrapped(model)                        # found the tokenizer next to the weights
    assert lm is not None and lm.tokenizer.name_or_path == tok.name_or_path
    n = inputs["input_ids"].shape[1]
    for b, p in enumerate(prompts):
        ref = rt.rain_generate(lm, p, cfg, embedder=minilm)
        assert out.results[b].prompt == p
        assert out.results[b].token_sets == ref.token_sets
        assert out.sequences[b, n:n + len(ref.tokens)].tolist() == ref.tokens


@pytest.mark.embedded
def test_readme_from_transformers_example_runs_offline():
    """The README's "From transformers" example, as written, from the repository root."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## From transformers", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1800)   # a guard against a hang, not a time limit:
    # ~1.5 min on an idle 2-core CPU, over 10 min when other jobs share it
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip()
