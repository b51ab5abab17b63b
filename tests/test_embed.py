"""The sentence embedder loads its embedded folder with local_files_only=True and leaves the
process-wide HF_HUB_OFFLINE alone."""

from __future__ import annotations

import os

import pytest


def test_embedder_loads_locally_without_touching_hf_hub_offline(monkeypatch):
    import sentence_transformers

    from raintools.embed import SentenceEmbedder, minilm_path

    seen = {}

    class Fake:
        def __init__(self, path, **kw):
            seen.update(path=path, kw=kw, offline=os.environ.get("HF_HUB_OFFLINE"))

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", Fake)
    SentenceEmbedder()
    assert seen["path"] == str(minilm_path()) and seen["kw"]["local_files_only"] is True
    assert seen["offline"] is None and "HF_HUB_OFFLINE" not in os.environ
    SentenceEmbedder("some-user/some-model")          # a hub id: the hub may be asked
    assert seen["path"] == "some-user/some-model" and seen["kw"]["local_files_only"] is False
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    SentenceEmbedder()
    assert os.environ["HF_HUB_OFFLINE"] == "0"


@pytest.mark.embedded
def test_embedded_embedder_loads_with_the_hub_allowed(monkeypatch):
    from raintools.embed import SentenceEmbedder

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    emb = SentenceEmbedder()(["hello", "world"])
    assert tuple(emb.shape) == (2, 384) and "HF_HUB_OFFLINE" not in os.environ
