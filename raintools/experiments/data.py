"""Evaluation prompts: loaders for HH-RLHF, AdvBench, TruthfulQA, IMDB, any CSV/JSONL table, and
a small built-in demo set.

Every loader returns a list of `Item`s (`id`, `prompt`, `meta`). Item ids are stable: they are
made from the row's position in its file (`hh-harmless-0007`, `advbench-0041`, ...), or taken
from an id column, so an interrupted evaluation run can resume by id.

Every malformed input raises one `DataError` whose message names the file and, where there is
one, the line (`harmful_behaviors.csv, line 3: missing value for column 'goal'`).
No data is downloaded: point the loaders at local files (see `data_root()`).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import zlib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError, DataError

__all__ = [
    "Item", "PreferencePair", "load_hh_rlhf", "load_hh_paper", "load_hh_pairs", "load_advbench", "load_table",
    "load_truthfulqa", "load_imdb", "demo_prompts", "load_dataset", "parse_transcript",
    "data_root", "DATASET_NAMES",
]


@dataclass
class Item:
    """One evaluation prompt. `meta` holds labels and references (targets, answers, ...)."""

    id: str
    prompt: str
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class PreferencePair:
    """An HH-RLHF preference pair: the shared conversation `context` (everything before the last
    assistant turn), and the `chosen` and `rejected` final assistant responses."""

    id: str
    context: str
    chosen: str
    rejected: str
    meta: dict = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        return self.context

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Low-level readers: every problem becomes one DataError naming the file and line.


def _where(path: Path, line: int | None = None) -> str:
    return f"{path}, line {line}" if line else str(path)


def _check_limit(limit) -> int | None:
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ConfigError(f"limit must be a non-negative integer or None, not {limit!r}.")
    return limit


def _existing_file(path) -> Path:
    if path is None or (isinstance(path, str) and not path.strip()):
        raise DataError("No data file given.")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{p}: file not found.")
    if not p.is_file():
        raise DataError(f"{p}: is a directory, not a data file.")
    return p


def _suffix(path: Path) -> str:
    """Lower-case extension, with .gz kept as part of it ('.jsonl.gz')."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        return "".join(suffixes[-2:]) if len(suffixes) >= 2 else ".gz"
    return suffixes[-1] if suffixes else ""


class _LineReader:
    """Text lines of a plain or gzipped file (utf-8, BOM dropped); errors become DataError."""

    def __init__(self, path: Path):
        self.path = path
        self.lineno = 0

    def __iter__(self) -> Iterator[str]:
        opener = gzip.open if self.path.name.lower().endswith(".gz") else open
        try:
            with opener(self.path, "rb") as raw:
                for data in raw:  # binary lines, so a decoding error names its own line
                    self.lineno += 1
                    try:
                        line = data.decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise DataError(f"{_where(self.path, self.lineno)}: not valid UTF-8 text "
                                        f"({exc.reason} at byte {exc.start} of the line).") from None
                    if self.lineno == 1 and line.startswith("\ufeff"):
                        line = line[1:]
                    yield line
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise DataError(f"{self.path}: not a readable gzip file ({exc}).") from None
        except OSError as exc:
            raise DataError(f"{self.path}: cannot be read ({exc.strerror or exc}).") from None


