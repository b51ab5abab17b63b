"""raintools: RAIN (Rewindable Auto-regressive INference, Li et al., ICLR 2024) for any causal LM.

    import raintools as rt
    lm = rt.load_model()                       # the embedded SmolLM2-135M-Instruct
    print(rt.generate_vanilla(lm, "How do I ...?").text)
    print(rt.rain_generate(lm, "How do I ...?", rt.RainConfig.cpu_demo(max_new_tokens=32)).text)

    lm = rt.wrap(model, tokenizer)             # a transformers model and tokenizer you already loaded
    model.generate(**inputs, custom_generate=rt.hf.rain_decoding, max_new_tokens=32)   # see raintools.hf
"""

from .config import RainConfig
from .errors import (ConfigError, DataError, JudgeError, ModelLoadError, ModelSupportError, PromptError,
                     RainToolsError)
from .evaluate import SelfEvaluator, SimulatedJudge, load_template, option_token_ids, self_evaluator
from .models import DEFAULT_MODEL, ChatFormat, LanguageModel, load_model, wrap
from .testing import tiny_model
from .search import RainResult, RainSearch, rain_generate, rain_generate_batch
from .trace import Trace
from .vanilla import best_of_n, generate_vanilla

__version__ = "0.1.0"

__all__ = [
    "ChatFormat", "ConfigError", "DataError", "DEFAULT_MODEL", "JudgeError", "LanguageModel",
    "ModelLoadError", "ModelSupportError", "PromptError", "RainConfig", "RainResult", "RainSearch",
    "RainToolsError", "SelfEvaluator", "SimulatedJudge", "Trace", "best_of_n", "generate_vanilla",
    "load_model", "load_template", "option_token_ids", "rain_generate", "rain_generate_batch",
    "self_evaluator", "tiny_model", "wrap",
]


def __getattr__(name):
    # `raintools.hf` (model.generate(custom_generate=...)) imports transformers' generation code,
    # which takes seconds: loaded on first use
    if name == "hf":
        import importlib

        return importlib.import_module(".hf", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
