"""Whole-model quantization: save, load, generate, sizes; the `aquila quantize` command."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open

from aquila.cli import main
from aquila.model.generate import generate
from aquila.model.io import load_model_dir, save_model_dir
from aquila.quant import (
    QuantConfig,
    QuantLinear,
    quantize_model,
    save_quantized_model_dir,
)
from aquila.quant.model import linear_weight_bytes, model_memory_bytes, target_linears


@pytest.fixture(scope="module")
def quantized(quant_model, text_tokens, tmp_path_factory):
    model = quantize_model(
        copy.deepcopy(quant_model),
        QuantConfig("gptq", group_size=64),
        text_tokens[:16],
        batch_size=4,
    )
    out = save_quantized_model_dir(model, _cfg(model), tmp_path_factory.mktemp("q") / "int4")
    return model, out


def _cfg(model):
    cfg = QuantConfig("gptq", group_size=64)
    cfg.modules = [n for n, m in model.named_modules() if isinstance(m, QuantLinear)]
    return cfg


def test_targets_exclude_embeddings_and_lm_head(quant_model):
    names = list(target_linears(quant_model))
    assert len(names) == 14 and all(n.startswith("layers.") for n in names)
    assert "lm_head" in target_linears(quant_model, include_lm_head=True)


def test_quantized_dir_loads_and_generates(quantized, quant_model, text_tokens):
    model, out = quantized
    loaded = load_model_dir(out)
    qls = [m for m in loaded.modules() if isinstance(m, QuantLinear)]
    assert len(qls) == 14 and all(m.layout == "cpu" for m in qls)  # packed for the CPU kernel
    x = text_tokens[16:20]
    with torch.no_grad():
        ref, got = quant_model(x), loaded(x)
        same = model(x)
    assert torch.allclose(got, same, atol=1e-4)  # the saved model is the quantized model
    # int4 stays close to full precision, and GPTQ closer than RTN.
    rtn = quantize_model(copy.deepcopy(quant_model), QuantConfig("rtn", group_size=64))
    with torch.no_grad():
        rtn_logits = rtn(x)

    def rel(y):
        return float(
            torch.linalg.norm(y - ref) / torch.linalg.norm(ref - ref.mean(-1, keepdim=True))
        )

    assert rel(got) < 0.4 and rel(got) < rel(rtn_logits), (rel(got), rel(rtn_logits))
    ids = list(generate(loaded, x[0, :8].tolist(), 10, greedy=True))
    assert len(ids) == 10 and all(0 <= t < loaded.cfg.vocab_size for t in ids)


def test_linear_weights_are_about_4x_smaller(quantized, quant_model, tmp_path):
    model, out = quantized
    fp_dir = save_model_dir(quant_model, tmp_path / "fp32")
    names = list(target_linears(quant_model))

    def tensor_bytes(path, keys):
        with safe_open(str(path / "model.safetensors"), "pt") as f:
            stored = list(f.keys())  # noqa: SIM118 (safe_open is not iterable)
            return sum(
                f.get_tensor(k).numel() * f.get_tensor(k).element_size()
                for k in stored
                if any(k.startswith(n + ".") for n in keys)
            )

    fp32 = tensor_bytes(fp_dir, names)
    int4 = tensor_bytes(out, names)
    # 4 bits + two bf16 per 64 weights = 0.5625 bytes/weight: 7.1x below fp32, 3.6x below bf16.
    assert fp32 / int4 > 6.5 and (fp32 / 2) / int4 > 3.2
    assert (out / "model.safetensors").stat().st_size < (
        fp_dir / "model.safetensors"
    ).stat().st_size
    loaded = load_model_dir(out)
    assert linear_weight_bytes(quant_model) / linear_weight_bytes(loaded) > 6.5
    assert model_memory_bytes(loaded) < model_memory_bytes(quant_model)


def test_model_json_records_quantization(quantized):
    _, out = quantized
    meta = json.loads((out / "model.json").read_text())
    q = meta["quantization"]
    assert (
        q["bits"] == 4
        and q["group_size"] == 64
        and q["method"] == "gptq"
        and len(q["modules"]) == 14
    )


@pytest.fixture
def float_dir(quant_model, tiny_tokenizer, tmp_path):
    return save_model_dir(quant_model, tmp_path / "model", tokenizer=tiny_tokenizer)


def test_cli_quantize_rtn_and_gptq(float_dir, tmp_path, capsys):
    assert (
        main(
            [
                "quantize",
                str(float_dir),
                "--method",
                "rtn",
                "--group-size",
                "64",
                "--out",
                str(tmp_path / "rtn"),
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    rtn = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (
        rtn["method"] == "rtn"
        and rtn["modules"] == 14
        and rtn["disk_bytes"] < rtn["source_disk_bytes"]
    )
    assert (
        main(
            [
                "quantize",
                str(float_dir),
                "--group-size",
                "32",
                "--calib-tokens",
                "1024",
                "--out",
                str(tmp_path / "gptq"),
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    gptq = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert gptq["method"] == "gptq" and gptq["calib_tokens"] >= 1024
    assert (tmp_path / "gptq" / "tokenizer.json").is_file()
    assert (
        main(
            [
                "eval",
                str(tmp_path / "gptq"),
                "--tasks",
                "en_next_verse",
                "--limit",
                "4",
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["en_next_verse"]["n"] == 4 and res["en_next_verse"]["chance"] == 0.25


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bits", "8"], "--bits 8"),
        (["--group-size", "100"], "--group-size 100"),
        (["--group-size", "0"], "--group-size 0"),
        (["--method", "awq"], "--method"),
    ],
)
def test_cli_errors_exit_2(float_dir, tmp_path, capsys, args, message):
    assert main(["quantize", str(float_dir), "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aquila: error:") and message in err


def test_cli_missing_dir_exits_2(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


def test_cli_refuses_already_quantized(quantized, tmp_path, capsys):
    _, out = quantized
    assert main(["quantize", str(out), "--out", str(tmp_path / "o")]) == 2
    assert "already quantized" in capsys.readouterr().err