def _iter_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line of a JSONL(.gz) file."""
    reader = _LineReader(path)
    for line in reader:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{_where(path, reader.lineno)}: not valid JSON ({exc.msg} at column "
                            f"{exc.colno}).") from None
        if not isinstance(obj, dict):
            raise DataError(f"{_where(path, reader.lineno)}: expected a JSON object "
                            f"({{...}}), found {type(obj).__name__}.")
        yield reader.lineno, obj


def _iter_json_array(path: Path) -> Iterator[tuple[int | None, dict]]:
    """Records of a .json file holding a list of objects (line numbers are not known)."""
    try:
        text = "".join(_LineReader(path))
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{_where(path, exc.lineno)}: not valid JSON ({exc.msg}).") from None
    if isinstance(data, dict):
        # {"data": [...]} or a single list-valued key
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) == 1:
            data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects.")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise DataError(f"{path}: record {i + 1} is not a JSON object.")
        yield None, obj


def _iter_csv(path: Path, required: tuple[str, ...] = (), delimiter: str | None = None
              ) -> Iterator[tuple[int, dict]]:
    """(line number where the record starts, row) for each row of a CSV/TSV file.

    Checks the header holds `required` columns and that every row has as many fields as the
    header. Values are str; a missing value is reported, not silently None."""
    if delimiter is None:
        delimiter = "\t" if _suffix(path) in (".tsv", ".tsv.gz") else ","
    lines = _LineReader(path)
    reader = csv.reader(iter(lines), delimiter=delimiter, strict=True)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"{_where(path, lines.lineno)}: malformed CSV header ({exc}).") from None
    if not header or not any(h.strip() for h in header):
        raise DataError(f"{path}: empty file (no CSV header line).")
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{_where(path, 1)}: missing column {', '.join(repr(m) for m in missing)} "
                        f"in the header (columns: {', '.join(header)}).")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise DataError(f"{_where(path, 1)}: duplicate column name(s) {dup} in the header.")
    prev_end = lines.lineno
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise DataError(f"{_where(path, prev_end + 1)}: malformed CSV ({exc}).") from None
        start = prev_end + 1
        prev_end = lines.lineno
        if not fields or (len(fields) == 1 and not fields[0].strip() and len(header) > 1):
            continue  # blank line
        if len(fields) != len(header):
            raise DataError(f"{_where(path, start)}: row has {len(fields)} fields but the header has "
                            f"{len(header)} ({', '.join(header)}).")
        yield start, dict(zip(header, fields))


def _records(path: Path, required: tuple[str, ...] = ()) -> Iterator[tuple[int | None, dict]]:
    """Records of a CSV/TSV/JSONL/JSON file, dispatched by extension."""
    ext = _suffix(path)
    if ext in (".csv", ".csv.gz", ".tsv", ".tsv.gz"):
        yield from _iter_csv(path, required)
    elif ext in (".jsonl", ".jsonl.gz", ".ndjson"):
        yield from _iter_jsonl(path)
    elif ext == ".json":
        yield from _iter_json_array(path)
    else:
        raise DataError(f"{path}: unknown file type '{ext or '(no extension)'}'; use .csv, .tsv, "
                        f".jsonl, .jsonl.gz or .json.")


def _text_field(path: Path, line, row: dict, column: str, allow_empty: bool = False) -> str:
    if column not in row:
        keys = ", ".join(map(str, row)) or "none"
        raise DataError(f"{_where(path, line)}: missing column '{column}' (found: {keys}).")
    value = row[column]
    if value is None:
        value = ""
    if not isinstance(value, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        else:
            raise DataError(f"{_where(path, line)}: column '{column}' should be text, found "
                            f"{type(value).__name__}.")
    if not allow_empty and not value.strip():
        raise DataError(f"{_where(path, line)}: empty prompt (column '{column}').")
    return value


def _slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "item"


def _stem(path: Path) -> str:
    name = path.name
    for ext in (".gz", ".jsonl", ".ndjson", ".json", ".csv", ".tsv"):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
    return name


# --------------------------------------------------------------------------------------------
# HH-RLHF

_TURN = re.compile(r"\n\n(Human|Assistant):")


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """Split an HH-RLHF transcript ('\\n\\nHuman: ... \\n\\nAssistant: ...') into
    [(role, text), ...] with role 'user' or 'assistant'. Text before the first marker is dropped."""
    parts = _TURN.split(text)
    turns = []
    for i in range(1, len(parts) - 1, 2):
        role = "user" if parts[i] == "Human" else "assistant"
        turns.append((role, parts[i + 1].strip()))
    return turns


def _hh_prefix(path: Path) -> str:
    """'hh-harmless' for .../harmless-base/test.jsonl.gz, 'hh-helpful' for helpful-base,
    'hh-red-team' for red-team-attempts, else 'hh'."""
    parent = path.parent.name.lower()
    m = re.match(r"(harmless|helpful|red-team)", parent)
    return f"hh-{m.group(1)}" if m else "hh"


def _hh_rows(path: Path) -> Iterator[tuple[int, int, str, str]]:
    path = _existing_file(path)
    if _suffix(path) not in (".jsonl", ".jsonl.gz", ".ndjson"):
        raise DataError(f"{path}: HH-RLHF data must be .jsonl or .jsonl.gz.")
    for index, (line, row) in enumerate(_iter_jsonl(path)):
        chosen = _text_field(path, line, row, "chosen")
        rejected = _text_field(path, line, row, "rejected")
        yield index, line, chosen, rejected


def load_hh_rlhf(path, limit: int | None = None, paper: bool = False, tokenizer=None,
                 seed: int = 42, start: int = 0, end: int | None = None,
                 max_prompt_tokens: int | None = 512) -> list[Item]:
    """HH-RLHF prompts: the first human turn of each `chosen` transcript.

    `meta` keeps the full `chosen` and `rejected` transcripts and the number of turns.

    `paper=True` selects prompts as the public code's HH script did (see `load_hh_paper`): the
    rows in a fixed shuffled order, the first human turn, prompts under `max_prompt_tokens`
    tokens of `tokenizer`; for its red-team split, point `path` at
    red-team-attempts/red_team_attempts.jsonl.gz (not in the shared data)."""
    if paper:
        return load_hh_paper(path, tokenizer, limit=limit, seed=seed, start=start, end=end,
                             max_prompt_tokens=max_prompt_tokens)
    path = Path(path)
    limit = _check_limit(limit)
    prefix = _hh_prefix(path)
    items: list[Item] = []
    for index, line, chosen, rejected in _hh_rows(path):
        if limit is not None and len(items) >= limit:
            break
        turns = parse_transcript(chosen)
        if not turns or turns[0][0] != "user":
            raise DataError(f"{_where(path, line)}: 'chosen' does not start with a "
                            f"'\\n\\nHuman:' turn.")
        prompt = turns[0][1]
        if not prompt:
            raise DataError(f"{_where(path, line)}: empty prompt (first human turn is empty).")
        items.append(Item(f"{prefix}-{index:04d}", prompt,
                          {"chosen": chosen, "rejected": rejected, "turns": len(turns),
                           "source": str(path.name)}))
    return items


def _hh_transcripts(path: Path) -> Iterator[tuple[int, int | None, str]]:
    """(row index, line, transcript) of an HH-RLHF file: the `transcript` of each red-team attempt
    (a JSON list or JSON lines, optionally gzipped) or the `chosen` transcript of a preference file."""
    path = _existing_file(path)
    if _suffix(path) not in (".jsonl", ".jsonl.gz", ".ndjson", ".json", ".json.gz"):
        raise DataError(f"{path}: HH-RLHF data must be .jsonl(.gz) or .json(.gz).")
    first = ""
    for line in _LineReader(path):
        if line.strip():
            first = line.lstrip()
            break
    rows = _iter_json_array(path) if first.startswith("[") else _iter_jsonl(path)
    for index, (line, row) in enumerate(rows):
        column = "transcript" if "transcript" in row else "chosen"
        yield index, line, _text_field(path, line, row, column)


def load_hh_paper(path, tokenizer, limit: int | None = None, seed: int = 42, start: int = 0,
                  end: int | None = None, max_prompt_tokens: int | None = 512) -> list[Item]:
    """HH prompts selected as the public code's HH script did, deterministic: the file's rows
    (red-team attempts' `transcript`, or a preference file's `chosen`) in the order of
    `datasets.Dataset.shuffle(seed=42)` (the permutation `numpy.random.default_rng(seed)`
    draws), rows `start:end` of that order, the first human turn of each, kept when the
    conversation up to the first assistant turn ('\nHuman: ...\nAssistant:', the script's
    prompt) has fewer than `max_prompt_tokens` tokens of `tokenizer` (special tokens included, as
    the script counted; None: no length filter). Then at most `limit` prompts.

    Ids come from the row's position in the file (`hh-red-team-0042`); `meta` holds the
    transcript, the position in the shuffled order and the token count."""
    import numpy as np

    path = Path(path)
    limit = _check_limit(limit)
    for name, value in (("seed", seed), ("start", start)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"{name} must be a non-negative integer, got {value!r}.")
    if end is not None and (isinstance(end, bool) or not isinstance(end, int) or end < start):
        raise ConfigError(f"end must be an integer >= start ({start}), got {end!r}.")
    if max_prompt_tokens is not None:
        if isinstance(max_prompt_tokens, bool) or not isinstance(max_prompt_tokens, int) \
                or max_prompt_tokens < 1:
            raise ConfigError(f"max_prompt_tokens must be a positive integer or None, got "
                              f"{max_prompt_tokens!r}.")
        if tokenizer is None:
            raise ConfigError("The paper-style HH selection counts prompt tokens: pass "
                              "tokenizer=lm.tokenizer (or max_prompt_tokens=None).")
    rows = list(_hh_transcripts(path))
    prefix = _hh_prefix(path)
    order = np.random.default_rng(seed).permutation(len(rows)).tolist()
    items: list[Item] = []
    for position in range(start, len(order) if end is None else min(end, len(order))):
        if limit is not None and len(items) >= limit:
            break
        index, line, transcript = rows[order[position]]
        cut = transcript.find("\n\nAssistant:")
        turns = parse_transcript(transcript)
        if cut < 0 or not turns or turns[0][0] != "user" or not turns[0][1]:
            raise DataError(f"{_where(path, line)}: the transcript does not start with a "
                            f"'\\n\\nHuman:' turn followed by an assistant turn.")
        shown = transcript[: cut + len("\n\nAssistant:")].replace("\n\n", "\n")
        n_tokens = None
        if max_prompt_tokens is not None:
            n_tokens = len(tokenizer(shown)["input_ids"])
            if n_tokens >= max_prompt_tokens:
                continue
        items.append(Item(f"{prefix}-{index:04d}", turns[0][1],
                          {"transcript": transcript, "shuffled_position": position, "seed": seed,
                           "prompt_tokens": n_tokens, "source": str(path.name)}))
    return items


def load_hh_pairs(path, limit: int | None = None, skip_mismatched: bool = True
                  ) -> list[PreferencePair]:
    """HH-RLHF preference pairs for self-evaluation accuracy.

    `context` is the transcript up to (not including) the last '\\n\\nAssistant:'; `chosen` and
    `rejected` are the two final assistant responses. In a few rows (5 of 2,312 in
    harmless-base test) the two transcripts differ before their last assistant turn; those are not
    clean pairs and are skipped (or raise a DataError with `skip_mismatched=False`). Ids are
    `hh-harmless-pair-0007` etc., from the row's position, so they stay stable."""
    path = Path(path)
    limit = _check_limit(limit)
    prefix = _hh_prefix(path) + "-pair"
    pairs: list[PreferencePair] = []
    marker = "\n\nAssistant:"
    for index, line, chosen, rejected in _hh_rows(path):
        if limit is not None and len(pairs) >= limit:
            break
        kc, kr = chosen.rfind(marker), rejected.rfind(marker)
        if kc < 0 or kr < 0:
            raise DataError(f"{_where(path, line)}: transcript has no '\\n\\nAssistant:' turn.")
        context_c, context_r = chosen[:kc], rejected[:kr]
        if context_c != context_r:
            if skip_mismatched:
                continue
            raise DataError(f"{_where(path, line)}: 'chosen' and 'rejected' differ before their "
                            f"last assistant turn, so they are not a preference pair.")
        context = context_c.lstrip("\n")
        if not context.strip():
            raise DataError(f"{_where(path, line)}: empty prompt (nothing before the last "
                            f"assistant turn).")
        turns = parse_transcript("\n\n" + context)
        pairs.append(PreferencePair(
            f"{prefix}-{index:04d}", context,
            chosen[kc + len(marker):].strip(), rejected[kr + len(marker):].strip(),
            {"turns": turns, "source": str(path.name)}))
    return pairs


