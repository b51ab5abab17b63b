"""What a decoding returns (`RainResult`) and a recorded RAIN search (`Trace`), rich enough to
redraw it: per simulation the selected path, the evaluated text, the value and every node
statistic that changed; per commit the whole live tree. Plain dataclasses with a JSON round-trip
(no torch), so plots and widgets read traces, not the search.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class NodeRecord:
    uid: int
    parent: int | None
    tokens: list[int]
    text: str
    step: int
    p: float = 0.0
    n: float = 0.0
    fn: int = 0
    q: float = 0.0


@dataclass
class SimulationRecord:
    index: int                  # global simulation index (0-based)
    outer_step: int             # which commit this simulation works towards
    root: int                   # uid of the root at that time
    path: list[int]             # selected path, root first
    leaf: int
    completion: str             # clause completion appended before judging
    evaluated_text: str         # the response text that was judged
    value: float
    memo_hit: bool
    expanded: bool              # whether the leaf was expanded
    new_nodes: list[NodeRecord] = field(default_factory=list)
    updates: dict[int, list[float]] = field(default_factory=dict)   # uid -> [n, fn, q, p]
    similarity: list[list[float]] = field(default_factory=list)     # [node uid, sibling uid, weight]
    added: list[int] = field(default_factory=list)                  # uids from node addition
    round: int = -1             # the order in which its walk started (K = 1: its index; with K > 1
                                # walks start while others are in flight, and back up in index order)


@dataclass
class CommitRecord:
    outer_step: int
    simulations: int            # simulations run in this step
    first_simulation: int       # global index of its first simulation
    root: int
    chosen: int
    tokens: list[int]
    text: str
    early_stop: bool
    tree: list[NodeRecord] = field(default_factory=list)   # live tree just before the commit


@dataclass
class Trace:
    prompt: str
    config: dict
    root: NodeRecord | None = None
    simulations: list[SimulationRecord] = field(default_factory=list)
    commits: list[CommitRecord] = field(default_factory=list)

    # -- serialisation
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict())
        if path is not None:
            Path(path).write_text(text, encoding="utf-8")
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "Trace":
        sims = [SimulationRecord(**{**s, "new_nodes": [NodeRecord(**n) for n in s.get("new_nodes", [])],
                                    "updates": {int(k): v for k, v in s.get("updates", {}).items()}})
                for s in d.get("simulations", [])]
        commits = [CommitRecord(**{**c, "tree": [NodeRecord(**n) for n in c.get("tree", [])]})
                   for c in d.get("commits", [])]
        root = NodeRecord(**d["root"]) if d.get("root") else None
        return cls(prompt=d["prompt"], config=d.get("config", {}), root=root,
                   simulations=sims, commits=commits)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "Trace":
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):          # a path, not JSON text
            text = Path(text).read_text(encoding="utf-8")
        return cls.from_dict(json.loads(text))

    # -- replay
    def tree_at(self, sim_index: int) -> dict[int, NodeRecord]:
        """The live tree right after simulation `sim_index` (nodes reachable from its root)."""
        if not self.simulations:
            return {self.root.uid: self.root} if self.root else {}
        sim_index = max(0, min(sim_index, len(self.simulations) - 1))
        nodes: dict[int, NodeRecord] = {}
        if self.root is not None:
            nodes[self.root.uid] = NodeRecord(**asdict(self.root))
        for s in self.simulations[: sim_index + 1]:
            for rec in s.new_nodes:
                nodes[rec.uid] = NodeRecord(**asdict(rec))
            for uid, (n, fn, q, p) in s.updates.items():
                if uid in nodes:
                    nd = nodes[uid]
                    nd.n, nd.fn, nd.q, nd.p = n, int(fn), q, p
        root = self.simulations[sim_index].root
        children: dict[int, list[int]] = {}
        for nd in nodes.values():
            if nd.parent is not None:
                children.setdefault(nd.parent, []).append(nd.uid)
        live, stack = {}, [root]
        while stack:
            u = stack.pop()
            if u in nodes:
                live[u] = nodes[u]
                stack.extend(children.get(u, []))
        live[root].parent = None
        return live


@dataclass
class RainResult:
    """What a decoder returns (RAIN, vanilla, best-of-N): the text, its tokens, the stats and
    the trace of the search."""
    text: str
    prompt: str
    method: str = "rain"
    tokens: list[int] = field(default_factory=list)
    token_sets: list[list[int]] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    trace: Trace | None = None
    config: dict = field(default_factory=dict)
