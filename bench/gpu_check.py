"""A device check for one GPU, with nothing to download: sized for under 10 minutes on one
H100/H200-class GPU.

    .venv/bin/python bench/gpu_check.py                      # CUDA: a Llama-2-7B-shaped model
    .venv/bin/python bench/gpu_check.py --device cpu         # CPU: a tiny shape (the test suite)

The model is built from a config with random weights (bfloat16 on CUDA, float32 on CPU): the
Llama-2-7B shape (32 layers, hidden 4096, MLP 11008, 32 heads, 32,000-token vocabulary, fp16/bf16
weights 13.5 GB) or, on CPU, a tiny one. Its tokenizer is the package's offline character
tokenizer padded with filler words to the model's vocabulary. The judge is a clearly labelled
*simulated* judge (a fixed hash of the text decides "good" for about 80% of texts; accuracy 0.9),
so values vary and early stops happen, as with a capable model's own judge; it costs no forward
pass, so the timings are the decoder's own.

What it prints (every figure measured in this run):

1. equivalence: the fast engine's cached logits of every node of a short search against a plain
   full forward pass of the same text (max |difference|, top-1 agreement), and fast vs reference
   engine committing the same tokens over a few steps (on random weights in bf16 near-ties can
   legitimately differ; the logits check is the strict one);
2. parallel simulations: K = 1, 4, 8 on one prompt at the paper's constants (T = 50), wall time,
   sequential forward passes per simulation, ratios against K = 1;
3. many prompts: 1, 8, 64 prompts batched (`rain_generate_batch`), prompts per hour and the
   ratio against one prompt;
4. peak GPU memory of each part.

A time guard skips what would not fit in --budget-s (default 540 s) and says so.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message=r"var\(\): degrees of freedom")

from raintools import RainConfig, RainSearch, SimulatedJudge, rain_generate_batch  # noqa: E402
from raintools.models import LanguageModel, default_device  # noqa: E402

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=400, max_position_embeddings=2048)
TOPICS = ["rivers", "bread", "chess", "comets", "bees", "tides", "maps", "glass", "owls", "clocks",
          "salt", "kites", "moss", "trains", "wool", "caves"]


def padded_tokenizer(vocab_size: int):
    """The offline character tokenizer with filler words up to `vocab_size` tokens (so that every
    id the model can draw decodes to text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from raintools.testing import SPECIALS

    import string
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for c in string.printable:
        if c not in "\x0b\x0c\r":
            vocab.setdefault(c, len(vocab))
    i = 0
    while len(vocab) < vocab_size:
        vocab.setdefault(f" w{i}", len(vocab))
        i += 1
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def build_model(shape: dict, device: str, dtype: torch.dtype, seed: int = 0) -> LanguageModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = padded_tokenizer(shape["vocab_size"])
    cfg = LlamaConfig(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(seed)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    return LanguageModel(model, tok, name=f"random-llama-{shape['num_hidden_layers']}L-{shape['hidden_size']}")


def truth(query: str, response: str) -> bool:
    """The simulated judge's ground truth: a fixed hash of the text, "good" for ~80% of texts."""
    return hashlib.sha256(response.encode()).digest()[0] < 205


class Clock:
    def __init__(self, budget: float):
        self.t0, self.budget = time.perf_counter(), budget

    @property
    def used(self) -> float:
        return time.perf_counter() - self.t0

    def allows(self, estimate: float, what: str) -> bool:
        if self.used + estimate > self.budget:
            print(f"  skipped {what}: about {estimate:.0f} s more would pass the {self.budget:.0f} s budget "
                  f"({self.used:.0f} s used)")
            return False
        return True


def peak(device) -> str:
    if device.type != "cuda":
        return "n/a on CPU"
    return f"{torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB"


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def equivalence(lm, cfg, judge, steps: int) -> dict:
    """Cached logits (after the steps and, K > 1, one more step's simulations in flight) vs a full
    forward pass, and fast vs reference commits of the sequential search (with K > 1 which walk
    starts when depends on an engine's passes)."""
    s = RainSearch(lm, "Tell me about rivers.", cfg, evaluator=judge, embedder=None)
    for _ in range(steps):
        if s.commit_step() is None:
            break
    if cfg.parallel_simulations > 1:
        s.simulate_step(cfg.max_simulations)
    cfg = cfg.replace(parallel_simulations=1)
    diffs, agree, n = [], 0, 0
    for node in s.root.walk():
        if node.logits is None:
            continue
        full = lm.full_logits(s.engine.prefix_ids + node.response_tokens())
        diffs.append(float((node.logits.float() - full.float()).abs().max()))
        agree += int(node.logits.argmax() == full.argmax())
        n += 1
    fast = RainSearch(lm, "Tell me about rivers.", cfg, evaluator=judge, embedder=None, engine="fast")
    ref = RainSearch(lm, "Tell me about rivers.", cfg, evaluator=judge, embedder=None, engine="reference")
    same = 0
    for _ in range(steps):
        a, b = fast.commit_step(), ref.commit_step()
        if a is None or b is None:
            break
        same += int(a.tokens == b.tokens)
    scale = float(full.float().abs().max()) if n else 1.0
    return dict(nodes=n, max_abs_diff=max(diffs) if diffs else 0.0, logit_scale=scale,
                top1_agreement=agree / max(n, 1), steps_same=same, steps=steps)


def one_search(lm, cfg, judge, prompt):
    s0 = lm.stats.snapshot()
    sync(lm.device)
    t0 = time.perf_counter()
    r = RainSearch(lm, prompt, cfg, evaluator=judge, embedder=None).run()
    sync(lm.device)
    wall = time.perf_counter() - t0
    calls = lm.stats.since(s0).calls
    return dict(wall=wall, sims=r.stats["simulations"], passes=calls,
                early=r.stats["early_stops"], commits=r.stats["commits"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default=default_device())
    ap.add_argument("--shape", choices=("llama2-7b", "tiny"), default=None,
                    help="default: llama2-7b on CUDA, tiny on CPU")
    ap.add_argument("--simulations", type=int, default=50, help="T of the parallel-simulation part")
    ap.add_argument("--commits", type=int, default=2)
    ap.add_argument("--ks", default="1,4,8")
    ap.add_argument("--batch-sizes", default="1,8,64")
    ap.add_argument("--batch-simulations", type=int, default=10, help="T of the many-prompt part")
    ap.add_argument("--equivalence-steps", type=int, default=2)
    ap.add_argument("--budget-s", type=float, default=540.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    shape_name = args.shape or ("llama2-7b" if device.type == "cuda" else "tiny")
    shape = LLAMA2_7B if shape_name == "llama2-7b" else TINY
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    clock = Clock(args.budget_s)
    t = time.perf_counter()
    lm = build_model(shape, args.device, dtype, args.seed)
    params = sum(p.numel() for p in lm.model.parameters())
    print(f"model: {lm.name} ({shape_name} shape, {params / 1e9:.2f} B parameters, random weights, "
          f"{str(dtype).replace('torch.', '')}) on {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"built in {time.perf_counter() - t:.1f} s; judge: SIMULATED (hash truth, accuracy 0.9)")
    judge = SimulatedJudge(truth, accuracy=0.9, seed=args.seed)
    base = RainConfig.hh(similarity_update=False, node_addition=False, max_commits=args.commits,
                         clause_max_tokens=16, seed=args.seed, record_trace=False, max_length=1024)

    # 1. equivalence
    reset_peak(device)
    eq = equivalence(lm, base.replace(max_simulations=6, extra_simulations=3, parallel_simulations=4),
                     judge, args.equivalence_steps)
    tol = 0.05 * max(eq["logit_scale"], 1.0) if dtype != torch.float32 else 1e-3
    ok = eq["max_abs_diff"] <= tol
    print(f"\n1. equivalence ({clock.used:.0f} s): {eq['nodes']} cached nodes vs a full forward pass: max "
          f"|logit difference| {eq['max_abs_diff']:.2e} (logit scale {eq['logit_scale']:.2f}, tolerance "
          f"{tol:.1e}): {'OK' if ok else 'FAILED'}; top-1 agreement {eq['top1_agreement']:.3f}; fast and "
          f"reference engines committed the same tokens in {eq['steps_same']}/{eq['steps']} steps; "
          f"peak memory {peak(device)}")

    # 2. parallel simulations
    ks = [int(k) for k in args.ks.split(",")]
    print(f"\n2. parallel simulations, one prompt, T={args.simulations}, {args.commits} commits:")
    print(f"{'K':>3} {'wall s':>8} {'sims':>5} {'passes':>7} {'passes/sim':>10} "
          f"{'early stops':>11} {'speedup':>8} {'peak mem':>10}")
    runs = {}
    for k in ks:
        est = runs[ks[0]]["wall"] * 1.2 if runs else 0.0
        if not clock.allows(est, f"K={k}"):
            continue
        reset_peak(device)
        cfg = base.replace(max_simulations=args.simulations, parallel_simulations=k)
        runs[k] = r = one_search(lm, cfg, judge, "Tell me about rivers.")
        sp = runs[ks[0]]["wall"] / r["wall"] if ks[0] in runs else float("nan")
        print(f"{k:3d} {r['wall']:8.2f} {r['sims']:5d} {r['passes']:7d} "
              f"{r['passes'] / r['sims']:10.2f} {r['early']:11d} {sp:8.2f} {peak(device):>10}", flush=True)

    # 3. many prompts
    sizes = [int(n) for n in args.batch_sizes.split(",")]
    cfg = base.replace(max_simulations=args.batch_simulations, extra_simulations=5)
    print(f"\n3. many prompts at once (rain_generate_batch), T={args.batch_simulations}, {args.commits} commits:")
    print(f"{'prompts':>7} {'wall s':>8} {'prompts/h':>10} {'vs 1 prompt':>11} {'passes':>7} {'peak mem':>10}")
    per_h = {}
    for n in sizes:
        est = n / max(per_h.values()) * 3600 if per_h else 0.0
        if not clock.allows(est, f"{n} prompts"):
            continue
        prompts = [f"Tell me about {TOPICS[i % len(TOPICS)]} ({i})." for i in range(n)]
        reset_peak(device)
        from raintools.batch import ForwardBatcher

        b = ForwardBatcher(lm)
        s0 = lm.stats.snapshot()
        sync(device)
        t0 = time.perf_counter()
        rain_generate_batch(lm, prompts, cfg, evaluator=judge, embedder=None, batcher=b)
        sync(device)
        wall = time.perf_counter() - t0
        per_h[n] = n / wall * 3600
        passes = b.stats.calls if n > 1 else lm.stats.since(s0).calls
        base_h = per_h.get(sizes[0], float("nan"))
        print(f"{n:7d} {wall:8.2f} {per_h[n]:10.0f} {per_h[n] / base_h:11.2f} {passes:7d} {peak(device):>10}",
              flush=True)

    k4 = runs.get(4)
    k1 = runs.get(1)
    print(f"\nsummary: equivalence={'OK' if ok else 'FAILED'} "
          f"speedup_k4={k1['wall'] / k4['wall'] if k1 and k4 else float('nan'):.2f} "
          f"passes_per_sim_k1={k1['passes'] / k1['sims'] if k1 else float('nan'):.2f} "
          f"passes_per_sim_k4={k4['passes'] / k4['sims'] if k4 else float('nan'):.2f} "
          f"batch_ratio_max={max(per_h.values()) / per_h[sizes[0]] if sizes[0] in per_h else float('nan'):.2f} "
          f"total_s={clock.used:.0f}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