# --------------------------------------------------------------------------------------------
# AdvBench


def load_advbench(path, limit: int | None = None) -> list[Item]:
    """AdvBench. `harmful_behaviors.csv` (`goal`, `target`): prompt = goal, meta target, ids
    `advbench-0000`. `harmful_strings.csv` (`target` only): prompt = the target string (the
    attack tries to make the model emit it), ids `advstrings-0000`."""
    path = _existing_file(path)
    limit = _check_limit(limit)
    if _suffix(path) not in (".csv", ".csv.gz"):
        raise DataError(f"{path}: AdvBench data must be a .csv file.")
    items: list[Item] = []
    kind = None
    for index, (line, row) in enumerate(_iter_csv(path, required=("target",))):
        if kind is None:
            kind = "behaviors" if "goal" in row else "strings"
        if limit is not None and len(items) >= limit:
            break
        target = _text_field(path, line, row, "target", allow_empty=(kind == "behaviors"))
        if kind == "behaviors":
            goal = _text_field(path, line, row, "goal")
            items.append(Item(f"advbench-{index:04d}", goal.strip(),
                              {"target": target.strip(), "harmful": True, "kind": kind}))
        else:
            items.append(Item(f"advstrings-{index:04d}", target.strip(),
                              {"target": target.strip(), "harmful": True, "kind": kind}))
    return items


