"""The end-of-run report prints a greedy and a seeded nucleus sample in each language."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from aquila.model import AquilaModel, get_preset
from aquila.train.commands import _final_report
from aquila.train.report import NUCLEUS, SAMPLE_PROMPTS


def test_final_report_shows_greedy_and_nucleus_samples(tiny_tokenizer, capsys) -> None:
    model = AquilaModel(get_preset("aquila-test", init_std=0.2))
    model.reset_parameters(torch.Generator().manual_seed(0))
    data = SimpleNamespace(heldout=None, dir="shards", seq_len=32)  # no held-out text to score
    prepared = SimpleNamespace(
        cfg=SimpleNamespace(data=data),
        trainer=SimpleNamespace(model=model.eval()),
        tokenizer=tiny_tokenizer,
    )
    out = _final_report(prepared, json_mode=False)
    printed = capsys.readouterr().out
    assert out["samples"].keys() == out["nucleus_samples"].keys() == SAMPLE_PROMPTS.keys()
    for lang in SAMPLE_PROMPTS:
        assert f"sample ({lang}, greedy): {out['samples'][lang]!r}" in printed
        how = f"temperature {NUCLEUS['temperature']}, top-p {NUCLEUS['top_p']}, seed 0"
        assert f"sample ({lang}, {how}): {out['nucleus_samples'][lang]!r}" in printed
        assert out["nucleus_samples"][lang] != out["samples"][lang]
    assert _final_report(prepared, json_mode=True)["nucleus_samples"] == out["nucleus_samples"]
