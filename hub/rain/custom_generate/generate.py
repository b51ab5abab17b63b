"""RAIN (Rewindable Auto-regressive INference, Li et al., ICLR 2024) as a transformers custom
generation method. transformers runs this file's `generate(model, *args, **kwargs)` for

    model.generate(**inputs, custom_generate="<this repository or folder>", trust_remote_code=True,
                   tokenizer=tokenizer, max_new_tokens=32, rain_config=RainConfig.hh())

The implementation is the `raintools` package (see requirements.txt and README.md).
"""

from raintools.hf import generate  # noqa: F401  (transformers looks up `generate` in this module)
