"""The `aquila data` pipeline end to end on a real bilingual sample corpus."""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from pathlib import Path

import pytest

from aquila.data import pipeline_commands
from aquila.errors import UserError

GSM_Q = "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much did she earn?"
CEVAL_Q = "在计算机网络中负责把域名转换为网络地址的系统通常被称为什么系统"


def run_cli(capsys, *argv: str) -> tuple[int, dict | None, str]:
    parser = argparse.ArgumentParser(prog="aquila data")
    pipeline_commands.register(parser.add_subparsers())
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
    except UserError as exc:
        return 2, None, str(exc)
    out = capsys.readouterr().out.strip().splitlines()
    return rc, (json.loads(out[-1]) if out and "--json" in argv else None), ""


def _bible(module: str, limit: int) -> list[dict]:
    bible = __import__(f"pythonbible_{module}.plain_text_bible", fromlist=["bible"]).bible
    chapters: dict[int, list[str]] = {}
    for vid in sorted(bible.verse_start_indices):
        if len(chapters) == limit and vid // 1000 not in chapters:
            break
        text = bible.scripture_content[
            bible.verse_start_indices[vid] : bible.verse_end_indices[vid]
        ]
        chapters.setdefault(vid // 1000, []).append(text.strip())
    return [{"id": f"{module}-{c}", "text": " ".join(v)} for c, v in chapters.items()]


def _write(path: Path, docs: list[dict]) -> Path:
    path.write_text(
        "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8"
    )
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, request) -> dict[str, Path]:
    chinese_text = request.getfixturevalue("chinese_text")
    root = tmp_path_factory.mktemp("corpus")
    kjv = _bible("kjv", 45)
    kjv[10]["text"] = kjv[10]["text"][:1500] + " " + GSM_Q + " " + kjv[10]["text"][1500:]
    lines = chinese_text.split("\n")
    pd = [{"id": f"pd-{i}", "text": "\n".join(lines[i * 5 : i * 5 + 5])} for i in range(150)]
    pd[20]["text"] += "\n" + CEVAL_Q + "？"
    pd.append(dict(pd[3], id="pd-copy"))  # an exact duplicate inside the source
    code = [
        {"id": p.name, "text": p.read_text()}
        for p in sorted(Path(json.__file__).parent.glob("*.py"))
    ]
    files = {
        "kjv": _write(root / "kjv.jsonl", kjv),
        "asv": _write(root / "asv.jsonl", _bible("asv", 45)),
        "peoples_daily": _write(root / "pd.jsonl", pd),
        "python_code": _write(root / "code.jsonl", code),
    }
    evals = root / "evals"
    evals.mkdir()
    _write(evals / "gsm8k.jsonl", [{"question": GSM_Q, "answer": "10"}])
    (evals / "ceval.csv").write_text(
        f"id,question,A,B,C,D,answer\n0,{CEVAL_Q},DNS,FTP,HTTP,SMTP,A\n", encoding="utf-8"
    )
    return {**files, "evals": evals}


def _add_all(capsys, ws: Path, corpus) -> None:
    langs = {"kjv": ("en", "book"), "asv": ("en", "book"), "peoples_daily": ("zh", "web"),
             "python_code": ("code", "code")}  # fmt: skip
    for name, (lang, kind) in langs.items():
        rc, _, _ = run_cli(capsys, "add", name, str(corpus[name]), "--lang", lang, "--kind", kind,
                           "--workspace", str(ws))  # fmt: skip
        assert rc == 0


