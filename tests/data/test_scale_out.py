"""The same documents are removed, and the same bytes written, whatever the number of workers
or the executor: every dedup step orders by global document id."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from aquila.data.dedup import DedupConfig
from aquila.data.pipeline import Pipeline
from aquila.data.workspace import DataWorkspace


def _edit(text: str, rng: random.Random, rate: float) -> str:
    words = text.split(" ")
    for _ in range(int(len(words) * rate)):
        words[rng.randrange(len(words))] = rng.choice(["and", "lo", "behold", "verily"])
    return " ".join(words)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, english_text, chinese_text) -> dict[str, Path]:
    rng = random.Random(3)
    root = tmp_path_factory.mktemp("scale_out")
    en = [english_text[i : i + 1500] for i in range(0, 90_000, 1500)]
    lines = [ln for ln in chinese_text.split("\n") if len(ln) > 30]
    zh = ["\n".join(lines[i : i + 5]) for i in range(0, 300, 5)]
    en_copies = [_edit(en[i], rng, 0.01) for i in range(0, 60, 4)] + [en[7], en[7].upper()]
    en_copies += [_edit(en[21], rng, 0.01) for _ in range(4)]  # a cluster of five
    zh_copies = [zh[i][:-8] + "。" for i in range(0, 60, 5)]
    out = {}
    for name, docs in (("a", en), ("b", zh), ("c", en_copies + zh_copies)):
        out[name] = root / f"{name}.jsonl"
        out[name].write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n"
                                     for t in docs))  # fmt: skip
    evals = root / "evals.jsonl"
    evals.write_text(json.dumps({"question": " ".join(en[11].split(" ")[40:60])}) + "\n")
    out["evals"] = evals
    return out


def _run(root: Path, corpus, executor: str, workers: int) -> tuple[dict, list]:
    ws = DataWorkspace(root)
    for name, lang in (("a", "en"), ("b", "zh"), ("c", "mixed")):
        ws.catalog.add_source(name, [corpus[name]], lang, "web")
    pipe = Pipeline(ws, executor=executor, workers=workers)
    pipe.clean(part_docs=9)
    summary = pipe.dedup(DedupConfig(threshold=0.8))
    pipe.decontaminate([corpus["evals"]])
    files = {p.relative_to(root).as_posix(): p.read_bytes()
             for p in sorted((root / "stages").rglob("*.jsonl"))}  # fmt: skip
    removals = ws.catalog.removals("dedup") + ws.catalog.removals("decontaminate")
    ws.close()
    assert summary.documents_removed["near_duplicate"] >= 20
    assert summary.documents_removed["exact_duplicate"] == 2
    return files, removals


def test_one_two_and_four_workers_write_the_same_bytes(tmp_path, corpus):
    one = _run(tmp_path / "one", corpus, "local", 1)
    two = _run(tmp_path / "two", corpus, "local", 2)
    four = _run(tmp_path / "four", corpus, "local", 4)
    assert one == two == four
    files, removals = one
    assert len([k for k in files if k.startswith("stages/dedup/")]) >= 10
    assert any(r[2] == "contaminated" for r in removals)


@pytest.mark.slow
def test_ray_writes_the_same_bytes(tmp_path, corpus):
    ray = pytest.importorskip("ray")
    local = _run(tmp_path / "local", corpus, "local", 2)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = _run(tmp_path / "ray", corpus, "ray", 2)
    finally:
        ray.shutdown()
    assert local == on_ray
