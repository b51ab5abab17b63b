"""The evaluation runner: decode a data set with several methods, judge the answers, summarise.

    python -m raintools eval --data prompts.csv --column prompt --limit 50 \\
        --methods vanilla,rain,bon --judge refusal,llm --out runs/hh

or from Python: `run_eval(data, methods=("vanilla", "rain"), judges=("refusal",), out=...)`.

Files in the output folder:

- `results.jsonl`: one line per (prompt, method): `id`, `index` (row position), `method`,
  `prompt`, `response`, `verdicts` (judge name -> the judge's verdict), `metrics` (the verdicts'
  boolean and score keys merged: the first judge on the command line that gives a key wins),
  `stats` (tokens, forward calls, tokens computed, simulations, wall time ...), `time_s`
  (generation) and `judge_time_s`. Appended and flushed (fsync) line by line.
- `generated/rank<r>-of-<N>.jsonl`: each response as soon as it is generated, before any judge
  sees it, so that a judge failure loses nothing: the next run judges these again instead of
  generating them again. Removed when every response in it has its line in `results.jsonl`.
- `summary.csv`: one row per method (`raintools.experiments.stats.summarize`): the rate of each boolean
  metric with a bootstrap 95% interval, the win rate over vanilla on the primary metric, mean
  time / forward calls / tokens computed and their ratios to vanilla.
- `run.json`: the configuration (data, task, methods, judges, model, dtype, seed, decoding
  settings) and, for the record, device and package versions.

**Resume.** Running the same command again skips every (id, method) already in the results, so
nothing is duplicated; an interruption (Ctrl-C, kill, a crash) loses at most the answer in
flight, and a last line cut off mid-write is dropped and repaired. A remote LLM judge
(`--judge-url`) is asked once before anything is generated (`LLMJudge.check`), so an unreachable or
refusing judge fails the run at once; one that fails later leaves every response generated so far in
`generated/`, and the resumed run only judges them. A run whose configuration
differs from `run.json` (or whose data changed under the same ids) is refused with a message;
`--limit` may grow (a longer run extends a shorter one).

**On a vLLM server** (`--engine vllm`, `MethodConfig(engine="vllm")`): the RAIN answers of
several prompts are searched at once (`--concurrency`, default 8: one thread per search in flight,
their requests batched by the server), while the main thread judges and writes the answers in
data order, so the files are the ones a one-at-a-time run writes. Each answer goes to
`generated/` the moment its search ends. The searches run on `raintools.batch.side_by_side`, the
decoder's own path for a batch: the first error (of a search, a judge, the server) or Ctrl-C stops
the run: no search starts after it, the running ones end at their next request to the server
(they send through the run's own view of the server's client, `VllmClient.stopping`: nothing else
using that client is stopped), and that error is raised once. A server that fails mid-run (killed, crashed) stops the run with
one `ServerError` naming the problem; every answer finished before it is kept, and the same
command, once the server is back, resumes with the rest.

**Scale.** Under `torchrun --nproc_per_node N -m raintools eval ...` (or `accelerate launch`)
every rank takes the items `i % world == rank`, loads the model on its own GPU (`cuda:LOCAL_RANK`)
and appends to `parts/rank<r>-of-<N>.jsonl`; after a barrier, rank 0 merges all parts into one
`results.jsonl` (in data order, the same lines a one-process run writes) and one summary. Every
draw is keyed by the seed, so the merged results equal a one-process run's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Sequence

from .records import append_jsonl, read_jsonl
from ..errors import ConfigError, DataError, PromptError, RainToolsError
from .methods import (METHODS, VARIANTS, MethodConfig, get_method, parse_methods, split_names,
                      task_evaluator)

RESULTS = "results.jsonl"
GENERATED = "generated"    # folder: responses generated and not yet judged (one file per rank)
SUMMARY = "summary.csv"
RUN_JSON = "run.json"
PARTS = "parts"
TINY = "tiny"          # --model tiny: a tiny random model (tests, smoke runs); no download
# run.json keys that must match for a run to resume (everything else is recorded for information)
IDENTITY = ("task", "column", "methods", "variants", "judges", "judge_backend", "model", "dtype",
            "seed", "method_config")
VERSION_PACKAGES = ("raintools", "torch", "transformers", "accelerate", "sentence-transformers",
                    "numpy", "pandas")


# --------------------------------------------------------------------------------------------
# Pieces


def load_lm(model: str, device: str | None = None, dtype=None):
    """`raintools.load_model`, plus the alias `tiny` (a tiny random model with a character
    tokenizer and a long context, built in milliseconds: for tests and smoke runs)."""
    if model == TINY:
        from ..models import default_device
        from ..testing import tiny_model

        lm = tiny_model(seed=0, max_position_embeddings=16384)
        lm.name = TINY
        lm.model.to(device or default_device())
        if dtype is not None:
            from ..models import resolve_dtype
            lm.model.to(resolve_dtype(dtype, str(lm.device)))
        return lm
    from ..models import load_model

    return load_model(model, device=device, dtype=dtype)


def build_judges(names: Sequence[str], task, items, lm=None, judge_url: str | None = None,
                 judge_model: str | None = None, prebuilt: dict | None = None) -> dict:
    """{name: Judge}. `llm` is an OpenAI-compatible endpoint when `judge_url` (or
    RAINTOOLS_JUDGE_URL) is set, with `judge_model` its model name; otherwise the local
    constrained judge on `judge_model` (a model to load) or on `lm`, the model being evaluated.
    Other names go through the task (`task.make_judges`, which registers TruthfulQA references)
    or `raintools.experiments.judges.get_judge`."""
    from .judges import LLMJudge, get_judge

    judges = dict(prebuilt or {})
    rest = [n for n in names if n != "llm"]
    if rest:
        make = getattr(task, "make_judges", None)
        if make is not None:
            judges.update(make(items, names=rest))
        else:
            judges.update({n: get_judge(n) for n in rest})
    if "llm" in names and "llm" not in judges:
        url = judge_url or os.environ.get("RAINTOOLS_JUDGE_URL")
        if url:
            judges["llm"] = LLMJudge(url=url, model=judge_model)
        else:
            local = load_lm(judge_model) if judge_model else lm
            judges["llm"] = LLMJudge(local)
    return {n: judges[n] for n in names}


def remote_judge(names: Sequence[str], judge_url: str | None, judge_model: str | None):
    """The endpoint `LLMJudge` when `llm` is among the judges and a judge URL is set (argument or
    RAINTOOLS_JUDGE_URL), after one request that shows it answers (`LLMJudge.check`); else None.
    Called before any model loads or any response is generated."""
    url = judge_url or os.environ.get("RAINTOOLS_JUDGE_URL")
    if "llm" not in names or not url:
        return None
    from .judges import LLMJudge

    judge = LLMJudge(url=url, model=judge_model)
    judge.check()
    return judge


def judge_backend(names: Sequence[str], judge_url: str | None, judge_model: str | None) -> dict | None:
    """What decides the LLM judge's verdicts (part of the run's identity)."""
    if "llm" not in names:
        return None
    url = judge_url or os.environ.get("RAINTOOLS_JUDGE_URL")
    if url:
        return {"url": url, "model": judge_model or os.environ.get("RAINTOOLS_JUDGE_MODEL") or "default"}
    return {"local": judge_model or "the evaluated model"}


def merge_verdicts(verdicts: dict) -> dict:
    """Boolean and numeric keys of several judges' verdicts in one dict; the first judge (in the
    given order) with a non-None value for a key wins. Text fields stay in `verdicts` only."""
    merged: dict = {}
    for v in verdicts.values():
        for k, x in v.items():
            if k in merged or x is None:
                continue
            if isinstance(x, bool) or (isinstance(x, (int, float)) and math.isfinite(x)):
                merged[k] = x
    return merged


def without_timing(rec: dict) -> dict:
    """A result line without its wall-clock fields (`time_s`, `judge_time_s`, and every `*_s`
    entry of `stats`): what two runs of the same configuration share exactly."""
    r = {k: v for k, v in rec.items() if k not in ("time_s", "judge_time_s")}
    r["stats"] = {k: v for k, v in (rec.get("stats") or {}).items() if not k.endswith("_s")}
    return r


def _small_meta(meta: dict) -> dict:
    """Short scalar fields of an item's meta (labels, categories), kept in each result line."""
    out = {}
    for k, v in (meta or {}).items():
        if isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 200):
            out[k] = v
    return out


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# --------------------------------------------------------------------------------------------
# JSONL reading that never modifies a file another process may be writing


