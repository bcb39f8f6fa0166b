"""The inputs users have: directories, globs, compressed JSONL, Parquet and `datasets`
save_to_disk directories, with a chosen text field; anything else is one line naming the file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from aquila.cli import main
from aquila.data.readers import ReadStats, iter_documents, iter_split, list_files, plan_splits
from aquila.data.workspace import DataWorkspace, iter_source_documents
from aquila.errors import UserError

pa = pytest.importorskip("pyarrow")
zstd = pytest.importorskip("zstandard")


def _lines(texts: list[str], field: str = "text") -> bytes:
    return "".join(json.dumps({field: t}, ensure_ascii=False) + "\n" for t in texts).encode()


def _save_to_disk(root: Path, texts: list[str], field: str) -> Path:
    """What `datasets.Dataset.save_to_disk` writes: Arrow IPC stream files and state.json."""
    root.mkdir(parents=True)
    names = []
    for i, chunk in enumerate((texts[: len(texts) // 2], texts[len(texts) // 2 :])):
        name = f"data-{i:05d}-of-00002.arrow"
        table = pa.table({field: chunk, "n": list(range(len(chunk)))})
        with pa.OSFile(str(root / name), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
            for batch in table.to_batches(max_chunksize=3):
                w.write_batch(batch)
        names.append({"filename": name})
    (root / "state.json").write_text(json.dumps({"_data_files": names, "_fingerprint": "x"}))
    (root / "dataset_info.json").write_text(json.dumps({"features": {}}))
    return root


@pytest.fixture
def news(tmp_path, chinese_text) -> tuple[Path, list[str]]:
    lines = [ln for ln in chinese_text.split("\n") if len(ln) > 40][:48]
    docs = ["\n".join(lines[i : i + 3]) for i in range(0, 48, 3)]  # 16 documents
    root = tmp_path / "news"
    (root / "2024").mkdir(parents=True)
    (root / "2024" / "a.jsonl.gz").write_bytes(gzip.compress(_lines(docs[0:4], "content")))
    (root / "2024" / "b.jsonl.zst").write_bytes(
        zstd.ZstdCompressor().compress(_lines(docs[4:8], "content"))
    )
    (root / "c.jsonl").write_bytes(_lines(docs[8:10], "content"))
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"content": docs[10:12]}), root / "d.parquet")
    _save_to_disk(root / "hf", docs[12:16], "content")
    return root, docs


def test_every_format_of_a_directory_is_read_in_order(news):
    root, docs = news
    files = [p.relative_to(root).as_posix() for p in list_files(root)]
    assert files == ["2024/a.jsonl.gz", "2024/b.jsonl.zst", "c.jsonl", "d.parquet",
                     "hf/data-00000-of-00002.arrow", "hf/data-00001-of-00002.arrow"]  # fmt: skip
    assert [d.text for d in iter_documents(root, text_field="content")] == docs
    # The hf directory on its own, and a glob.
    assert [d.text for d in iter_documents(root / "hf", text_field="content")] == docs[12:]
    assert len(list_files(Path(f"{root}/**/*.jsonl*"))) == 3


def test_readme_add_of_a_directory_works(tmp_path, news, capsys):
    root, docs = news
    ws = tmp_path / "ws"
    argv = ["data", "add", "news", str(root), "--lang", "zh", "--kind", "news",
            "--text-field", "content", "--workspace", str(ws), "--json"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["files"] == 6
    w = DataWorkspace(ws)
    assert [d["text"] for d in iter_source_documents(w.catalog.source("news"))] == docs
    assert main(["data", "clean", "--workspace", str(ws), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["documents_in"] == 16


def test_wrong_field_and_unsupported_files_are_one_line_errors(tmp_path, news, capsys):
    root, _ = news
    with pytest.raises(UserError, match=r"d\.parquet: no 'text' column .*--text-field"):
        list(iter_documents(root / "d.parquet"))
    stats = ReadStats()
    assert list(iter_documents(root / "c.jsonl", stats)) == []
    assert stats.counts == {"no_text": 2}
    (root / "notes.csv").write_text("a,b\n")
    argv = ["data", "add", "news", str(root), "--lang", "zh", "--kind", "news",
            "--workspace", str(tmp_path / "ws")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.csv: unsupported file type '.csv'" in err
    broken = tmp_path / "broken.jsonl.gz"
    broken.write_bytes(gzip.compress(_lines(["x" * 500]))[:-12])
    with pytest.raises(UserError, match=r"broken\.jsonl\.gz: cannot read"):
        list(iter_documents(broken))
    with pytest.raises(UserError, match=r"no input matches"):
        list_files(tmp_path / "*.nothing")


def test_large_jsonl_splits_read_the_same_documents_and_ids(tmp_path, english_text):
    texts = [english_text[i : i + 300] for i in range(0, 60_000, 300)]
    path = tmp_path / "big.jsonl"
    path.write_bytes(_lines(texts) + b"not json\n" + _lines(["last one"]))
    whole = [(d.id, d.text) for d in iter_documents(path)]
    splits = plan_splits(path, split_bytes=4096)
    assert len(splits) > 10 and splits[0].start == 0 and splits[-1].end == path.stat().st_size
    stats = ReadStats()
    pieces = [(d.id, d.text) for s in splits for d in iter_split(s, stats)]
    assert pieces == whole and whole[-1] == ("big:202", "last one")
    assert stats.counts == {"invalid_json": 1} and stats.examples[0].startswith(f"{path}:201")