def test_pipeline_end_to_end(tmp_path, capsys, corpus):
    ws = tmp_path / "ws"
    raw_hashes = {
        k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in corpus.items() if p.is_file()
    }
    _add_all(capsys, ws, corpus)
    rc, _, err = run_cli(capsys, "add", "kjv", str(corpus["kjv"]), "--lang", "en", "--kind", "book",
                         "--workspace", str(ws))  # fmt: skip
    assert rc == 2 and "already exists" in err

    common = ("--workspace", str(ws), "--json", "--workers", "2")
    rc, clean, _ = run_cli(capsys, "clean", "--part-docs", "20", *common)
    assert rc == 0 and clean["documents_in"] == 45 + 45 + 151 + len(
        list(Path(json.__file__).parent.glob("*.py"))
    )
    assert (
        clean["documents_kept"] + sum(clean["documents_removed"].values()) == clean["documents_in"]
    )
    assert clean["parts_run"] >= 10

    # Idempotent: nothing to do the second time.
    _, again, _ = run_cli(capsys, "clean", "--part-docs", "20", *common)
    assert again["parts_run"] == 0 and again["documents_kept"] == clean["documents_kept"]
    # Resumable: a lost part (a crash before it finished) is the only one re-run.
    (ws / "stages" / "clean" / "peoples_daily" / "part-00000-00003.jsonl").unlink()
    _, resumed, _ = run_cli(capsys, "clean", "--part-docs", "20", *common)
    assert resumed["parts_run"] == 1 and resumed["documents_kept"] == clean["documents_kept"]

    rc, dd, _ = run_cli(capsys, "dedup", "--threshold", "0.4", *common)
    assert dd["documents_removed"]["exact_duplicate"] >= 1
    asv = dd["per_source"]["asv"]
    assert asv["removed"]["near_duplicate"] >= 0.6 * asv["documents_in"]
    assert dd["cross_source_pairs"] >= asv["removed"]["near_duplicate"]
    assert all(re.fullmatch(r"asv/0:asv-(\d+)", e["removed"]) and e["kept"].startswith("kjv/")
               for e in dd["examples"] if e["reason"] == "near_duplicate")  # fmt: skip

    evals = sorted(str(p) for p in corpus["evals"].iterdir())
    rc, dc, _ = run_cli(capsys, "decontaminate", "--against", *evals, *common)
    found = {(c["source"], c["doc_id"]) for c in dc["contaminated"]}
    assert found == {("kjv", "0:kjv-1011"), ("peoples_daily", "0:pd-20")}
    assert dc["documents_removed"] == {"contaminated": 2}

    rc, status, _ = run_cli(capsys, "status", "--workspace", str(ws), "--json")
    by_name = {s["name"]: s for s in status["sources"]}
    assert set(by_name["kjv"]["stages"]) == {"clean", "dedup", "decontaminate"}
    assert len(status["contaminated"]) == 2
    # The raw input is never modified.
    assert raw_hashes == {
        k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in corpus.items() if p.is_file()
    }


def test_stage_order_and_mixture_errors(tmp_path, capsys, corpus):
    ws = tmp_path / "ws"
    _add_all(capsys, ws, corpus)
    rc, _, err = run_cli(capsys, "dedup", "--workspace", str(ws))
    assert rc == 2 and "run `aquila data clean` first" in err
    mix = tmp_path / "mix.toml"
    mix.write_text('[[phases]]\nname = "lm"\ntokens = 1000\nweights = { kjv = 1, wiki = 1 }\n')
    rc, _, err = run_cli(capsys, "mixture", str(mix), "--workspace", str(ws))
    assert rc == 2 and "unknown source(s) ['wiki']" in err
    elsewhere = tmp_path / "no-workspace"
    rc, _, err = run_cli(capsys, "mixture", str(mix), "--workspace", str(elsewhere))
    assert rc == 2 and "no catalog.sqlite" in err and len(err.strip().splitlines()) == 1
    assert not elsewhere.exists()  # refused without creating an empty workspace
    mix.write_text('[[phases]]\nname = "lm"\ntokens = 1000\nweights = { kjv = 1, asv = 1 }\n')
    rc, out, _ = run_cli(capsys, "mixture", str(mix), "--workspace", str(ws), "--json",
                         "--tokens-per-sample", "10", "--chunks", "kjv=10", "--chunks", "asv=1000")  # fmt: skip
    assert out["version"] == 1 and len(out["warnings"]) == 1 and "'kjv'" in out["warnings"][0]


def test_ray_executor_matches_local(tmp_path, corpus):
    ray = pytest.importorskip("ray")
    from aquila.data.pipeline import Pipeline
    from aquila.data.workspace import DataWorkspace

    results = {}
    for executor in ("local", "ray"):
        ws = DataWorkspace(tmp_path / executor)
        ws.catalog.add_source("kjv", [corpus["kjv"]], "en", "book")
        ws.catalog.add_source("peoples_daily", [corpus["peoples_daily"]], "zh", "web")
        if executor == "ray":
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            summary = Pipeline(ws, executor=executor).clean(part_docs=40)
        finally:
            if executor == "ray":
                ray.shutdown()
        outputs = sorted((p.relative_to(ws.root).as_posix(), p.read_text())
                         for p in (ws.root / "stages").rglob("*.jsonl"))  # fmt: skip
        results[executor] = (summary.documents_kept, summary.documents_removed, outputs)
    assert results["local"] == results["ray"]
