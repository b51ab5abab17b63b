"""Test helpers, not part of the decoder: tiny random models and tokenizers built offline in
milliseconds, for the tests, the notebooks' fast mode and quick experiments with the search.

`tiny_model()` is a tiny random Llama-style model with a character-level tokenizer;
`char_tokenizer()` maps each printable ASCII character to one token (plus special tokens).
`word_tokenizer()` is a sentencepiece-style (Metaspace, "▁word") tokenizer, so tests can check
that label-token lookups work for tokenizers that glue a space marker to letters, as LLaMA's does.
`llama_tokenizer()` trains a small BPE vocabulary with the pipeline of LLaMA's own (legacy)
tokenizer.json: every string gets a word-start marker "▁" prepended and its spaces become "▁",
then BPE; BOS added. So text tokenised in pieces gets a marker at each piece's start that the
whole string does not have, as with the paper's LLaMA and Vicuna models.
"""

from __future__ import annotations

import string

import torch

from .models import LanguageModel, wrap

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>")


def char_tokenizer(chat: bool = False):
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    chars = [c for c in string.printable if c not in "\x0b\x0c\r"]
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                  eos_token="<|im_end|>" if chat else "</s>", unk_token="<unk>",
                                  additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    if chat:
        tok.chat_template = CHATML
    return tok


def word_tokenizer(words: list[str] | None = None):
    """A word-level tokenizer with a LLaMA-like metaspace marker ("▁A" is one token)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    base = words or ("Answer : ( A B ) harmful harmless the a is response Human Assistant yes no "
                     "Question Options reply . , ? : ; \n").split(" ")
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for w in base + list(string.ascii_letters) + list("():.,?;!"):
        vocab.setdefault("▁" + w, len(vocab))
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
        pre_tokenizers.Split(pattern="(", behavior="isolated"),
        pre_tokenizers.Split(pattern=")", behavior="isolated"),
    ])
    tk.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def llama_tokenizer(texts: list[str] | None = None, vocab_size: int = 600):
    """A LLaMA-style (SentencePiece BPE, legacy normalizer) tokenizer trained in a fraction of a
    second on `texts` (default: the judging templates), no download. Characters outside the
    texts and printable ASCII map to <unk>."""
    from importlib import resources

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        folder = resources.files("raintools.templates")
        texts = [p.read_text("utf-8") for p in folder.iterdir() if p.name.endswith(".txt")]
    tk = Tokenizer(models.BPE(unk_token="<unk>"))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(),
                                    decoders.Strip(content=" ", left=1)])
    alphabet = sorted({c for c in string.printable if c not in "\x0b\x0c\r "} | {"▁"})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=alphabet, show_progress=False)
    # trained on words (as SentencePiece splits at whitespace and we at punctuation too, so that
    # an option letter after "(" stays one token), then applied to whole strings as LLaMA's is
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
        pre_tokenizers.Punctuation(), pre_tokenizers.Split("\n", behavior="isolated")])
    tk.train_from_iterator(texts, trainer=trainer)
    tk.pre_tokenizer = None
    bos = tk.token_to_id("<s>")
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="</s>")


def tiny_model(vocab_size: int = 64, seed: int = 0, chat: bool = False, **config) -> LanguageModel:
    """A tiny random Llama-style model with a character-level tokenizer, built in milliseconds
    from a config (no download). For unit tests and quick experiments with the search."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer(chat=chat)
    cfg = dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
               pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    cfg.update(config)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg)).eval()
    return wrap(model, tok, name=f"tiny-random-{seed}")


def complete(engine, leaf, response: list[int], rng, max_tokens: int, until: str = "clause"):
    """One clause completion of `leaf` alone on `engine`: (tokens drawn, tokens fed)."""
    from .engine import CompletionRequest, Expansion

    req = CompletionRequest(response, rng, max_tokens, until)
    engine.ensure(leaf)
    engine.expand(Expansion(leaf, completion=req))
    return req.out, req.fed
