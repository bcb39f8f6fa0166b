"""Malformed benchmark files through `aquila eval`: each is refused with one line naming the
file, the line and the field (exit 2) before any model is loaded, and the run is unchanged."""

from __future__ import annotations

import json
import shutil

import pytest

from aquila.cli import main

HEADER = "id,question,A,B,C,D,answer\n"
GOOD_HS = {"ctx": "A man sits. He", "endings": ["runs.", "eats.", "sits.", "is."], "label": 1}


def _jsonl(*rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


# (format, file name, content, what the one line must hold besides the file name)
CASES = [
    ("mmlu", "x_test.csv", b"q,a,b,c,d,A\n\xff\xfeq,a,b,c,d,B\n", ["x_test.csv:2:", "UTF-8"]),
    ("ceval", "x_val.csv", (HEADER + "1,q,a,b,c,d\n").encode(), [":2:", "'answer' missing"]),
    ("ceval", "x_val.csv", b"", ["no rows"]),
    ("ceval", "x_val.csv", HEADER.encode(), ["no rows below the header"]),
    ("mmlu", "x_test.csv", b"", ["no rows"]),
    ("mmlu", "x_test.csv", b"q,a,b,c,d,E\n", [":1:", "field 'answer'", "'E'"]),
    ("mmlu", "x_test.csv", b"q,a,b,c,d\n", [":1:", "expected 6 fields"]),
    ("ceval", "x_test.csv", (HEADER + "1,q,a,b,c,d,\n").encode(), [":2:", "'answer'", "split"]),
    ("hellaswag", "hs.jsonl", _jsonl({**GOOD_HS, "label": "one"}), [":1:", "'label'", "'one'"]),
    ("hellaswag", "hs.jsonl", _jsonl(GOOD_HS, {**GOOD_HS, "ctx": 5}), [":2:", "'ctx'", "string"]),
    ("hellaswag", "hs.jsonl", _jsonl({**GOOD_HS, "endings": "notalist"}), [":1:", "'endings'"]),
    ("hellaswag", "hs.jsonl", _jsonl({**GOOD_HS, "endings": ["a", 2]}), ["'endings'[1]"]),
    ("hellaswag", "hs.jsonl", _jsonl({**GOOD_HS, "label": 4}), ["'label' = 4", "out of range"]),
    ("hellaswag", "hs.jsonl", _jsonl({**GOOD_HS, "label": True}), ["'label'", "boolean"]),
    ("hellaswag", "hs.jsonl", b"", ["no records"]),
    ("hellaswag", "hs.jsonl", b'{"ctx": "\xff"}\n', [":1:", "UTF-8"]),
    ("mc", "m.jsonl", _jsonl({"query": "q", "choices": ["a", "b"], "gold": 2}), ["'gold' = 2"]),
    ("mc", "m.jsonl", _jsonl({"query": "q", "choices": ["a", 3], "gold": 0}), ["'choices'[1]"]),
    ("mc", "m.jsonl", _jsonl({"query": 1, "choices": ["a", "b"], "gold": 0}), ["'query'"]),
    ("mc", "m.jsonl", _jsonl([1, 2]), [":1:", "JSON object"]),
    (
        "arc",
        "arc.jsonl",
        _jsonl(
            {
                "question": {"stem": "Q", "choices": [{"label": "A", "text": "x"}] * 2},
                "answerKey": "A",
            }
        ),
        ["repeats a label"],
    ),
    (
        "arc",
        "arc.jsonl",
        _jsonl({"question": {"stem": "Q", "choices": "AB"}, "answerKey": "A"}),
        ["'question.choices'"],
    ),
    ("gsm8k", "g.jsonl", _jsonl({"question": "1+1?", "answer": "It is 2."}), ["'answer'", "####"]),
    ("gsm8k", "g.jsonl", _jsonl({"question": "1+1?", "answer": 2}), ["'answer'", "string"]),
]


@pytest.fixture
def run_dir(eval_model_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(eval_model_dir, run / "checkpoints" / "step-00000010")
    return run


def _tree(path):
    return sorted(
        (str(p.relative_to(path)), p.read_bytes()) for p in path.rglob("*") if p.is_file()
    )


@pytest.mark.parametrize(
    "fmt,name,content,expected", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)]
)
def test_malformed_file_is_refused_before_scoring(
    fmt, name, content, expected, run_dir, tmp_path, capsys, monkeypatch
):
    import aquila.eval.runner as runner

    def no_model(*a, **k):
        raise AssertionError("the model was loaded for a malformed file")

    monkeypatch.setattr(runner, "load_lm", no_model)
    f = tmp_path / name
    f.write_bytes(content)
    before = _tree(run_dir)
    assert main(["eval", str(run_dir), "--tasks", f"{fmt}:{f}", "--quiet"]) == 2
    captured = capsys.readouterr()
    lines = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("aquila: error: "), captured.err
    assert str(f) in lines[0]
    for part in expected:
        assert part in lines[0], (part, lines[0])
    assert captured.out == ""
    assert _tree(run_dir) == before
