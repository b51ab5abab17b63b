"""Length in tokens of the judging prompts the benches send, counted with the embedded model's
tokenizer (tokenizer only: the model is loaded on the meta device, no weights, no forward pass).

For each judging template and prompt set the benches use, one row per prompt: the judging prompt
for that prompt with an EMPTY response, in each option order, as the judge feeds it
(`SelfEvaluator.prompt_ids`: BOS + the whole prompt tokenised as one string), and the header's
length. A search's judgements add the response's own tokens on top (at most the answer so far).

- `paper` frame of `bench/rain_speed.py` (its default): `bench/frames/harm_long.txt` on the 8
  bench prompts (HH harmless-base test and AdvBench, alternating; `rain_speed.bench_prompts`);
- `harm` (the package's template, what `bench/vllm_speed.py` judges with) on the same 8 and on
  `bench/vllm_speed.py`'s demo prompts (each distinct one once: it repeats the set for more).

    python bench/judge_prompt_tokens.py      # writes bench/results/judge_prompt_tokens.csv

Seconds on a CPU; not run in CI.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pandas as pd  # noqa: E402

FRAMES = ROOT / "bench" / "frames"


def count(lm, template: str, prompts: list[tuple[str, str]], label: str, prompt_set: str) -> list[dict]:
    """One row per (dataset, prompt): the judging prompt's tokens with an empty response."""
    from raintools.evaluate import SelfEvaluator

    ev = SelfEvaluator(lm, template=template)
    header = len(lm.bos() + lm.encode(ev.template.header))
    rows = []
    for i, (dataset, query) in enumerate(prompts):
        lengths = [len(ids) for ids in ev.prompt_ids(query, "")]
        rows.append(dict(template=label, prompt_set=prompt_set, prompt=i, dataset=dataset,
                         query_tokens=len(lm.encode(query)), header_tokens=header,
                         judge_tokens_min=min(lengths), judge_tokens_max=max(lengths),
                         orders=len(lengths)))
    return rows


def main(argv=None) -> int:
    from rain_speed import DEFAULT_MODEL, bench_prompts

    from raintools import load_model
    from raintools.experiments.demo import demo_prompt_texts

    data = Path(os.environ.get("RAINTOOLS_DATA", "/work/shared/data"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--prompts", type=int, default=8, help="bench prompts (rain_speed's default 8)")
    ap.add_argument("--hh", default=str(data / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"))
    ap.add_argument("--advbench", default=str(data / "advbench" / "harmful_behaviors.csv"))
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "judge_prompt_tokens.csv"))
    args = ap.parse_args(argv)

    lm = load_model(args.model, device="meta")          # tokenizer and config only
    bench = bench_prompts(args, args.prompts)
    demo = [("demo", p) for p in dict.fromkeys(demo_prompt_texts(10 ** 6))]   # every distinct one
    rows = (count(lm, str(FRAMES / "harm_long.txt"), bench, "paper frame (harm_long.txt)", "rain_speed bench")
            + count(lm, "harm", bench, "harm", "rain_speed bench")
            + count(lm, "harm", demo, "harm", "vllm_speed demo"))
    table = pd.DataFrame(rows).assign(model=args.model)
    table.to_csv(args.out, index=False)
    print(table.groupby(["template", "prompt_set"]).agg(
        prompts=("prompt", "size"), header=("header_tokens", "first"),
        judge_min=("judge_tokens_min", "min"), judge_max=("judge_tokens_max", "max")).to_string())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
