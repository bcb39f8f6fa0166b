"""From the catalog to token shards: `aquila data tokenize --workspace` reads each source's last
finished stage, so only documents that survived cleaning and dedup reach training."""

from __future__ import annotations

import json

from aquila.cli import main
from aquila.data.shards import load_sources


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    return path


def test_tokenize_workspace_reads_deduplicated_parts(
    tmp_path, capsys, english_text, chinese_text, tiny_tokenizer_dir
):
    paragraphs = [p for p in english_text.split("\n") if len(p) > 400][:40]
    en = _jsonl(tmp_path / "en.jsonl", paragraphs + paragraphs[:5])  # 5 exact duplicates
    zh_lines = [line for line in chinese_text.split("\n") if len(line) > 60][:40]
    zh = _jsonl(tmp_path / "zh.jsonl", ["\n".join(zh_lines[i : i + 4]) for i in range(0, 40, 4)])
    ws = tmp_path / "ws"
    for name, path, lang in (("bible", en, "en"), ("news", zh, "zh")):
        assert (
            main(
                [
                    "data",
                    "add",
                    name,
                    str(path),
                    "--lang",
                    lang,
                    "--kind",
                    "book",
                    "--workspace",
                    str(ws),
                ]
            )
            == 0
        )
    assert main(["data", "clean", "--workspace", str(ws), "--json"]) == 0
    capsys.readouterr()
    assert main(["data", "dedup", "--workspace", str(ws), "--json"]) == 0
    dedup = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert dedup["documents_removed"].get("exact_duplicate", 0) >= 1

    out = tmp_path / "shards"
    argv = [
        "data",
        "tokenize",
        "--workspace",
        str(ws),
        "--tokenizer",
        str(tiny_tokenizer_dir),
        "--out",
        str(out),
        "--json",
    ]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    docs = {m["source"]: m["documents"] for m in result["sources"]}
    # Exactly the documents the last stage kept, nothing that cleaning or dedup removed.
    assert sum(docs.values()) == dedup["documents_kept"]
    assert docs["bible"] <= 40 and docs["news"] > 0
    sources = load_sources(out)
    assert {s.manifest["lang"] for s in sources.values()} == {"en", "zh"}

    # Idempotent: a second run finds both sources finished and writes nothing.
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(m.get("skipped_existing") for m in again["sources"])


def test_tokenize_needs_inputs_or_workspace(tmp_path, capsys, tiny_tokenizer_dir):
    assert (
        main(["data", "tokenize", "--tokenizer", str(tiny_tokenizer_dir), "--out", str(tmp_path)])
        == 2
    )
    assert "give INPUT files with --name, or --workspace DIR" in capsys.readouterr().err
    assert (
        main(
            [
                "data",
                "tokenize",
                "--workspace",
                str(tmp_path / "none"),
                "--tokenizer",
                str(tiny_tokenizer_dir),
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "no catalog.sqlite" in capsys.readouterr().err
