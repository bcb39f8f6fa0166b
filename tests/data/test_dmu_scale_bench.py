"""bench/dmu_scale.py in its smoke mode: corpus with planted pairs and eval items, the whole
add -> clean -> dedup -> decontaminate -> tokenize path at two sizes, in fresh processes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "dmu_scale.py"


def test_smoke(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("dmu_scale", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--smoke", "--workers", "1", "--out", str(tmp_path), "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    full = res["sizes"]["full"]["aquila"]
    assert set(full["mb_per_s"]) == {"add", "clean", "dedup", "decontaminate", "tokenize"}
    # Every planted evaluation item is gone, and the planted pairs are found.
    assert full["eval_planted_removed"] == full["eval_planted_docs"] > 0
    assert full["pairs_j_ge_0_8"] >= 1 and full["recall_j_ge_0_8"] == 1.0
    assert full["precision"] == 1.0
    assert (
        full["driver_peak_mb"] > 0
        and res["memory_full_over_eighth"]["driver after decontaminate"] > 0
    )
