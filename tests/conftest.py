"""Shared fixtures. The embedded model loads once per test session (seconds once cached)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAINTOOLS_FAST", "1")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def embedded_lm():
    from raintools.models import load_model

    return load_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def minilm():
    from raintools.embed import load_embedder

    return load_embedder()


@pytest.fixture(scope="session")
def llama_lm():
    """A tiny random Llama model with a LLaMA-style SentencePiece tokenizer trained offline
    (`raintools.testing.llama_tokenizer`): word-start markers as the paper's models have."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from raintools.models import LanguageModel
    from raintools.testing import llama_tokenizer

    tok = llama_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    return LanguageModel(LlamaForCausalLM(cfg).eval(), tok, name="tiny-llama-sp")


@pytest.fixture
def tiny_lm():
    from raintools.testing import tiny_model

    return tiny_model(seed=0)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"evaluation data not present ({SHARED_DATA})")
    return SHARED_DATA


@pytest.fixture(scope="session")
def vllm_url(embedded_lm):
    """The URL of one vLLM server (embedded model, loopback) for the whole session, started from
    .venv-vllm (`make setup-vllm`) and stopped at the end. RAINTOOLS_TEST_VLLM_URL reuses a server
    already running (while developing). Without vLLM the tests skip, except in CI (CI set), where
    they fail: CI must run them."""
    url = os.environ.get("RAINTOOLS_TEST_VLLM_URL")
    if url:
        yield url
        return
    from raintools.vllm_server import VllmServer, find_vllm

    python = find_vllm()
    if python is None or not Path(python).exists():
        msg = f"vLLM is not installed (run `make setup-vllm`; RAINTOOLS_VLLM_PYTHON={python})"
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI runs the vLLM tests")
        pytest.skip(msg)
    server = VllmServer(max_logprobs=-1)
    server.start()
    print(f"\nvLLM server {server.url} started in {server.start_seconds:.0f} s")
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_client(vllm_url, embedded_lm):
    from raintools.vllm_engine import VllmClient

    with VllmClient(vllm_url, embedded_lm) as client:
        yield client
