"""The packed self-check's two numbers (`LanguageModel.packed_check`) for every packed family of
`tests/model_families.py` (tiny random models) and the embedded model, in float32 and bfloat16.

One row per model, dtype and check seed: the route, `tree` (the packed tree against a forward from
scratch), `cached` (the model's own cached forward against a forward from scratch), the tolerance
`_detect_route` applies (1e-3 in float32; max(1e-2, 2 x cached) below it) and the tree's share of
it, and two cache-free roundings at the dtype: `longer` (a 40-token line from scratch against the
same 40 tokens inside a 48-token line) and, in bfloat16, `float32` (a line from scratch against the
same weights in float32). All in standard deviations of the logits, largest over positions.

    python bench/self_check.py                   # writes bench/results/self_check.csv
    python bench/self_check.py --skip-embedded   # the tiny families only

Seconds for the tiny families and about a minute for the embedded model on a CPU; not run in CI.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

from _common import git_head, write_csv  # noqa: E402


def dev(x, y) -> float:
    return float((x - y).abs().max() / y.std().clamp_min(1e-6))


def row(lm, family: str, seed: int) -> dict:
    route = lm.route
    lm._route = route                   # the check's forward passes take the packed route's masks
    tree, cached = lm.packed_check(seed)
    exact = lm.dtype == torch.float32
    tol = 1e-3 if exact else max(1e-2, 2 * cached)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, lm.vocab_size, (1, 48), generator=g)
    line = lm.forward(ids, all_logits=True)[0][0]
    longer = dev(lm.forward(ids[:, :40], all_logits=True)[0][0], line[:40])
    f32 = None
    if not exact:
        with torch.no_grad():
            f32 = dev(line, copy.deepcopy(lm.model).float()(input_ids=ids).logits[0].float())
    figures = dict(tree=tree, cached=cached, tol=tol, tree_share=tree / tol, longer=longer, float32=f32)
    return dict(family=family, seed=seed, dtype=str(lm.dtype)[6:], route=route.kind,
                **{k: "" if v is None else f"{v:.3g}" for k, v in figures.items()})  # float32's ~1e-6 kept


def main(argv=None) -> int:
    from model_families import FAMILIES, build, expected_route

    from raintools import load_model
    from raintools.models import LanguageModel

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--skip-embedded", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "self_check.csv"))
    args = ap.parse_args(argv)
    logging.disable(logging.WARNING)
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for name in (n for n in FAMILIES if expected_route(n) == "packed"):
            tiny = build(name)
            rows.append(row(LanguageModel(tiny.model.to(dtype), tiny.tokenizer, name=tiny.name), name, 0))
            print(rows[-1], flush=True)
        for seed in range(0 if args.skip_embedded else 3):
            rows.append(row(load_model("smollm2-135m", device="cpu", dtype=dtype), "embedded", seed))
            print(rows[-1], flush=True)
    meta = dict(device="cpu", host=platform.node(), threads=torch.get_num_threads(),
                load=os.getloadavg()[0], code=git_head())
    write_csv(args.out, meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
