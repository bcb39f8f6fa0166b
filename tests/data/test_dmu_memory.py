"""The DMU's memory does not grow with the corpus: what the driver holds, and how the scale
bench measures it."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from aquila.data import pipeline
from aquila.data.dedup import DedupConfig
from aquila.data.pipeline import Pipeline
from aquila.data.workspace import DataWorkspace

BENCH = Path(__file__).resolve().parents[2] / "bench" / "dmu_scale.py"


def _bench():
    spec = importlib.util.spec_from_file_location("dmu_scale", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_bench_driver_peak_is_its_own_not_its_launchers():
    # The bench builds the corpus in its own process and then starts the measured driver:
    # the driver must not report the launcher's peak as its own.
    big = b"\x01" * (400 << 20)  # touched pages: the launcher's peak is at least 400 MB
    del big
    code = (
        "import importlib.util, json;"
        f"s = importlib.util.spec_from_file_location('b', {str(BENCH)!r});"
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
        "print(json.dumps(m._peaks()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["driver_peak_mb"] < 200


def _strings(obj, seen=None) -> int:
    """How many distinct str objects ``obj`` holds, through dicts, lists, tuples and sets."""
    seen = seen if seen is not None else set()
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    if isinstance(obj, str):
        return 1
    if isinstance(obj, dict):
        return sum(_strings(k, seen) + _strings(v, seen) for k, v in obj.items())
    if isinstance(obj, (list, tuple, set, frozenset)):
        return sum(_strings(x, seen) for x in obj)
    return 0


def test_dedup_driver_holds_ids_of_duplicates_only(tmp_path, english_text, monkeypatch):
    # 300 distinct documents in parts of 40, four of them copied into the last part: the
    # driver names the removed documents and their kept twins, not every id of their parts.
    docs = [english_text[i : i + 600] for i in range(0, 300 * 600, 600)]
    assert len(set(docs)) == 300
    docs += [docs[i] for i in (5, 105, 205, 295)]
    src = tmp_path / "a.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    ws = DataWorkspace(tmp_path / "ws")
    ws.catalog.add_source("a", [src], "en", "web")
    held: list[int] = []

    class Recording(pipeline._IdLookup):
        def ref(self, gid: int) -> str:
            out = super().ref(gid)
            held.append(sum(_strings(v) for v in vars(self).values()))
            return out

    monkeypatch.setattr(pipeline, "_IdLookup", Recording)
    pipe = Pipeline(ws, workers=1)
    pipe.clean(part_docs=40)
    summary = pipe.dedup(DedupConfig(threshold=0.8))
    removed = summary.documents_removed.get("exact_duplicate", 0)
    ws.close()
    assert removed == 4
    assert held and max(held) <= 2 * removed  # the removed documents and their kept twins


@pytest.mark.slow
def test_peaks_do_not_grow_from_an_eighth_to_the_full_corpus(tmp_path, capsys):
    bench = _bench()
    args = ["--full-mb", "8", "--workers", "2", "--skip-datatrove", "--out", str(tmp_path)]
    assert bench.main([*args, "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    ratios = res["memory_full_over_eighth"]
    assert set(ratios) >= {f"{k} after {s}" for k in ("driver", "worker")
                           for s in ("clean", "dedup", "decontaminate", "tokenize")}  # fmt: skip
    assert all(r is not None and r <= 1.25 for r in ratios.values()), ratios
