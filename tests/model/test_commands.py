"""`aquila model info` on presets and on saved models."""

from __future__ import annotations

import json
from pathlib import Path

from aquila.cli import main
from aquila.model import count_params


def test_info_preset_and_model_dir(model_dir: Path, tiny_model, capsys) -> None:
    assert main(["model", "info", "aquila-test", "--json"]) == 0
    preset = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert preset["preset"] == "aquila-test" and preset["params"] == count_params(tiny_model.cfg)

    assert main(["model", "info", str(model_dir), "--json"]) == 0
    saved = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert saved["preset"] == str(model_dir)
    assert saved["params"] == sum(p.numel() for p in tiny_model.parameters())
    assert saved["init_std"] == 0.2  # read from model.json, not from the preset

    # A run dir resolves to its latest checkpoint.
    run = model_dir.parent / "run"
    (run / "checkpoints").mkdir(parents=True)
    model_dir.rename(run / "checkpoints" / "step-00000007")
    assert main(["model", "info", str(run)]) == 0
    assert "step-00000007" in capsys.readouterr().out

    assert main(["model", "info", "no-such-preset"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert main(["model", "info", str(run / "checkpoints")]) == 2
    assert "neither a model dir" in capsys.readouterr().err
