"""One exception family, so callers (and the CLI) can tell our clear errors from bugs."""


class RainToolsError(Exception):
    """Base class: a problem with the user's input or environment, with the fix in its message."""


class ConfigError(RainToolsError, ValueError):
    """An invalid hyperparameter or option."""


class ModelSupportError(ConfigError):
    """An option that this model family cannot serve exactly (the message says why and what to use)."""


class PromptError(RainToolsError, ValueError):
    """An empty prompt or one that does not fit in the model's context."""


class ModelLoadError(RainToolsError, OSError):
    """An unknown model name, a missing embedded wheel, or weights that cannot be read."""


class DataError(RainToolsError, ValueError):
    """A malformed data file (the message names the file and line)."""


class JudgeError(RainToolsError, RuntimeError):
    """A judge that cannot be reached or answers something unusable."""


class ServerError(RainToolsError, RuntimeError):
    """A model server (vLLM) that cannot be reached, serves another model, or fails a request."""
