"""Readers: every supported format, skipped records counted, bad input named in one line."""

from __future__ import annotations

import json

import pytest

from aquila.data.readers import ReadStats, iter_documents
from aquila.errors import UserError


def test_txt_is_one_document(tmp_path, english_text):
    path = tmp_path / "kjv.txt"
    path.write_text(english_text[:5000], encoding="utf-8")
    docs = list(iter_documents(path))
    assert len(docs) == 1
    assert docs[0].text == english_text[:5000] and docs[0].id == "kjv"


def test_jsonl_skips_bad_lines_with_line_numbers(tmp_path, chinese_text):
    lines = chinese_text.splitlines()[:5]
    path = tmp_path / "news.jsonl"
    with path.open("w", encoding="utf-8") as f:
        f.write(json.dumps({"id": "a", "text": lines[0]}, ensure_ascii=False) + "\n")
        f.write("\n")  # blank lines are not records
        f.write(json.dumps({"text": lines[1]}, ensure_ascii=False) + "\n")
        f.write(json.dumps({"title": "no text"}) + "\n")
        f.write(json.dumps({"text": "   "}) + "\n")
        f.write(json.dumps({"text": "\ud800 lone surrogate"}) + "\n")
        f.write('{"text": "' + lines[2][:10])  # truncated last line
    stats = ReadStats()
    docs = list(iter_documents(path, stats))
    assert [d.text for d in docs] == lines[:2]
    assert [d.id for d in docs] == ["a", "news:3"]
    assert stats.counts == {"no_text": 1, "empty": 1, "invalid_unicode": 1, "invalid_json": 1}
    assert f"{path}:7: invalid_json" in stats.examples
    assert f"{path}:4: no_text" in stats.examples


def test_parquet_text_column(tmp_path, english_text):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = [english_text[i : i + 300] for i in range(0, 3000, 300)]
    table = pa.table({"text": [*texts, None, ""], "id": list(range(len(texts) + 2))})
    path = tmp_path / "kjv.parquet"
    pq.write_table(table, path, row_group_size=4)
    stats = ReadStats()
    docs = list(iter_documents(path, stats))
    assert [d.text for d in docs] == texts
    assert [d.id for d in docs] == [str(i) for i in range(len(texts))]
    assert stats.counts == {"no_text": 1, "empty": 1}

    bad = tmp_path / "notext.parquet"
    pq.write_table(pa.table({"body": ["x"]}), bad)
    with pytest.raises(UserError, match=r"notext\.parquet.*no 'text' column"):
        list(iter_documents(bad))
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(UserError, match=r"corrupt\.parquet"):
        list(iter_documents(corrupt))


def test_directory_is_walked_recursively_in_sorted_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b" / "2.txt").write_text("two")
    (tmp_path / "a" / "deep" / "1.txt").write_text("one")
    (tmp_path / "a" / "0.jsonl").write_text('{"text": "zero"}\n')
    (tmp_path / "c.txt").write_text("")  # empty file: nothing, counted
    (tmp_path / ".hidden").write_text("ignored")
    stats = ReadStats()
    assert [d.text for d in iter_documents(tmp_path, stats)] == ["zero", "one", "two"]
    assert stats.counts == {"empty_file": 1}


def test_bad_inputs_are_user_errors_naming_the_file(tmp_path):
    with pytest.raises(UserError, match=r"input not found: .*nope\.txt"):
        list(iter_documents(tmp_path / "nope.txt"))
    binary = tmp_path / "img.txt"
    binary.write_bytes(b"GIF89a\x00\x01\x02")
    with pytest.raises(UserError, match=r"img\.txt: binary file \(NUL byte at offset 6\)"):
        list(iter_documents(binary))
    latin = tmp_path / "latin.jsonl"
    latin.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(UserError, match=r"latin\.jsonl: not valid UTF-8 at byte offset 28"):
        list(iter_documents(latin))
    csv = tmp_path / "table.csv"
    csv.write_text("a,b\n")
    with pytest.raises(UserError, match=r"table\.csv: unsupported file type '\.csv'"):
        list(iter_documents(csv))
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "notes.md").write_text("x")
    with pytest.raises(UserError, match=r"notes\.md: unsupported"):
        list(iter_documents(tmp_path / "dir"))
