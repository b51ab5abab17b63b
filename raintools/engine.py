"""The engine interface: everything the search asks of a model, and nothing else.

The search (`raintools.search.RainSearch`) holds the tree and the rules of the paper; an *engine*
holds the model and answers the search's requests about tree nodes, one request (one node, one
leaf's expansion) per call. The search does not know which engine it has: the transformers
engines (`raintools.engines`) and any other backend (e.g. vLLM) implement this one protocol.

Requests are plain data (token ids, keyed uniforms, budgets); the only model state an engine keeps
on the tree is opaque to the search (`Node.kv`: whatever the engine needs to continue from a node;
`Node.logits`: the next-token logits there, a 1-D tensor over the vocabulary, which the search
reads for the 1-token level's top tokens). Every random draw is made from the numbers in a
request, so two engines given the same requests propose the same tokens (up to float ties): that
is what the exactness tests compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # annotations only: the interface imports nothing at run time
    import torch

    from .tree import Node

Forward = Callable[..., tuple["torch.Tensor", Any]]
"""The signature of `LanguageModel.forward`: one forward pass of a transformers model. The
transformers engines take it as an argument, so that a batch of searches can hand each one a
forward that is answered from merged passes (`raintools.batch`)."""


@dataclass
class Candidate:
    """A proposed token set below a node: its tokens, its unnormalised proposal probability
    (`raw_p`; `engines.kept_candidates` and `engines.top_candidates` say how it is made), and
    optionally the engine state after it (`kv`, `logits`), so the new node needs no forward pass
    of its own."""

    tokens: tuple[int, ...]
    raw_p: float
    kv: Any = None
    logits: Any = None


@dataclass
class CompletionRequest:
    """A clause completion of a leaf: sample from the full-vocabulary softmax until the clause
    ends (a last character in ",.?:;\n"; with `until="turn"` only the turn ends it), EOS, a user
    turn or `max_tokens`, with one uniform per step from `rng`. `response` is the response so far
    (committed + the leaf's tokens). Answered in place: `out` (the tokens drawn) and `fed` (tokens
    the model had to compute: every drawn token but the last)."""

    response: list[int]
    rng: np.random.Generator
    max_tokens: int
    until: str = "clause"
    out: list[int] | None = None
    fed: int = 0


@dataclass
class Expansion:
    """What one leaf needs: `length`-token rollouts (0: none; greedy first, then one
    sampled rollout per row of `uniforms` [attempts, length], each step drawn from the top-k
    truncated distribution at the engine's temperature with `pick`), keeping the greedy one and the
    first `keep - 1` distinct samples; and/or a clause completion."""

    node: "Node"
    length: int = 0
    uniforms: np.ndarray | None = None
    keep: int = 0
    completion: CompletionRequest | None = None


@runtime_checkable
class Engine(Protocol):
    """What the search asks of a model (module docstring)."""

    name: str
    """"fast", "reference", ...: recorded in each result's stats (`engine`)."""

    prefix_ids: list[int]
    """The prompt and the committed tokens: the context of the current root."""

    stats: Any
    """Forward passes and tokens computed for this engine's search (the judge's too where it runs
    on the model), so each search reports its own cost even when many share one model: `.calls`,
    `.tokens`, `.snapshot()`, `.since(earlier)` (`models.ForwardStats`)."""

    embed_one_by_one: bool
    """True when the path texts are to be embedded one string per embedder call (the public
    code's execution, kept by the reference engine)."""

    concurrent: bool
    """True when the engine's calls may run from several threads at once (an engine on a server
    that batches the requests it gets): the slots of K > 1 then send their requests side by side.
    False: one call at a time; the slots' forward passes are merged below the engine
    (`raintools.flow`)."""

    def start(self, prompt_ids: list[int]) -> "Node":
        """The root node after the prompt, with its next-token logits."""

    def ensure(self, node: "Node") -> None:
        """Give the node its engine state and next-token logits (`node.logits`), e.g. a node
        added without a rollout; nothing if it has them."""

    def expand(self, request: Expansion) -> list[Candidate]:
        """Answer the request (its node has logits: `ensure`): the kept rollout candidates
        (greedy first; [] for length 0), and its completion filled in."""

    def commit(self, root: "Node", child: "Node") -> None:
        """The search moves its root to `child` (the rewind: every other branch is dropped);
        `prefix_ids` grows by the child's tokens and the engine may merge the child's state into
        the new root's."""

    def judge(self, evaluator: Any) -> Any:
        """The evaluator (`raintools.evaluate.Evaluator`) the search judges with on this engine: the
        one given, or (an engine on a server) a self-evaluator rewired to ask the server for its
        option letters."""
