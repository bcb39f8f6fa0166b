"""Int4 for mixture-of-experts models: experts one by one, routers in full precision."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open

from aquila.cli import main
from aquila.model.io import load_model_dir, save_model_dir
from aquila.model.moe_split import SplitMoEFFN, split_experts
from aquila.quant import QuantConfig, QuantLinear, quantize_model
from aquila.quant.model import _block_hessians, target_linears
from aquila.scale.upcycle import upcycle


@pytest.fixture(scope="module")
def moe_model(quant_model):
    """The tiny dense model upcycled to 4 experts, top-2, with perturbed experts (so they differ)
    and a router wide enough that routing depends on the token."""
    return upcycle(quant_model, n_experts=4, top_k=2, router_std=0.5, noise=0.2, seed=1).eval()


def test_split_block_is_the_same_function(moe_model, text_tokens):
    split = copy.deepcopy(moe_model)
    assert split_experts(split) == ["layers.0.mlp", "layers.1.mlp"]
    assert isinstance(split.layers[0].mlp, SplitMoEFFN)
    x = text_tokens[:4]
    with torch.no_grad():
        assert torch.equal(split(x), moe_model(x))
    # Routing statistics still reach the trainer's readers.
    assert sum(split.layers[0].mlp.tokens_per_expert.tolist()) == x.numel() * 2


def test_targets_are_experts_not_routers(moe_model):
    split = copy.deepcopy(moe_model)
    split_experts(split)
    names = list(target_linears(split))
    assert not any(n.endswith("mlp.gate") for n in names)
    assert sum(".mlp.experts." in n for n in names) == 2 * 4 * 3
    assert len(names) == 2 * (4 + 4 * 3)


def test_each_expert_is_calibrated_on_the_tokens_routed_to_it(moe_model, text_tokens):
    split = copy.deepcopy(moe_model)
    split_experts(split)
    calib = text_tokens[:6]
    hessians = _block_hessians(split, 0, calib, batch_size=3)
    # The reference: block 0's FFN inputs, routed by hand.
    seen = []
    hook = split.layers[0].mlp.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        split(calib)
    hook.remove()
    x = seen[0].reshape(-1, split.cfg.hidden_size)
    _, _, index = split.layers[0].mlp.route(x)
    counts = []
    for e in range(4):
        xe = x[(index == e).any(dim=1)].double()
        counts.append(len(xe))
        want = 2.0 * xe.t() @ xe / len(xe)
        got = hessians[f"mlp.experts.{e}.w1"].double()
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), e
    assert all(0 < c < x.shape[0] for c in counts), counts  # a real split, not all tokens


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_quantized_moe_stays_close_and_gptq_beats_rtn(moe_model, text_tokens, method):
    x = text_tokens[20:24]
    errs = {}
    for m in ("rtn", "gptq"):
        q = quantize_model(
            copy.deepcopy(moe_model), QuantConfig(m, group_size=32), text_tokens[:16]
        )
        assert isinstance(q.layers[1].mlp.experts[3].w2, QuantLinear)
        assert type(q.layers[1].mlp.gate) is torch.nn.Linear  # the router keeps its weights
        assert torch.equal(q.layers[1].mlp.gate.weight, moe_model.layers[1].mlp.gate.weight)
        with torch.no_grad():
            ref, got = moe_model(x), q(x)
        errs[m] = float(torch.linalg.norm(got - ref) / torch.linalg.norm(ref))
    assert errs[method] < 0.4 and errs["gptq"] < errs["rtn"], errs


def test_an_expert_without_calibration_tokens_is_rounded_to_nearest(quant_model, text_tokens):
    # Top-1 over three experts whose router rows are v, -v and 0: one of the first two always
    # scores above the third, so expert 2 never sees a token.
    model = upcycle(quant_model, n_experts=3, top_k=1, noise=0.1).eval()
    with torch.no_grad():
        for layer in model.layers:
            v = torch.randn(model.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
            layer.mlp.gate.weight.copy_(torch.stack([v, -v, torch.zeros_like(v)]))
    cfg = QuantConfig("gptq", group_size=32)
    q = quantize_model(model, cfg, text_tokens[:8])
    assert cfg.rtn_fallback == [
        f"layers.{i}.mlp.experts.2.{w}" for i in range(2) for w in ("w1", "w3", "w2")
    ]
    w = q.layers[0].mlp.experts[2].w1.dequantized_weight()
    assert w.abs().sum() > 0  # rounded, not zeroed as a Hessian of zeros would make it


@pytest.fixture(scope="module")
def moe_dir(quant_model, tiny_tokenizer, tmp_path_factory):
    """A dense model dir upcycled with `aquila upcycle`, as a user would make one."""
    root = tmp_path_factory.mktemp("moe")
    dense = save_model_dir(quant_model, root / "dense", tokenizer=tiny_tokenizer)
    args = ["upcycle", str(dense), "--experts", "4", "--top-k", "2", "--noise", "0.2"]
    assert main([*args, "--router-std", "0.5", "--out", str(root / "moe"), "--json"]) == 0
    return root / "moe"


@pytest.mark.parametrize("method", ["rtn", "gptq"])
def test_cli_quantizes_an_upcycled_moe_that_then_evaluates_and_generates(
    moe_dir, tmp_path, capsys, method
):
    capsys.readouterr()
    out = tmp_path / method
    args = ["quantize", str(moe_dir), "--method", method, "--group-size", "32", "--out", str(out)]
    assert main([*args, "--calib-tokens", "1024", "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["experts"] == 4 and summary["modules"] == 2 * (4 + 4 * 3)
    assert summary["disk_bytes"] < summary["source_disk_bytes"] / 2
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("layers.0.mlp.gate.weight").dtype == torch.float32
    assert "layers.1.mlp.experts.3.w2.qweight" in keys and "layers.0.mlp.w1" not in keys
    loaded = load_model_dir(out)
    assert isinstance(loaded.layers[0].mlp.experts[0].w1, QuantLinear)

    assert main(["eval", str(out), "--tasks", "en_next_verse", "--limit", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["en_next_verse"]["n"] == 2
    gen = ["generate", str(out), "--prompt", "In the beginning", "--greedy", "--json"]
    assert main([*gen, "--max-new-tokens", "6"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tokens"] >= 1


def test_cli_compare_on_moe(moe_dir, tmp_path, capsys):
    capsys.readouterr()
    args = ["quantize", str(moe_dir), "--method", "rtn", "--group-size", "32"]
    args += ["--out", str(tmp_path / "q"), "--compare", "--tasks", "en_next_verse"]
    assert main([*args, "--limit", "2", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["compare"]
    assert [r["en_next_verse"]["n"] for r in report["results"]] == [2, 2]
    fp, q = report["size"]
    assert q["linear_weight_bytes"] < fp["linear_weight_bytes"] / 3  # experts counted in both


def test_cli_refuses_an_unwritable_out_before_any_work(moe_dir, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    assert main(["quantize", str(moe_dir), "--out", str(busy)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "busy exists and is not a model dir" in err