# --------------------------------------------------------------------------------------------
# Generic tables


def load_table(path, column: str, limit: int | None = None, id_column: str | None = None
               ) -> list[Item]:
    """Any CSV/TSV/JSONL(.gz)/JSON table: prompt = `column`; the other fields go to `meta`.

    Ids come from `id_column` when given (they must be unique and non-empty), else
    `<file-stem>-0007` from the row position."""
    path = _existing_file(path)
    limit = _check_limit(limit)
    if not isinstance(column, str) or not column:
        raise ConfigError("load_table needs the name of the prompt column (column='...').")
    required = (column,) + ((id_column,) if id_column else ())
    prefix = _slug(_stem(path))
    items: list[Item] = []
    seen: dict[str, int | None] = {}
    for index, (line, row) in enumerate(_records(path, required)):
        if limit is not None and len(items) >= limit:
            break
        prompt = _text_field(path, line, row, column)
        if id_column:
            raw = row.get(id_column)
            if raw is None or (isinstance(raw, str) and not raw.strip()):
                raise DataError(f"{_where(path, line)}: empty id (column '{id_column}').")
            item_id = str(raw).strip()
            if item_id in seen:
                raise DataError(f"{_where(path, line)}: duplicate id '{item_id}' (column "
                                f"'{id_column}'; first seen {_where(path, seen[item_id])}).")
            seen[item_id] = line
        else:
            item_id = f"{prefix}-{index:04d}"
        meta = {k: v for k, v in row.items() if k != column}
        items.append(Item(item_id, prompt.strip(), meta))
    return items


