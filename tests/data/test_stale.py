"""Nothing stale reaches training: every stage records what it read, and a source added,
replaced or re-cleaned after a later stage is refused (naming the stage to run) until the later
stages have run again."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aquila.cli import main
from aquila.data.clean import CleanConfig
from aquila.data.dedup import DedupConfig
from aquila.data.pipeline import Pipeline
from aquila.data.quality import QualityConfig
from aquila.data.workspace import DataWorkspace
from aquila.errors import UserError


def _jsonl(path: Path, texts: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts))
    return path


@pytest.fixture
def files(tmp_path, english_text, chinese_text) -> dict[str, Path]:
    paras = [p for p in english_text.split("\n") if len(p) > 400][:30]
    zh = [line for line in chinese_text.split("\n") if len(line) > 60][:40]
    zh_docs = ["\n".join(zh[i : i + 4]) for i in range(0, 40, 4)]
    return {
        "bible": _jsonl(tmp_path / "bible.jsonl", paras + paras[:3]),
        "bible2": _jsonl(tmp_path / "bible2.jsonl", paras[:20]),
        "news": _jsonl(tmp_path / "news.jsonl", zh_docs),
    }


def _ws(tmp_path, files) -> tuple[DataWorkspace, Pipeline]:
    ws = DataWorkspace(tmp_path / "ws")
    ws.catalog.add_source("bible", [files["bible"]], "en", "book")
    return ws, Pipeline(ws, workers=1)


def _refused(ws: DataWorkspace, source: str) -> str:
    with pytest.raises(UserError) as exc:
        ws.final_parts(source)
    return str(exc.value)


def test_source_added_after_dedup_is_refused_until_clean_and_dedup_run(tmp_path, files):
    ws, pipe = _ws(tmp_path, files)
    pipe.clean(part_docs=10)
    pipe.dedup()
    assert ws.final_parts("bible")[0].parent.parent.name == "dedup"
    ws.catalog.add_source("news", [files["news"]], "zh", "web")
    assert "run `aquila data clean`" in _refused(ws, "news")
    pipe.clean(["news"], part_docs=10)
    # The new source could duplicate old documents: everyone's dedup output is stale.
    assert "run `aquila data dedup`" in _refused(ws, "bible")
    assert "run `aquila data dedup`" in _refused(ws, "news")
    pipe.dedup()
    assert all(p.parent.parent.name == "dedup" for p in ws.final_parts("news"))


def test_source_replaced_after_dedup_is_refused(tmp_path, files):
    ws, pipe = _ws(tmp_path, files)
    pipe.clean(part_docs=10)
    pipe.dedup()
    ws.catalog.add_source("bible", [files["bible2"]], "en", "book", replace=True)
    assert "clean output of source 'bible' is stale" in _refused(ws, "bible")
    # The later stage refuses to build on it too.
    with pytest.raises(UserError, match="run `aquila data clean` first"):
        pipe.dedup()
    pipe.clean(part_docs=10)
    assert "run `aquila data dedup`" in _refused(ws, "bible")
    summary = pipe.dedup()
    clean_kept = sum(r.documents_kept for r in ws.catalog.parts("clean", "bible"))
    assert summary.parts_run == 2 and summary.documents_in == clean_kept <= 20
    assert len(ws.final_parts("bible")) == 2


def test_recleaned_with_new_rules_after_dedup_is_refused(tmp_path, files):
    ws, pipe = _ws(tmp_path, files)
    pipe.clean(part_docs=10)
    first = pipe.dedup()
    strict = CleanConfig(quality=QualityConfig(en_min_words=150))
    pipe.clean(cfg=strict, part_docs=10)
    assert "dedup output of source 'bible' is stale" in _refused(ws, "bible")
    again = pipe.dedup()
    assert again.parts_run > 0 and again.documents_in < first.documents_in
    assert len(ws.final_parts("bible")) == len(ws.catalog.parts("dedup", "bible"))


def test_dedup_rerun_makes_decontaminate_stale(tmp_path, files):
    ws, pipe = _ws(tmp_path, files)
    ws.catalog.add_source("news", [files["news"]], "zh", "web")
    evals = _jsonl(tmp_path / "eval.jsonl", ["no overlap with anything in the corpus at all"])
    pipe.clean(part_docs=10)
    pipe.dedup()
    pipe.decontaminate([evals])
    assert ws.final_parts("news")[0].parent.parent.name == "decontaminate"
    pipe.dedup(DedupConfig(threshold=0.3))
    assert "run `aquila data decontaminate`" in _refused(ws, "news")


def test_interrupted_stage_is_not_finished(tmp_path, files):
    ws, pipe = _ws(tmp_path, files)
    pipe.clean(part_docs=10)
    ws.catalog.set_stage_inputs("clean", "bible", None)  # a crash between parts
    assert "no finished clean output" in _refused(ws, "bible")


def test_tokenize_refuses_stale_workspace(tmp_path, capsys, files, tiny_tokenizer_dir):
    ws, pipe = _ws(tmp_path, files)
    pipe.clean(part_docs=10)
    pipe.dedup()
    ws.catalog.add_source("news", [files["news"]], "zh", "web")
    ws.close()
    argv = ["data", "tokenize", "--workspace", str(tmp_path / "ws"),
            "--tokenizer", str(tiny_tokenizer_dir), "--out", str(tmp_path / "shards")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "source 'news' has no finished clean output: run `aquila data clean` first" in err
    assert not (tmp_path / "shards" / "bible" / "manifest.json").exists()