def read_records(path: Path, repair: bool = False) -> list[dict]:
    """Records of a results file. `repair=True` (only for a file this process appends to)
    drops a last line cut off mid-write from the file; otherwise such a line is just skipped."""
    return read_jsonl(path, repair=repair)


def _all_records(out: Path, own: Path | None) -> list[dict]:
    """Every finished record in `out`: results.jsonl and all part files (own part repaired)."""
    files = [out / RESULTS] + sorted((out / PARTS).glob("*.jsonl"))
    recs = []
    for f in files:
        recs.extend(read_records(f, repair=(own is not None and f == own)))
    return recs


def _dedupe(records: list[dict]) -> dict[tuple, dict]:
    seen: dict[tuple, dict] = {}
    for r in records:
        key = (r.get("id"), r.get("method"))
        if None not in key and key not in seen:
            seen[key] = r
    return seen


# --------------------------------------------------------------------------------------------
# Distributed context


@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False

    def barrier(self) -> None:
        import torch.distributed as dist

        if self.world > 1 and dist.is_available() and dist.is_initialized():
            dist.barrier()

    def close(self) -> None:
        if self.created:
            import torch.distributed as dist
            dist.destroy_process_group()
            self.created = False


def dist_context(timeout_hours: float = 48.0) -> DistContext:
    """The rank and world size of a torchrun / accelerate launch (env:// rendezvous), or of a
    process group already initialised by the caller; a single process otherwise. The group uses
    gloo (it only carries barriers), whatever the devices."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(),
                           int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return DistContext()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", rank))
    dist.init_process_group("gloo", timeout=timedelta(hours=timeout_hours))
    return DistContext(rank, world, local, created=True)


def _rank_device(device: str | None, ctx: DistContext) -> str | None:
    """One GPU per rank: 'cuda' (or nothing, on a CUDA machine) becomes cuda:LOCAL_RANK."""
    if ctx.world == 1:
        return device
    import torch

    if device in (None, "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank % torch.cuda.device_count()}"
    if device in (None, "cpu"):
        # ranks share the CPU: one thread each unless more cores are free
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world))
        return "cpu"
    return device


# --------------------------------------------------------------------------------------------
# The run


@dataclass
class EvalRun:
    """What `run_eval` returns: the output folder, the records of this run's items, the summary
    table (a DataFrame; None on ranks other than 0) and how many answers were computed now."""

    out: Path
    records: list[dict]
    summary: object
    computed: int
    skipped: int
    config: dict = field(default_factory=dict)

    @property
    def results_path(self) -> Path:
        return self.out / RESULTS

    @property
    def summary_path(self) -> Path:
        return self.out / SUMMARY


def _check_resume(out: Path, identity: dict) -> dict | None:
    path = out / RUN_JSON
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
        old = recorded["config"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path} is unreadable; delete it (or the whole folder) to start over.") from None
    diffs = []
    for k in IDENTITY:
        a, b = old.get(k), identity.get(k)
        if json.dumps(a, sort_keys=True) != json.dumps(b, sort_keys=True):
            if isinstance(a, dict) and isinstance(b, dict):
                keys = sorted(set(a) | set(b))
                sub = [f"{k}.{s}: {json.dumps(a.get(s))} -> {json.dumps(b.get(s))}" for s in keys
                       if json.dumps(a.get(s), sort_keys=True) != json.dumps(b.get(s), sort_keys=True)]
                diffs.extend(sub)
            else:
                diffs.append(f"{k}: {json.dumps(a)} -> {json.dumps(b)}")
    if diffs:
        shown = "; ".join(diffs[:6]) + (f"; and {len(diffs) - 6} more" if len(diffs) > 6 else "")
        raise ConfigError(
            f"{out} holds a run with a different configuration ({shown}). Resuming would mix "
            f"results: use another --out folder, or delete {out} to start over.")
    return recorded


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _sort_key(index: dict, methods: list[str]):
    order = {m: i for i, m in enumerate(methods)}

    def key(r):
        return (index.get(r["id"], math.inf), order.get(r["method"], len(order)), r["method"], r["id"])
    return key


def _write_results(out: Path, records: list[dict]) -> None:
    tmp = out / (RESULTS + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out / RESULTS)


def write_summary(out: Path, records: list[dict], methods: Sequence[str], n_boot: int = 2000,
                  seed: int = 0):
    """Write `summary.csv` from records (error records left out); returns the DataFrame."""
    from .stats import summarize

    ok = [r for r in records if not r.get("error")]
    df = summarize(ok, methods=[m for m in methods if any(r["method"] == m for r in ok)],
                   n_boot=n_boot, seed=seed)
    errors = {m: sum(1 for r in records if r["method"] == m and r.get("error")) for m in methods}
    if len(df):
        df.insert(2, "errors", [errors.get(m, 0) for m in df["method"]])
    tmp = out / (SUMMARY + ".tmp")
    df.to_csv(tmp, index=False)
    os.replace(tmp, out / SUMMARY)
    return df


def run_eval(data, methods: Sequence[str] | str = ("vanilla", "rain"),
             judges: Sequence[str] | str | None = None, out="runs/eval", *, task: str = "harmless",
             column: str | None = None, limit: int | None = None, model: str | None = None,
             device: str | None = None, dtype: str | None = None, seed: int = 0,
             method_config: MethodConfig | None = None, lm=None, judge_url: str | None = None,
             judge_model: str | None = None, progress: bool = True, n_boot: int = 2000,
             argv: Sequence[str] | None = None, concurrency: int | None = None) -> EvalRun:
    """Run (or resume) an evaluation; see the module docstring for the files written.

    `data`: a file path or a short data set name (`raintools.experiments.data.load_dataset`), read through
    the task's loader; `column` picks the prompt column of a table. `methods`: names registered
    in `raintools.experiments.methods`. `judges`: judge names (default: the task's). `lm`: an already loaded
    model (then `model` only names it in run.json). `method_config`: the decoding settings
    (default: `MethodConfig` with the task's RAIN preset, on a CPU with the CPU budget:
    `default_method_config`). `concurrency`: RAIN searches in flight at once when RAIN's engine
    is a vLLM server (default `SERVER_CONCURRENCY`; 1 answers one prompt at a time); ignored for
    the in-process engines. Returns an `EvalRun`."""
    from ..models import DEFAULT_MODEL
    from .tasks import get_task

    t_start = time.perf_counter()
    task_obj = get_task(task)
    methods = parse_methods(methods)
    judges = split_names(judges if judges is not None else task_obj.judges, "judge")
    if not judges:
        raise ConfigError("Give at least one judge (e.g. --judge refusal).")
    _check_judge_names(judges)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed must be an integer, got {seed!r}.")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int)
                                    or concurrency < 1):
        raise ConfigError(f"concurrency must be a positive integer, got {concurrency!r}.")
    items = task_obj.load(data, column=column, limit=limit)
    if not items:
        raise DataError(f"{data}: no prompts to evaluate.")
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:3]
        raise DataError(f"{data}: duplicate item ids {dup}; results are matched by id.")
    model_name = (getattr(lm, "name", None) if lm is not None and model is None else model) or DEFAULT_MODEL
    ctx = dist_context()
    try:
        return _run(ctx, data, items, task_obj, methods, judges, Path(out), column, limit,
                    model_name, device, dtype, seed, method_config, lm, judge_url, judge_model,
                    progress, n_boot, argv, t_start, concurrency)
    finally:
        ctx.close()


def _check_judge_names(names: Sequence[str]) -> None:
    """Unknown judge names fail here, before any model loads (the constructors are cheap)."""
    from .judges import get_judge

    for n in names:
        if n != "llm":
            get_judge(n)


def _run(ctx, data, items, task_obj, methods, judges, out, column, limit, model_name, device,
         dtype, seed, method_config, lm, judge_url, judge_model, progress, n_boot, argv, t_start,
         concurrency=None):
    device = _rank_device(device, ctx)
    remote = remote_judge(judges, judge_url, judge_model)   # fails here, before any model loads
    if method_config is None:   # the defaults depend on the device: load the model first
        lm = lm or load_lm(model_name, device=device, dtype=dtype)
        method_config = default_method_config(task_obj, lm)
    identity = {
        "task": task_obj.name, "column": column, "methods": methods,
        "variants": {m: VARIANTS[m] for m in methods if m in VARIANTS}, "judges": judges,
        "judge_backend": judge_backend(judges, judge_url, judge_model), "model": model_name,
        "dtype": dtype, "seed": seed, "method_config": method_config.to_dict(),
    }
    recorded = _check_resume(out, identity)
    if lm is None:
        lm = load_lm(model_name, device=device, dtype=dtype)
    out.mkdir(parents=True, exist_ok=True)
    if ctx.rank == 0 and recorded is None:
        _write_json(out / RUN_JSON, {
            "config": identity,
            "info": {"data": str(data), "limit": limit, "items": len(items),
                     "device": str(lm.device), "model_dtype": str(lm.dtype),
                     "world_size": ctx.world, "versions": package_versions(),
                     "argv": list(argv) if argv is not None else None,
                     "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}})

    # -- what is done already (any file), what this rank does
    own = out / PARTS / f"rank{ctx.rank}-of-{ctx.world}.jsonl" if ctx.world > 1 else out / RESULTS
    if ctx.world > 1:
        own.parent.mkdir(exist_ok=True)
    done = _dedupe(_all_records(out, own))
    by_id = {it.id: it for it in items}
    for (item_id, _), rec in done.items():
        it = by_id.get(item_id)
        if it is not None and rec.get("prompt") != task_obj.prompt(it):
            raise ConfigError(
                f"{out}: item {item_id!r} was answered for a different prompt than the data now "
                f"gives ({rec.get('prompt', '')[:60]!r} vs {task_obj.prompt(it)[:60]!r}): the data "
                f"changed. Use another --out folder, or delete {out} to start over.")
    index = {it.id: i for i, it in enumerate(items)}
    mine = [it for i, it in enumerate(items) if i % ctx.world == ctx.rank]
    todo = [(it, m) for it in mine for m in methods if (it.id, m) not in done]
    skipped = len(mine) * len(methods) - len(todo)

    judge_objs = build_judges(judges, task_obj, items, lm=lm, judge_url=judge_url,
                              judge_model=judge_model,
                              prebuilt={"llm": remote} if remote else None) if todo else {}
    gen_file = out / GENERATED / f"rank{ctx.rank}-of-{ctx.world}.jsonl"
    generated = _generated(out, gen_file)
    kwargs_for = getattr(task_obj, "judge_kwargs", None)
    if any(m not in ("vanilla", "sampled") for _, m in todo):
        warm_up(lm, task_obj, method_config)
    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), desc=f"eval rank {ctx.rank}" if ctx.world > 1 else "eval",
               unit="answer", disable=not progress, position=ctx.local_rank if ctx.world > 1 else None,
               dynamic_ncols=True, file=sys.stderr)
    if skipped and progress:
        bar.write(f"resuming: {skipped} answer(s) already in {out} are skipped")
    rejudge = sum(1 for it, m in todo if _usable(generated.get((it.id, m)), task_obj, it))
    if rejudge and progress:
        bar.write(f"resuming: {rejudge} response(s) generated before are judged, not generated again")
    computed = 0
    import threading

    from ..batch import WAKE_S

    keep_lock = threading.Lock()

    def generate(it, m, config=method_config, forget=True):
        rec = generate_answer(lm, it, m, task_obj, config, seed, index[it.id], forget_queries=forget)
        if "error" not in rec:           # kept before any judge sees it
            with keep_lock:
                gen_file.parent.mkdir(parents=True, exist_ok=True)
                append_jsonl(gen_file, rec)
        return rec

    # RAIN on a vLLM server: several searches in flight (the server batches their requests);
    # every other answer is generated in this thread, when its turn comes
    on_server_todo = [(it, m) for it, m in todo
                      if not _usable(generated.get((it.id, m)), task_obj, it)
                      and on_server(m, lm, method_config)]
    workers = min(len(on_server_todo), SERVER_CONCURRENCY if concurrency is None else concurrency)
    if workers < 2:
        on_server_todo = []
    searched: dict[tuple, dict] = {}     # answers of the searches side by side, until written
    ready = threading.Condition()        # notified when a search ends or the run stops
    stop = threading.Event()             # set by the first error or Ctrl-C

    def write_all() -> None:
        """Judge and write every answer in data order, taking those searched side by side as they
        end. Once the run has stopped, nothing more starts: it returns."""
        nonlocal computed
        side = {(it.id, m) for it, m in on_server_todo}
        for it, m in todo:
            key = (it.id, m)
            bar.set_postfix_str(f"{m} {it.id}", refresh=False)
            rec = generated.get(key)
            if key in side:
                with ready:              # in short waits, so that a Ctrl-C is taken (batch.WAKE_S)
                    while not ready.wait_for(lambda: key in searched or stop.is_set(), WAKE_S):
                        pass
                    rec = searched.pop(key, None)
            elif not stop.is_set() and not _usable(rec, task_obj, it):
                rec = generate(it, m)
            if stop.is_set():            # side_by_side raises the error that stopped the run
                return
            rec = judge_answer(rec, it, judge_objs, kwargs_for)
            append_jsonl(own, rec)
            done[key] = rec
            computed += 1
            bar.update(1)

    try:
        if on_server_todo:
            from ..batch import Locked, side_by_side
            from ..vllm_engine import shared_client

            task_evaluator(lm, task_obj, method_config)      # the shared evaluator, made once, here
            # the searches' requests go through a view of the server's client with the run's
            # `stop`: once set, each of their requests raises instead of going out (anything else
            # on that client, e.g. another run in this process, goes on)
            threaded = method_config.replace(
                client=(method_config.client or shared_client(lm)).stopping(stop))
            if method_config.rain.needs_embeddings:
                from ..embed import load_embedder
                threaded = threaded.replace(embedder=Locked(method_config.embedder or load_embedder()))

            def search(i: int) -> None:
                it, m = on_server_todo[i]
                rec = generate(it, m, threaded, False)
                with ready:
                    searched[(it.id, m)] = rec
                    ready.notify_all()

            def halt() -> None:
                stop.set()
                with ready:
                    ready.notify_all()

            # the one path of searches side by side (raintools.batch): on the first error of a
            # search, or of this thread (Ctrl-C, a judge), no search starts after it, the running
            # ones end at their next request, and that error is raised once they have ended
            side_by_side([search] * len(on_server_todo), workers, serve=write_all, stop=halt)
        else:
            write_all()
    finally:
        bar.close()

    # -- merge and summarise
    ctx.barrier()
    summary = None
    if ctx.rank == 0:
        everything = _dedupe(_all_records(out, None))
        merged = sorted(everything.values(), key=_sort_key(index, methods))
        parts = sorted((out / PARTS).glob("*.jsonl")) if (out / PARTS).is_dir() else []
        if parts or ctx.world > 1:
            _write_results(out, merged)
            for p in parts:
                p.unlink()
            try:
                (out / PARTS).rmdir()
            except OSError:
                pass
        _drop_judged_generations(out, everything)
        current = [r for r in merged if r["id"] in index and r["method"] in methods]
        summary = write_summary(out, current, methods, n_boot=n_boot, seed=seed)
        recs = current
        if progress:
            _print_summary(summary, out, time.perf_counter() - t_start, computed)
    else:
        recs = [r for r in done.values() if r["id"] in index]
    ctx.barrier()
    return EvalRun(out, recs, summary, computed, skipped, identity)


SERVER_CONCURRENCY = 8   # RAIN searches in flight at once on a vLLM server (eval --concurrency)


def on_server(method: str, lm, config: MethodConfig) -> bool:
    """Whether `method` is RAIN (or a variant of it) with its forward passes on a vLLM server:
    those answers may be generated side by side (`SERVER_CONCURRENCY`); the in-process methods
    and engines answer one prompt at a time (they share one model and its caches)."""
    from ..search import resolve_engine
    from ..vllm_engine import ENGINE_MODES

    engine = config.engine
    while method in VARIANTS:
        engine = VARIANTS[method]["changes"].get("engine", engine)
        method = VARIANTS[method]["base"]
    return method == "rain" and (engine in ENGINE_MODES or resolve_engine(lm, engine) in ENGINE_MODES)


def warm_up(lm, task, config: MethodConfig) -> None:
    """Encode the self-evaluator's fixed judging prefix once, before the first answer, so that
    this one-off cost is not charged to whichever prompt happens to come first (per-prompt costs
    then agree between a one-process and a sharded run)."""
    from .methods import task_evaluator

    if str(lm.device) == "meta":     # no local weights: the forward passes run on a server (vLLM)
        return
    task_evaluator(lm, task, config)("Hello.", "Hello! How can I help?")


def _forget_queries(lm) -> None:
    """Empty the self-evaluators' per-query caches before each answer, so that an answer's cost
    does not depend on whether another method answered the same prompt just before it: costs
    then agree between runs, resumed runs and shards."""
    for ev in getattr(lm, "_evaluators", {}).values():
        ev = getattr(ev, "inner", ev)
        if hasattr(ev, "forget_queries"):
            ev.forget_queries()


def answer(lm, item, method: str, task, config: MethodConfig, seed: int, judges: dict,
           kwargs_for=None, index: int = 0) -> dict:
    """One result line: generate with `method`, judge with every judge."""
    rec = generate_answer(lm, item, method, task, config, seed, index)
    return judge_answer(rec, item, judges, kwargs_for)


def generate_answer(lm, item, method: str, task, config: MethodConfig, seed: int,
                    index: int = 0, forget_queries: bool = True) -> dict:
    """A response generated with `method`, not judged yet: `id`, `index`, `method`, `prompt`,
    `response`, `stats`, `time_s`, `seed`, `meta` (or `error` for a prompt the method refused,
    e.g. one longer than the context: recorded, not fatal to the run). `forget_queries=False`
    leaves the local self-evaluators' caches alone (answers generated side by side on a vLLM
    server: their judge runs on the server, and another thread may be using those caches)."""
    prompt = task.prompt(item)
    fn = get_method(method)
    rec = {"id": item.id, "index": index, "method": method, "prompt": prompt}
    if forget_queries:
        _forget_queries(lm)
    try:
        res = fn(lm, prompt, task, config, seed)
    except PromptError as exc:
        rec.update(response="", error=str(exc), stats={}, time_s=0.0, seed=seed,
                   meta=_small_meta(item.meta))
        return rec
    rec.update(response=res.text, stats=res.stats,
               time_s=round(float(res.stats.get("wall_time_s", 0.0)), 4), seed=seed,
               meta=_small_meta(item.meta))
    return rec


def judge_answer(gen: dict, item, judges: dict, kwargs_for=None) -> dict:
    """The result line of a generated response (`generate_answer`): the verdict of every judge."""
    rec = {k: gen[k] for k in ("id", "index", "method", "prompt")}
    if "error" in gen:
        rec.update(response="", error=gen["error"], verdicts={}, metrics={}, stats={}, time_s=0.0,
                   judge_time_s=0.0, seed=gen["seed"], meta=gen["meta"])
        return rec
    t0 = time.perf_counter()
    verdicts = {}
    for name, judge in judges.items():
        kw = kwargs_for(item, name) if kwargs_for is not None else {}
        verdicts[name] = judge.judge(gen["prompt"], gen["response"], **kw)
    rec.update(response=gen["response"], verdicts=verdicts, metrics=merge_verdicts(verdicts),
               stats=gen["stats"], time_s=gen["time_s"],
               judge_time_s=round(time.perf_counter() - t0, 4), seed=gen["seed"], meta=gen["meta"])
    return rec


def _generated(out: Path, own: Path) -> dict[tuple, dict]:
    """Responses generated by earlier runs (any rank, any world size) and not judged yet."""
    folder = out / GENERATED
    if not folder.is_dir():
        return {}
    recs = []
    for f in sorted(folder.glob("*.jsonl")):
        recs.extend(read_records(f, repair=(f == own)))
    return _dedupe(recs)


def _usable(gen: dict | None, task, item) -> bool:
    """A generated response can be judged in this run: same prompt, and complete."""
    return (gen is not None and gen.get("prompt") == task.prompt(item)
            and all(k in gen for k in ("response", "stats", "time_s", "seed", "meta")))


def _drop_judged_generations(out: Path, judged: dict) -> None:
    """Remove generated/ once every response in it has its line in the results."""
    folder = out / GENERATED
    if not folder.is_dir():
        return
    pending = _generated(out, own=None)
    if any(key not in judged for key in pending):
        return
    for f in folder.glob("*.jsonl"):
        f.unlink()
    try:
        folder.rmdir()
    except OSError:
        pass


def default_method_config(task, lm, max_new_tokens: int | None = None, **changes) -> MethodConfig:
    """The task's RAIN preset; on a CPU with the CPU budget (`RainConfig.with_cpu_budget`: fewer
    simulations, the same rules); 128 new tokens on a GPU, 32 on a CPU."""
    cpu = lm.device.type == "cpu"
    rain = task.preset().with_cpu_budget() if cpu else task.preset()
    return MethodConfig(rain=rain, max_new_tokens=max_new_tokens or (32 if cpu else 128), **changes)


def _print_summary(df, out: Path, seconds: float, computed: int) -> None:
    cols = [c for c in df.columns if c.endswith(("_rate", "_mean")) or c in (
        "method", "n", "errors", "win_rate", "mean_time_s", "time_ratio")]
    import pandas as pd

    with pd.option_context("display.width", 160, "display.max_columns", 30):
        print(df[cols].round(3).to_string(index=False), file=sys.stderr)
    print(f"{computed} answer(s) computed in {seconds:.0f} s; results in {out / RESULTS}, "
          f"summary in {out / SUMMARY}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# CLI


def add_eval_parser(subparsers) -> argparse.ArgumentParser:
    from ..cli_options import add_model_args, add_rain_args

    p = subparsers.add_parser(
        "eval", help="decode a data set with several methods, judge, summarise (resumable)",
        description="Run every method on every prompt of a data file, judge the answers and write "
                    "OUT/results.jsonl, OUT/summary.csv and OUT/run.json. Running the same command "
                    "again resumes. Under torchrun, ranks shard the prompts and rank 0 merges.")
    p.add_argument("--data", required=True,
                   help="CSV/TSV/JSONL(.gz)/JSON file, or a data set name (demo, hh-harmless, advbench, "
                        "truthfulqa, imdb: under RAINTOOLS_DATA)")
    p.add_argument("--column", default=None, help="prompt column of a table (default: by file shape)")
    p.add_argument("--limit", type=int, default=None, help="first N prompts only")
    p.add_argument("--methods", default="vanilla,rain",
                   help=f"comma-separated, from: {', '.join(METHODS)} (default: vanilla,rain)")
    p.add_argument("--judge", "--judges", dest="judges", default=None,
                   help="comma-separated judges: refusal, llm, sentiment, truthfulness "
                        "(default: the task's)")
    p.add_argument("--judge-url", default=None,
                   help="llm judge: OpenAI-compatible endpoint (default: RAINTOOLS_JUDGE_URL; "
                        "without one the judge is local)")
    p.add_argument("--judge-model", default=None,
                   help="llm judge: the endpoint's model name, or a local model to load "
                        "(default: the evaluated model)")
    p.add_argument("--out", required=True, help="output folder (resumed when it exists)")
    p.add_argument("--task", default="harmless", help="alignment goal: harmless, truthful, sentiment, ...")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length for every method (default: 32 on CPU, 128 on GPU)")
    p.add_argument("--bon-n", type=int, default=4, help="N of best-of-N (method bon)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (sampled, bon)")
    p.add_argument("--top-k", type=int, default=None, help="top-k truncation (sampled, bon)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or summary print")
    p.add_argument("--concurrency", type=int, default=None,
                   help=f"--engine vllm: RAIN searches in flight at once, batched by the server "
                        f"(default {SERVER_CONCURRENCY}; 1: one prompt at a time)")
    add_model_args(p)
    add_rain_args(p)
    p.set_defaults(func=eval_main)
    return p


def eval_main(args) -> int:
    from ..cli_options import rain_config_from_args
    from ..config import PRESETS
    from ..models import default_device
    from .tasks import get_task

    task = get_task(args.task)
    if args.limit is not None and args.limit < 1:
        raise ConfigError(f"--limit must be a positive integer, got {args.limit}.")
    device = args.device or default_device()     # ranks of a sharded run take cuda:LOCAL_RANK
    cpu = str(device).startswith("cpu")
    # the task's preset (its rules and judging template); on a CPU with the CPU budget
    default = task.preset().name if task.preset().name in PRESETS else "hh"
    mc = MethodConfig(rain=rain_config_from_args(args, "cpu" if cpu else "cuda", default=default),
                      max_new_tokens=args.max_new_tokens or (32 if cpu else 128),
                      temperature=args.temperature, top_k=args.top_k, bon_n=args.bon_n,
                      engine=args.engine)
    run_eval(args.data, args.methods, args.judges, args.out, task=args.task, column=args.column,
             limit=args.limit, model=args.model, device=device, dtype=args.dtype,
             seed=args.seed, method_config=mc, judge_url=args.judge_url,
             judge_model=args.judge_model, progress=not args.no_progress, argv=sys.argv[1:],
             concurrency=args.concurrency)
    return 0