# --------------------------------------------------------------------------------------------
# TruthfulQA


def _split_answers(text: str) -> list[str]:
    return [a.strip() for a in text.split(";") if a.strip()]


def load_truthfulqa(path, limit: int | None = None) -> list[Item]:
    """TruthfulQA (generation setting). prompt = question; meta `best` (str), `correct` and
    `incorrect` (lists split on ';'), `category`, `type`, `source`. Ids `tqa-0000`."""
    path = _existing_file(path)
    limit = _check_limit(limit)
    if _suffix(path) not in (".csv", ".csv.gz"):
        raise DataError(f"{path}: TruthfulQA data must be a .csv file.")
    cols = ("Question", "Best Answer", "Correct Answers", "Incorrect Answers")
    items: list[Item] = []
    for index, (line, row) in enumerate(_iter_csv(path, required=cols)):
        if limit is not None and len(items) >= limit:
            break
        question = _text_field(path, line, row, "Question").strip()
        best = _text_field(path, line, row, "Best Answer", allow_empty=True).strip()
        correct = _split_answers(row["Correct Answers"])
        incorrect = _split_answers(row["Incorrect Answers"])
        if not correct and not best:
            raise DataError(f"{_where(path, line)}: no correct reference answer "
                            f"('Best Answer' and 'Correct Answers' are empty).")
        if not incorrect:
            raise DataError(f"{_where(path, line)}: no incorrect reference answer "
                            f"('Incorrect Answers' is empty).")
        items.append(Item(f"tqa-{index:04d}", question, {
            "best": best, "correct": correct, "incorrect": incorrect,
            "category": row.get("Category", "").strip(), "type": row.get("Type", "").strip(),
            "source": row.get("Source", "").strip()}))
    return items


