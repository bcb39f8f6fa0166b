"""Token shards: exact round trip, resumability, validation, and the `aquila data` commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aquila.cli import main
from aquila.data.shards import (
    MANIFEST_FILE,
    TOKENS_FILE,
    TokenSource,
    load_sources,
    tokenize_source,
)
from aquila.errors import UserError


def write_jsonl(path: Path, texts: list[str]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, english_text, chinese_text) -> dict[str, list[str]]:
    en = [english_text[i : i + 1500] for i in range(0, 60_000, 1500)]
    zh = [chinese_text[i : i + 800] for i in range(0, 24_000, 800)]
    return {"en": en, "zh": zh}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, corpus, tiny_tokenizer) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    out = tmp_path_factory.mktemp("shards")
    write_jsonl(raw / "en.jsonl", corpus["en"])
    (raw / "zh").mkdir()
    write_jsonl(raw / "zh" / "a.jsonl", corpus["zh"][:10])
    write_jsonl(raw / "zh" / "b.jsonl", corpus["zh"][10:])
    tokenize_source("en", [raw / "en.jsonl"], tiny_tokenizer, out, lang="en", show_progress=False)
    tokenize_source("zh", [raw / "zh"], tiny_tokenizer, out, lang="zh", show_progress=False)
    return out


def test_shards_round_trip_every_document(data_dir, corpus, tiny_tokenizer):
    for name in ("en", "zh"):
        src = TokenSource(data_dir / name)
        m = src.manifest
        assert m["documents"] == len(corpus[name]) == src.num_documents
        assert m["bytes"] == sum(len(t.encode()) for t in corpus[name])
        assert m["tokenizer_hash"] == tiny_tokenizer.hash and m["eos_id"] == tiny_tokenizer.eos_id
        assert m["format_version"] == 1 and m["lang"] == name
        raw = np.fromfile(data_dir / name / TOKENS_FILE, dtype="<u4")
        assert len(raw) == src.num_tokens == m["tokens"]
        offsets = src.doc_offsets
        for i, text in enumerate(corpus[name]):
            doc = raw[offsets[i] : offsets[i + 1]]
            assert doc[-1] == tiny_tokenizer.eos_id
            assert tiny_tokenizer.decode(doc[:-1].tolist()) == text
    zh = TokenSource(data_dir / "zh")
    assert [f["documents"] for f in zh.manifest["files"]] == [10, len(corpus["zh"]) - 10]
    assert zh.document_file(9).endswith("a.jsonl") and zh.document_file(10).endswith("b.jsonl")


def test_chunks_overlap_by_one_and_trace_to_documents(data_dir):
    src = TokenSource(data_dir / "en")
    T = 64
    n = src.num_chunks(T)
    assert n == (src.num_tokens - 1) // T
    assert np.array_equal(src.chunk(0, T)[-1:], src.chunk(1, T)[:1])
    assert len(src.chunk(n - 1, T)) == T + 1
    with pytest.raises(IndexError):
        src.chunk(n, T)
    offsets = np.asarray(src.doc_offsets)
    for i in (0, 1, n // 2, n - 1):
        start, end = i * T, i * T + T + 1
        brute = [d for d in range(src.num_documents) if offsets[d] < end and offsets[d + 1] > start]
        assert src.documents_in_chunk(i, T).tolist() == brute


def test_finished_source_is_skipped_unfinished_is_redone(tmp_path, corpus, tiny_tokenizer):
    raw = write_jsonl(tmp_path / "en.jsonl", corpus["en"][:5])
    out = tmp_path / "data"
    first = tokenize_source("en", [raw], tiny_tokenizer, out, show_progress=False)
    mtime = (out / "en" / TOKENS_FILE).stat().st_mtime_ns
    again = tokenize_source("en", [raw], tiny_tokenizer, out, show_progress=False)
    assert again["skipped_existing"] and (out / "en" / TOKENS_FILE).stat().st_mtime_ns == mtime
    # A crash before the manifest leaves partial tokens: the next run starts over.
    (out / "en" / MANIFEST_FILE).unlink()
    with (out / "en" / TOKENS_FILE).open("ab") as f:
        f.write(b"\x01\x02\x03\x04")
    redone = tokenize_source("en", [raw], tiny_tokenizer, out, show_progress=False)
    assert not redone.get("skipped_existing") and redone["tokens"] == first["tokens"]
    assert TokenSource(out / "en").num_tokens == first["tokens"]
    forced = tokenize_source("en", [raw], tiny_tokenizer, out, show_progress=False, force=True)
    assert not forced.get("skipped_existing") and forced["mb_per_s"] > 0


def test_corrupt_shards_and_bad_sources_are_user_errors(tmp_path, data_dir):
    import shutil

    bad = tmp_path / "data"
    shutil.copytree(data_dir, bad)
    tokens = bad / "en" / TOKENS_FILE
    tokens.write_bytes(tokens.read_bytes()[:-8])
    with pytest.raises(UserError, match=r"en/tokens\.bin: .* truncated or corrupt"):
        TokenSource(bad / "en")
    with pytest.raises(UserError, match=r"zh/manifest\.json: source 'zh' was tokenized with"):
        load_sources(data_dir, ["zh"], tokenizer_hash="0123456789abcdef")
    with pytest.raises(UserError, match=r"no finished source nope \(available: en, zh\)"):
        load_sources(data_dir, ["nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"empty: no token sources"):
        load_sources(tmp_path / "empty")
    with pytest.raises(UserError, match=r"data directory not found: .*missing"):
        load_sources(tmp_path / "missing")
    assert sorted(load_sources(data_dir)) == ["en", "zh"]


def test_cli_tokenize_and_inspect(tmp_path, corpus, tiny_tokenizer_dir, capsys):
    raw = write_jsonl(tmp_path / "zh.jsonl", corpus["zh"])
    out = tmp_path / "data"
    rc = main(
        [
            "data",
            "tokenize",
            str(raw),
            "--name",
            "news",
            "--tokenizer",
            str(tiny_tokenizer_dir),
            "--out",
            str(out),
            "--lang",
            "zh",
            "--kind",
            "web",
            "--json",
        ]
    )
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["documents"] == len(corpus["zh"]) and result["lang"] == "zh"
    assert result["mb_per_s"] > 0 and result["tokens"] > result["documents"]

    assert (
        main(
            [
                "data",
                "tokenize",
                str(raw),
                "--name",
                "news",
                "--tokenizer",
                str(tiny_tokenizer_dir),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "already tokenized" in capsys.readouterr().out

    assert main(["data", "inspect", str(out), "--json"]) == 0
    listing = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(s["source"], s["documents"], s["tokens"]) for s in listing["sources"]] == [
        ("news", result["documents"], result["tokens"])
    ]
    assert main(["data", "inspect", str(out)]) == 0
    assert "news" in capsys.readouterr().out


def test_cli_bad_input_exits_2_naming_the_file(
    tmp_path, corpus, tiny_tokenizer_dir, english_text, capsys
):
    from aquila.tokenizer import train_bpe

    out = tmp_path / "data"
    tok = ["--tokenizer", str(tiny_tokenizer_dir), "--out", str(out)]
    assert main(["data", "tokenize", str(tmp_path / "gone.jsonl"), "--name", "x", *tok]) == 2
    assert "gone.jsonl" in capsys.readouterr().err

    raw = write_jsonl(tmp_path / "en.jsonl", corpus["en"][:4])
    assert main(["data", "tokenize", str(raw), "--name", "en", *tok]) == 0
    capsys.readouterr()
    # Another tokenizer cannot silently reuse (or mix with) shards made by this one.
    other = train_bpe([english_text[:20_000]], vocab_size=300).save(tmp_path / "other-tok")
    rc = main(
        ["data", "tokenize", str(raw), "--name", "en", "--tokenizer", str(other), "--out", str(out)]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "en/manifest.json" in err and "--force" in err

    tokens = out / "en" / TOKENS_FILE
    tokens.write_bytes(tokens.read_bytes()[:-4])
    assert main(["data", "inspect", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aquila: error:") and "en/tokens.bin" in err and "truncated" in err


def test_long_documents_are_encoded_in_pieces_as_a_whole(
    tmp_path, monkeypatch, english_text, chinese_text, tiny_tokenizer
):
    import aquila.data.encode as encode

    # Small pieces and batches, so documents span many pieces and batches.
    monkeypatch.setattr(encode, "PIECE_CHARS", 300)
    monkeypatch.setattr(encode, "BATCH_CHARS", 1000)
    one_line = english_text[:15_000].replace("\n", " ") + chinese_text[:5_000]
    texts = ["In the beginning", one_line, chinese_text[5_000:5_900], english_text[20_000:21_000]]
    raw = write_jsonl(tmp_path / "docs.jsonl", texts)
    m = tokenize_source("long", [raw], tiny_tokenizer, tmp_path / "out", show_progress=False)
    src = TokenSource(tmp_path / "out" / "long")
    assert m["documents"] == 4 and m["bytes"] == sum(len(t.encode()) for t in texts)
    expected = [np.asarray([*tiny_tokenizer.encode(t), tiny_tokenizer.eos_id]) for t in texts]
    assert np.array_equal(np.asarray(src.tokens), np.concatenate(expected))
    assert src.doc_offsets.tolist() == np.cumsum([0, *map(len, expected)]).tolist()


def test_workers_write_the_same_shard_byte_for_byte(
    tmp_path, monkeypatch, corpus, english_text, tiny_tokenizer_dir, capsys
):
    import aquila.data.encode as encode

    monkeypatch.setattr(encode, "BATCH_CHARS", 4000)  # many batches, several per worker
    raw = tmp_path / "raw"
    raw.mkdir()
    write_jsonl(raw / "a.jsonl", corpus["en"] + [english_text[:30_000].replace("\n", " ")])
    write_jsonl(raw / "b.jsonl", corpus["zh"])
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"out{workers}"
        args = ["data", "tokenize", str(raw), "--name", "mix", "--tokenizer"]
        args += [str(tiny_tokenizer_dir), "--out", str(out), "--json", "--workers", str(workers)]
        assert main(args) == 0
        m = json.loads(capsys.readouterr().out)
        assert (
            m["workers"] == workers
            and m["mb_per_s"] > 0
            and "workers" not in json.loads((out / "mix" / MANIFEST_FILE).read_text())
        )
        # .scan.json (the cached token scan) holds the files' modification times.
        outs[workers] = {p.name: p.read_bytes() for p in (out / "mix").glob("[!.]*")}
    assert outs[1] == outs[2] and sorted(outs[1]) == ["doc_offsets.npy", MANIFEST_FILE, TOKENS_FILE]
    assert (
        main(
            [
                "data",
                "tokenize",
                str(raw),
                "--name",
                "x",
                "--tokenizer",
                str(tiny_tokenizer_dir),
                "--out",
                str(tmp_path / "o"),
                "--workers",
                "0",
            ]
        )
        == 2
    )
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err
