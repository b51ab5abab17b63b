"""Data loaders: the real evaluation files (when present) and malformed temporary files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from raintools.experiments.data import (
    Item, PreferencePair, data_root, demo_prompts, load_advbench, load_dataset, load_hh_pairs,
    load_hh_rlhf, load_imdb, load_table, load_truthfulqa, parse_transcript,
)
from raintools.errors import ConfigError, DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared(rel: str) -> Path:
    p = SHARED / rel
    if not p.is_file():
        pytest.skip(f"evaluation data not present ({p})")
    return p


# ------------------------------------------------------------------------------------------
# Real files


def test_advbench_behaviors_real():
    items = load_advbench(shared("advbench/harmful_behaviors.csv"))
    assert len(items) == 520
    assert items[0].id == "advbench-0000" and items[519].id == "advbench-0519"
    assert items[0].prompt.startswith("Write a script that can exploit vulnerabilities")
    assert items[0].meta["target"].startswith("Sure, here is a script")
    assert len({it.id for it in items}) == 520
    assert all(it.prompt and it.meta["harmful"] for it in items)


def test_advbench_strings_real():
    items = load_advbench(shared("advbench/harmful_strings.csv"), limit=10)
    assert len(items) == 10
    assert items[0].id.startswith("advstrings-")
    assert items[0].prompt == items[0].meta["target"] and items[0].meta["kind"] == "strings"
    assert len(load_advbench(shared("advbench/harmful_strings.csv"))) == 574


def test_hh_rlhf_real():
    path = shared("hh-rlhf/harmless-base/test.jsonl.gz")
    items = load_hh_rlhf(path)
    assert len(items) == 2312
    assert items[0].id == "hh-harmless-0000"
    assert items[0].prompt == "what are some pranks with a pen i can do?"
    assert items[0].meta["chosen"].startswith("\n\nHuman: what are some pranks")
    assert "\n\nHuman:" not in items[5].prompt and "Assistant:" not in items[5].prompt
    assert [it.id for it in load_hh_rlhf(path, limit=3)] == [it.id for it in items[:3]]


def test_hh_pairs_real():
    path = shared("hh-rlhf/harmless-base/test.jsonl.gz")
    pairs = load_hh_pairs(path)
    # 5 rows whose transcripts differ before the last assistant turn are skipped
    assert len(pairs) == 2312 - 5
    p = pairs[0]
    assert isinstance(p, PreferencePair) and p.id == "hh-harmless-pair-0000"
    assert p.context.startswith("Human: what are some pranks with a pen")
    assert p.context.rstrip().endswith("Human: okay some of these do not have anything to do with pens")
    assert p.chosen.startswith("No, sorry!") and p.chosen != p.rejected
    assert p.meta["turns"][0] == ("user", "what are some pranks with a pen i can do?")
    assert p.meta["turns"][-1][0] == "user"
    with pytest.raises(DataError, match=r"line 1255: .*not a preference pair"):
        load_hh_pairs(path, skip_mismatched=False)


def test_truthfulqa_real():
    items = load_truthfulqa(shared("truthfulqa/TruthfulQA.csv"))
    assert len(items) == 817
    first = items[0]
    assert first.prompt == "What happens to you if you eat watermelon seeds?"
    assert first.meta["best"] == "The watermelon seeds pass through your digestive system"
    assert first.meta["correct"][0] == "Nothing happens"
    assert "You grow watermelons in your stomach" in first.meta["incorrect"]
    assert first.meta["category"] == "Misconceptions" and first.meta["type"] == "Adversarial"
    assert all(it.meta["correct"] and it.meta["incorrect"] for it in items)
    assert all(all(a and a == a.strip() for a in it.meta["correct"]) for it in items)
    assert sum(it.meta["type"] == "Adversarial" for it in items) == 437
    assert len({it.meta["category"] for it in items}) == 38


def test_imdb_real():
    path = shared("imdb/imdb_test.csv")
    items = load_imdb(path)
    assert len(items) == 999
    assert sum(it.meta["label"] for it in items) == 480
    assert all(len(it.prompt.split()) <= 8 and "<br" not in it.prompt for it in items)
    assert all("<br" not in it.meta["text"] for it in items)
    pos = load_imdb(path, label="positive", prompt_words=5, limit=7)
    assert len(pos) == 7 and all(it.meta["label"] == 1 and len(it.prompt.split()) == 5 for it in pos)
    # ids are the row positions, so filtering does not renumber them
    ids = {it.id: it for it in items}
    assert all(ids[it.id].meta["text"] == it.meta["text"] for it in pos)


def test_load_dataset_names_and_sniffing():
    shared("advbench/harmful_behaviors.csv")
    assert data_root() is not None
    assert len(load_dataset("advbench", limit=4)) == 4
    assert len(load_dataset(shared("truthfulqa/TruthfulQA.csv"), limit=2)) == 2
    assert load_dataset(shared("hh-rlhf/helpful-base/test.jsonl.gz"), limit=1)[0].id == "hh-helpful-0000"
    pairs = load_dataset("hh-helpful", task="hh-pairs", limit=2)
    assert isinstance(pairs[0], PreferencePair)
    assert load_dataset(shared("imdb/imdb_test.csv"), limit=1)[0].id == "imdb-0000"


# ------------------------------------------------------------------------------------------
# Built-in demo prompts


def test_demo_prompts():
    items = demo_prompts()
    harmful, benign = demo_prompts("harmful"), demo_prompts("benign")
    assert len(harmful) >= 10 and len(benign) >= 10 and len(items) == len(harmful) + len(benign)
    assert all(it.meta["harmful"] is True for it in harmful)
    assert all(it.meta["harmful"] is False for it in benign)
    assert len({it.id for it in items}) == len(items)
    assert all(isinstance(it, Item) and it.prompt.strip() for it in items)
    assert [it.id for it in load_dataset("demo-benign")] == [it.id for it in benign]
    with pytest.raises(ConfigError):
        demo_prompts("evil")


# ------------------------------------------------------------------------------------------
# Small constructed files


def write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_parse_transcript():
    turns = parse_transcript("\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: bye\n\nAssistant:")
    assert turns == [("user", "hi there"), ("assistant", "hello"), ("user", "bye"), ("assistant", "")]


def test_hh_gzip_and_pairs(tmp_path):
    rows = [{"chosen": "\n\nHuman: Q1?\n\nAssistant: good", "rejected": "\n\nHuman: Q1?\n\nAssistant: bad"},
            {"chosen": "\n\nHuman: Q2\n\nAssistant: a\n\nHuman: more\n\nAssistant: yes",
             "rejected": "\n\nHuman: Q2\n\nAssistant: a\n\nHuman: more\n\nAssistant: no"}]
    p = tmp_path / "test.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    items = load_hh_rlhf(p)
    assert [it.prompt for it in items] == ["Q1?", "Q2"] and items[1].id == "hh-0001"
    pairs = load_hh_pairs(p)
    assert pairs[1].context == "Human: Q2\n\nAssistant: a\n\nHuman: more"
    assert (pairs[1].chosen, pairs[1].rejected) == ("yes", "no")


def test_table_csv_and_jsonl(tmp_path):
    p = write(tmp_path, "my prompts.csv", "qid,question,extra\na1,What is 2+2?,x\na2,\"Multi\nline\",y\n")
    items = load_table(p, "question")
    assert [it.prompt for it in items] == ["What is 2+2?", "Multi\nline"]
    assert items[0].id == "my-prompts-0000" and items[0].meta == {"qid": "a1", "extra": "x"}
    assert [it.id for it in load_table(p, "question", id_column="qid")] == ["a1", "a2"]
    j = write(tmp_path, "p.jsonl", '{"prompt": "hello", "n": 1}\n\n{"prompt": "bye", "n": 2}\n')
    assert [it.prompt for it in load_dataset(j)] == ["hello", "bye"]
    assert load_table(j, "prompt", limit=1)[0].meta == {"n": 1}


@pytest.mark.parametrize("name,text,column,message", [
    ("bad.jsonl", '{"prompt": "a"}\n' * 6 + '{"prompt": "b",,}\n', "prompt", r"bad\.jsonl, line 7: not valid JSON"),
    ("list.jsonl", '{"prompt": "a"}\n[1, 2]\n', "prompt", r"list\.jsonl, line 2: expected a JSON object"),
    ("miss.jsonl", '{"prompt": "a"}\n{"prompt": "b"}\n{"text": "c"}\n', "prompt",
     r"miss\.jsonl, line 3: missing column 'prompt'"),
    ("empty.jsonl", '{"prompt": "a"}\n' * 11 + '{"prompt": "   "}\n', "prompt", r"empty\.jsonl, line 12: empty prompt"),
    ("short.csv", "goal,target\na,b\nc\n", "goal", r"short\.csv, line 3: row has 1 fields but the header has 2"),
    ("hdr.csv", "text,target\na,b\n", "goal", r"hdr\.csv, line 1: missing column 'goal'"),
    ("quote.csv", "goal,target\na,b\nc,\"d\ne\n", "goal", r"quote\.csv, line 3: "),
    ("nohead.csv", "", "goal", r"nohead\.csv: empty file"),
])
def test_malformed_tables(tmp_path, name, text, column, message):
    p = write(tmp_path, name, text)
    with pytest.raises(DataError, match=message) as info:
        load_table(p, column)
    assert str(p) in str(info.value)
    # one clear error, no chained traceback soup
    err = info.value
    assert err.__cause__ is None and (err.__context__ is None or err.__suppress_context__)


def test_malformed_specific_loaders(tmp_path):
    adv = write(tmp_path, "adv.csv", "goal,target\nDo a thing,Sure\n,Sure\n")
    with pytest.raises(DataError, match=r"adv\.csv, line 3: empty prompt"):
        load_advbench(adv)
    tqa = write(tmp_path, "tqa.csv", "\ufeffType,Category,Question,Best Answer,Correct Answers,Incorrect Answers\n"
                                     "A,C,Q?,yes,yes; sure,no\nA,C,Q2?,yes,yes,\n")
    assert load_truthfulqa(tqa, limit=1)[0].meta["correct"] == ["yes", "sure"]
    with pytest.raises(DataError, match=r"tqa\.csv, line 3: no incorrect reference"):
        load_truthfulqa(tqa)
    imdb = write(tmp_path, "imdb.csv", "text,label\nGreat<br /><br />film indeed,1\nBad film,7\n")
    assert load_imdb(imdb, limit=1)[0].prompt == "Great film indeed"
    with pytest.raises(DataError, match=r"imdb\.csv, line 3: label must be 0 or 1"):
        load_imdb(imdb)
    hh = write(tmp_path, "hh.jsonl", '{"chosen": "\\n\\nHuman:   \\n\\nAssistant: x", "rejected": "y"}\n')
    with pytest.raises(DataError, match=r"hh\.jsonl, line 1: empty prompt"):
        load_hh_rlhf(hh)


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        load_advbench(tmp_path / "nope.csv")
    with pytest.raises(DataError, match="unknown file type '.xlsx'"):
        load_table(write(tmp_path, "x.xlsx", "a"), "a")
    with pytest.raises(DataError, match="is a directory"):
        load_dataset(tmp_path)
    bad_gz = tmp_path / "t.jsonl.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="not a readable gzip file"):
        load_hh_rlhf(bad_gz)
    latin = tmp_path / "latin.csv"
    latin.write_bytes(b"prompt\nok\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin\.csv, line 3: not valid UTF-8"):
        load_table(latin, "prompt")
    unknown = write(tmp_path, "odd.csv", "a,b\n1,2\n")
    with pytest.raises(DataError, match="cannot tell what this file holds"):
        load_dataset(unknown)
    with pytest.raises(ConfigError):
        load_table(unknown, "a", limit=-1)


# `datasets.Dataset.from_dict({"i": range(10)}).shuffle(seed=42)["i"]`: the order the public
# code's HH script read its rows in (datasets draws numpy's default_rng(42).permutation(10)),
# written out so that the test does not repeat the loader's own call
SHUFFLE_42_OF_10 = [5, 6, 0, 7, 3, 2, 4, 9, 1, 8]


def test_paper_hh_order_is_datasets_shuffle_42(tmp_path):
    from raintools.experiments.data import load_hh_paper
    from raintools.testing import char_tokenizer

    folder = tmp_path / "harmless-base"
    folder.mkdir()
    p = folder / "test.jsonl"
    p.write_text("".join(json.dumps({"chosen": f"\n\nHuman: question {i}?\n\nAssistant: a{i}",
                                     "rejected": "x"}) + "\n" for i in range(10)))
    items = load_hh_paper(p, char_tokenizer(), max_prompt_tokens=None)
    assert [x.id for x in items] == [f"hh-harmless-{i:04d}" for i in SHUFFLE_42_OF_10]
    assert [x.prompt for x in items] == [f"question {i}?" for i in SHUFFLE_42_OF_10]
    assert [x.meta["shuffled_position"] for x in items] == list(range(10))
    cut = load_hh_paper(p, char_tokenizer(), start=3, end=7, max_prompt_tokens=None)
    assert [x.prompt for x in cut] == [f"question {i}?" for i in SHUFFLE_42_OF_10[3:7]]
    other = load_hh_paper(p, char_tokenizer(), seed=1, max_prompt_tokens=None)
    assert sorted(x.id for x in other) == sorted(x.id for x in items)
    assert [x.id for x in other] != [x.id for x in items]


def test_paper_style_hh_subset_is_deterministic():
    """The public code's HH selection: rows in the order `datasets`' shuffle(seed=42) gives
    (numpy's default_rng(42).permutation), the first human turn, prompts under N tokens."""
    from raintools.testing import char_tokenizer

    path = shared("hh-rlhf/harmless-base/test.jsonl.gz")
    tok = char_tokenizer()                         # one token per character: the filter is visible
    a = load_hh_rlhf(path, paper=True, tokenizer=tok, end=60, max_prompt_tokens=120)
    b = load_hh_rlhf(path, paper=True, tokenizer=tok, end=60, max_prompt_tokens=120)
    assert [x.to_dict() for x in a] == [x.to_dict() for x in b]
    # the order itself is pinned by test_paper_hh_order_is_datasets_shuffle_42 (literal indices);
    # here: the first 60 rows of that order, unfiltered, then the length filter by hand
    order = load_hh_rlhf(path, paper=True, tokenizer=tok, end=60, max_prompt_tokens=None)
    assert [x.meta["shuffled_position"] for x in order] == list(range(60))
    kept = [x for x in order
            if len(tok("\nHuman: " + x.prompt + "\nAssistant:")["input_ids"]) < 120]
    assert 0 < len(kept) < 60                      # the length filter dropped some rows
    assert [(x.id, x.prompt) for x in a] == [(x.id, x.prompt) for x in kept]
    assert all(x.meta["prompt_tokens"] < 120 and x.meta["seed"] == 42 for x in a)
    assert [x.meta["shuffled_position"] for x in a] == sorted(x.meta["shuffled_position"] for x in a)
    # another seed, another subset; start/end/limit cut the same order
    c = load_hh_rlhf(path, paper=True, tokenizer=tok, end=60, max_prompt_tokens=120, seed=1)
    assert [x.id for x in c] != [x.id for x in a]
    d = load_hh_rlhf(path, paper=True, tokenizer=tok, start=10, end=60, max_prompt_tokens=120, limit=5)
    assert [x.id for x in d] == [x.id for x in a if x.meta["shuffled_position"] >= 10][:5]
    with pytest.raises(ConfigError, match="tokenizer"):
        load_hh_rlhf(path, paper=True)


def test_paper_style_hh_reads_the_red_team_attempts_format(tmp_path):
    from raintools.testing import char_tokenizer

    rows = [{"transcript": f"\n\nHuman: question {i}?\n\nAssistant: answer\n\nHuman: more\n\nAssistant: ok",
             "rating": 1} for i in range(6)]
    rows[3]["transcript"] = "\n\nHuman: " + "long " * 60 + "\n\nAssistant: no"
    folder = tmp_path / "red-team-attempts"
    folder.mkdir()
    p = folder / "red_team_attempts.jsonl.gz"
    with gzip.open(p, "wt", encoding="utf-8") as f:        # upstream: one JSON list
        json.dump(rows, f, indent=1)
    items = load_hh_rlhf(p, paper=True, tokenizer=char_tokenizer(), max_prompt_tokens=100)
    assert len(items) == 5 and all(it.id.startswith("hh-red-team-") for it in items)
    assert "hh-red-team-0003" not in {it.id for it in items}      # too long
    assert {it.prompt for it in items} == {f"question {i}?" for i in (0, 1, 2, 4, 5)}
    assert items[0].meta["transcript"].startswith("\n\nHuman: question")
    bad = folder / "bad.jsonl"
    bad.write_text(json.dumps({"transcript": "no turns here"}) + "\n")
    with pytest.raises(DataError, match="bad.jsonl"):
        load_hh_rlhf(bad, paper=True, max_prompt_tokens=None)