# --------------------------------------------------------------------------------------------
# IMDB

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)


def clean_review(text: str) -> str:
    """Review text with HTML line breaks removed and whitespace collapsed."""
    return " ".join(_BR.sub(" ", text).split())


def load_imdb(path, limit: int | None = None, prompt_words: int = 8, label=None) -> list[Item]:
    """IMDB reviews (`text`, `label` 0/1). prompt = the first `prompt_words` words of the review
    (HTML `<br />` removed); meta `label` (int), `sentiment` ('positive'/'negative') and the
    cleaned full `text`. `label` keeps only one class: 0/1 or 'negative'/'positive'.
    Ids `imdb-0000` from the row position (stable under filtering)."""
    path = _existing_file(path)
    limit = _check_limit(limit)
    if isinstance(prompt_words, bool) or not isinstance(prompt_words, int) or prompt_words < 1:
        raise ConfigError(f"prompt_words must be a positive integer, not {prompt_words!r}.")
    wanted = _imdb_label(label, path, None, config=True) if label is not None else None
    items: list[Item] = []
    for index, (line, row) in enumerate(_records(path, ("text", "label"))):
        if limit is not None and len(items) >= limit:
            break
        text = clean_review(_text_field(path, line, row, "text"))
        if not text:
            raise DataError(f"{_where(path, line)}: empty prompt (review text is only markup).")
        lab = _imdb_label(row.get("label"), path, line)
        if wanted is not None and lab != wanted:
            continue
        prompt = " ".join(text.split()[:prompt_words])
        items.append(Item(f"imdb-{index:04d}", prompt, {
            "label": lab, "sentiment": "positive" if lab == 1 else "negative", "text": text}))
    return items


def _imdb_label(value, path, line, config: bool = False) -> int:
    names = {"0": 0, "1": 1, "neg": 0, "negative": 0, "pos": 1, "positive": 1}
    key = str(value).strip().lower() if value is not None and not isinstance(value, bool) else None
    if key in names:
        return names[key]
    if config:
        raise ConfigError(f"label must be 0/1 or 'negative'/'positive', not {value!r}.")
    raise DataError(f"{_where(path, line)}: label must be 0 or 1, found {value!r}.")


# --------------------------------------------------------------------------------------------
# Built-in demo prompts


def demo_prompts(kind: str | None = None) -> list[Item]:
    """Our own small prompt set (raintools/experiments/demo_prompts.jsonl): 12 mildly harmful requests
    and 12 benign ones, `meta['harmful']` True/False. `kind`: None/'all', 'harmful', 'benign'."""
    if kind not in (None, "all", "harmful", "benign"):
        raise ConfigError(f"kind must be None, 'all', 'harmful' or 'benign', not {kind!r}.")
    res = resources.files("raintools.experiments") / "demo_prompts.jsonl"
    with resources.as_file(res) as path:
        items = []
        for line, row in _iter_jsonl(Path(path)):
            prompt = _text_field(Path(path), line, row, "prompt")
            harmful = row.get("harmful")
            if not isinstance(harmful, bool):
                raise DataError(f"{_where(Path(path), line)}: 'harmful' must be true or false.")
            meta = {k: v for k, v in row.items() if k not in ("id", "prompt")}
            items.append(Item(str(row["id"]), prompt, meta))
    if kind == "harmful":
        return [it for it in items if it.meta["harmful"]]
    if kind == "benign":
        return [it for it in items if not it.meta["harmful"]]
    return items


# --------------------------------------------------------------------------------------------
# Dispatch


# Short names resolved under data_root() (the shared evaluation data layout).
DATASET_NAMES = {
    "advbench": "advbench/harmful_behaviors.csv",
    "advbench-strings": "advbench/harmful_strings.csv",
    "hh-harmless": "hh-rlhf/harmless-base/test.jsonl.gz",
    "hh-helpful": "hh-rlhf/helpful-base/test.jsonl.gz",
    "truthfulqa": "truthfulqa/TruthfulQA.csv",
    "imdb": "imdb/imdb_test.csv",
}

TASKS = ("hh", "hh-pairs", "advbench", "truthfulqa", "imdb", "table", "demo")


def data_root() -> Path | None:
    """Folder of the evaluation data: $RAINTOOLS_DATA, else `shared/data` next to the repository
    (../shared/data from the repository root), else ./shared/data. None when none exists."""
    env = os.environ.get("RAINTOOLS_DATA")
    candidates = [Path(env).expanduser()] if env else []
    candidates += [Path(__file__).resolve().parents[3] / "shared" / "data",
                   Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def _resolve(path_or_name) -> Path:
    name = str(path_or_name)
    if name in DATASET_NAMES and not Path(name).exists():
        root = data_root()
        if root is None:
            raise DataError(f"Dataset '{name}' needs the evaluation data folder: set RAINTOOLS_DATA "
                            f"to the folder holding {DATASET_NAMES[name]}.")
        return _existing_file(root / DATASET_NAMES[name])
    return _existing_file(name)


def _sniff_columns(path: Path) -> set[str]:
    """Column / key names of the first record, to guess what the file holds."""
    for _, row in _records(path):
        return set(row)
    if _suffix(path) in (".csv", ".csv.gz", ".tsv", ".tsv.gz"):
        return set()
    raise DataError(f"{path}: no records.")


def load_dataset(path_or_name, column: str | None = None, task: str | None = None,
                 limit: int | None = None) -> list[Item] | list[PreferencePair]:
    """Load prompts from a file or a short name, choosing the loader by `task` or by the file's
    shape. Names: 'demo', 'demo-harmful', 'demo-benign', and those in DATASET_NAMES (resolved
    under `data_root()`). Tasks: hh, hh-pairs, advbench, truthfulqa, imdb, table, demo.

    Without a task: chosen/rejected JSONL -> HH-RLHF; goal/target or target-only CSV ->
    AdvBench; Question/Best Answer -> TruthfulQA; text/label -> IMDB; otherwise the `column`
    (or a 'prompt' column) of a table."""
    if task is not None and task not in TASKS:
        raise ConfigError(f"Unknown task '{task}': use one of {', '.join(TASKS)}.")
    name = str(path_or_name)
    if name in ("demo", "demo-harmful", "demo-benign") or task == "demo":
        kind = {"demo-harmful": "harmful", "demo-benign": "benign"}.get(name)
        items = demo_prompts(kind)
        lim = _check_limit(limit)
        return items if lim is None else items[:lim]
    path = _resolve(path_or_name)
    if task == "hh":
        return load_hh_rlhf(path, limit)
    if task == "hh-pairs":
        return load_hh_pairs(path, limit)
    if task == "advbench":
        return load_advbench(path, limit)
    if task == "truthfulqa":
        return load_truthfulqa(path, limit)
    if task == "imdb":
        return load_imdb(path, limit)
    if task == "table" or column is not None:
        if column is None:
            raise ConfigError("task='table' needs column='<prompt column>'.")
        return load_table(path, column, limit)
    cols = _sniff_columns(path)
    if {"chosen", "rejected"} <= cols:
        return load_hh_rlhf(path, limit)
    if "target" in cols and cols <= {"goal", "target"}:
        return load_advbench(path, limit)
    if {"Question", "Best Answer"} <= cols:
        return load_truthfulqa(path, limit)
    if {"text", "label"} <= cols:
        return load_imdb(path, limit)
    if "prompt" in cols:
        return load_table(path, "prompt", limit)
    raise DataError(f"{path}: cannot tell what this file holds (columns: "
                    f"{', '.join(sorted(cols)) or 'none'}); pass column='<prompt column>' or "
                    f"task=... ({', '.join(TASKS)}).")
