"""Hugging Face interop: logits and greedy decoding match transformers; round trips are exact."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch

from aquila.cli import main
from aquila.errors import UserError
from aquila.model.generate import generate
from aquila.model.hf import export_hf, import_hf
from aquila.model.io import load_model_dir, save_model_dir

transformers = pytest.importorskip("transformers")


def _tokens(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 512, (2, n), generator=torch.Generator().manual_seed(seed))


def _export(tmp_path: Path, model, tokenizer=None, dtype: str = "float32") -> Path:
    src = save_model_dir(model, tmp_path / "native", tokenizer=tokenizer)
    export_hf(src, tmp_path / "hf", dtype=dtype)
    return tmp_path / "hf"


def _hf_model(path: Path):
    return transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


@pytest.mark.parametrize(
    "overrides",
    [{}, {"n_heads": 8, "n_kv_heads": 2, "rope_scaling": 2.0, "rope_base": 500000.0}],
    ids=["aquila-test", "gqa-rope-linear-2"],
)
def test_logits_match_transformers(tmp_path: Path, make_model, overrides) -> None:
    model = make_model(**overrides)
    hf_dir = _export(tmp_path, model)
    config = json.loads((hf_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["num_key_value_heads"] == model.cfg.n_kv_heads
    if model.cfg.rope_scaling != 1.0:
        assert config["rope_scaling"] == {"rope_type": "linear", "factor": 2.0}
    else:
        assert "rope_scaling" not in config
    hf = _hf_model(hf_dir)
    # Long enough that position scaling matters at the far end of the context.
    tokens = _tokens(model.cfg.max_seq_len)
    with torch.no_grad():
        ours, theirs = model(tokens), hf(tokens).logits
    assert ours.abs().max() > 1.0  # a degenerate model would match trivially
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(tmp_path: Path, make_model) -> None:
    model = make_model(n_heads=8, n_kv_heads=2, rope_scaling=2.0)
    hf = _hf_model(_export(tmp_path, model))
    prompt = _tokens(12, seed=3)[0].tolist()
    ours = list(generate(model, prompt, 32, greedy=True))
    with torch.no_grad():
        out = hf.generate(
            torch.tensor([prompt]),
            max_new_tokens=32,
            min_new_tokens=32,
            do_sample=False,
            pad_token_id=0,
        )
    theirs = out[0, len(prompt) :].tolist()
    assert len(ours) == 32
    assert len(set(ours)) > 4, ours
    assert ours == theirs


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_import_round_trip_is_bit_exact(tmp_path: Path, make_model, dtype) -> None:
    model = make_model()
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    hf_dir = _export(tmp_path, model, dtype=dtype)
    assert json.loads((hf_dir / "config.json").read_text())["torch_dtype"] == dtype
    summary = import_hf(hf_dir, tmp_path / "back")
    assert summary["config"] == model.cfg.to_dict()
    back = load_model_dir(tmp_path / "back")
    expected = model.state_dict()
    assert back.state_dict().keys() == expected.keys()
    for name, t in back.state_dict().items():
        assert t.dtype == expected[name].dtype, name
        assert torch.equal(t, expected[name]), name


def test_tokenizer_export_loads_in_transformers(
    tmp_path: Path, make_model, tiny_tokenizer, english_text, chinese_text
) -> None:
    hf_dir = _export(tmp_path, make_model(), tokenizer=tiny_tokenizer)
    config = json.loads((hf_dir / "config.json").read_text())
    # Documents start after </s> in training: that is the exported BOS.
    assert config["bos_token_id"] == config["eos_token_id"] == tiny_tokenizer.eos_id
    generation = json.loads((hf_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tiny_tokenizer.eos_id
    auto = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert auto.eos_token_id == tiny_tokenizer.eos_id
    for text in [
        english_text[5000:7000],
        chinese_text[3000:4000],
        "Mixed 中英文 text, 1998年 end.",
    ]:
        # transformers' default call adds the start-of-document token, as aquila does.
        assert auto(text)["input_ids"] == [tiny_tokenizer.eos_id, *tiny_tokenizer.encode(text)]
        assert auto(text, add_special_tokens=False)["input_ids"] == tiny_tokenizer.encode(text)
        assert auto.decode(tiny_tokenizer.encode(text)) == text
    # The tokenizer files come back on import.
    import_hf(hf_dir, tmp_path / "back")
    assert (tmp_path / "back" / "tokenizer.json").read_bytes() == (
        hf_dir / "tokenizer.json"
    ).read_bytes()


def test_default_transformers_use_reproduces_aquila_generate_greedy(
    tmp_path: Path, make_model, tiny_tokenizer, capsys
) -> None:
    """tok(prompt) + model.generate, and pipeline("text-generation"), on an export give exactly
    the tokens `aquila generate --greedy` gives, with no aquila-specific arguments."""
    src = save_model_dir(make_model(), tmp_path / "native", tokenizer=tiny_tokenizer)
    export_hf(src, tmp_path / "hf")
    hf_dir = tmp_path / "hf"
    prompts = ["In the beginning God", "中华人民共和国", "And"]
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    hf = _hf_model(hf_dir)
    pipe = transformers.pipeline("text-generation", model=hf, tokenizer=tok)
    distinct = set()
    for prompt in prompts:
        args = ["generate", str(src), "--prompt", prompt, "--greedy", "--max-new-tokens", "20"]
        assert main([*args, "--json"]) == 0
        ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        enc = tok(prompt, return_tensors="pt")
        with torch.no_grad():
            out = hf.generate(**enc, do_sample=False, max_new_tokens=20)
        assert out[0, enc["input_ids"].shape[1] :].tolist() == ours["token_ids"], prompt
        (got,) = pipe(prompt, do_sample=False, max_new_tokens=20)
        assert got["generated_text"] == prompt + ours["text"], prompt
        distinct.update(ours["token_ids"])
    assert len(distinct) > 8  # the model says different things: a real comparison


def _hf_state(hf_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(hf_dir / "model.safetensors"))


def test_import_sharded_and_bin(tmp_path: Path, make_model) -> None:
    from safetensors.torch import save_file

    model = make_model()
    hf_dir = _export(tmp_path, model)
    state = _hf_state(hf_dir)
    config = (hf_dir / "config.json").read_text()
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    (sharded / "config.json").write_text(config)
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, str(sharded / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(keys, file))
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))

    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "config.json").write_text(config)
    # Older checkpoints also carry the rotary table, which import recomputes.
    torch.save(
        {**state, "model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)},
        binary / "pytorch_model.bin",
    )

    for src in (sharded, binary):
        back = load_model_dir(import_hf(src, tmp_path / f"{src.name}-native")["out"])
        for name, t in model.state_dict().items():
            assert torch.equal(back.state_dict()[name], t), (src.name, name)


def test_import_aquila_style_and_v5_rope_config(tmp_path: Path, make_model) -> None:
    model = make_model(rope_scaling=4.0)
    hf_dir = _export(tmp_path, model)
    config = json.loads((hf_dir / "config.json").read_text())
    # BAAI's Aquila2 configs name their own class; newer transformers nest the rope settings.
    config["architectures"] = ["AquilaForCausalLM"]
    config["model_type"] = "aquila"
    config["rope_parameters"] = {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}
    del config["rope_scaling"], config["rope_theta"]
    (hf_dir / "config.json").write_text(json.dumps(config))
    summary = import_hf(hf_dir, tmp_path / "back")
    assert summary["config"]["rope_scaling"] == 4.0
    assert summary["config"]["rope_base"] == 10000.0


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"attention_bias": True}, "attention_bias"),
        ({"mlp_bias": True}, "mlp_bias"),
        ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, "rope_scaling.rope_type"),
        ({"rope_scaling": {"type": "yarn", "factor": 2.0}}, "rope_scaling.rope_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "architectures"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_import_rejects_unsupported_config(tmp_path: Path, make_model, change, key) -> None:
    hf_dir = _export(tmp_path, make_model())
    config = json.loads((hf_dir / "config.json").read_text())
    config.update(change)
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=key.replace(".", r"\.")) as err:
        import_hf(hf_dir, tmp_path / "back")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "back").exists()


def test_import_rejects_tied_embeddings_without_head(tmp_path: Path, make_model) -> None:
    from safetensors.torch import save_file

    hf_dir = _export(tmp_path, make_model())
    state = _hf_state(hf_dir)
    del state["lm_head.weight"]
    save_file(state, str(hf_dir / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((hf_dir / "config.json").read_text())
    config["tie_word_embeddings"] = True
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="tie_word_embeddings"):
        import_hf(hf_dir, tmp_path / "back")


def test_import_names_a_wrong_shape(tmp_path: Path, make_model) -> None:
    hf_dir = _export(tmp_path, make_model())
    config = json.loads((hf_dir / "config.json").read_text())
    config["intermediate_size"] = 128
    (hf_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match=r"layers\.0\.mlp\.gate_proj\.weight"):
        import_hf(hf_dir, tmp_path / "back")


def test_moe_delegates_to_mixtral_converter(tmp_path: Path, make_model, monkeypatch) -> None:
    from aquila.model.hf_llama import config_from_hf_llama, llama_recipes

    dense = make_model()
    calls = []

    def mixtral_recipes(cfg, infos, source):
        calls.append(sorted(infos)[:1])
        return llama_recipes(config, infos, source)

    fake = types.ModuleType("aquila.model.hf_mixtral")
    fake.config_from_hf_mixtral = config_from_hf_llama
    fake.mixtral_recipes = mixtral_recipes
    hf_dir = _export(tmp_path, dense)
    config = json.loads((hf_dir / "config.json").read_text())
    config["architectures"] = ["MixtralForCausalLM"]
    config["model_type"] = "mixtral"
    (hf_dir / "config.json").write_text(json.dumps(config))

    monkeypatch.setitem(sys.modules, "aquila.model.hf_mixtral", None)
    with pytest.raises(UserError, match="hf_mixtral"):
        import_hf(hf_dir, tmp_path / "back")
    monkeypatch.setitem(sys.modules, "aquila.model.hf_mixtral", fake)
    import_hf(hf_dir, tmp_path / "back")
    assert calls == [["lm_head.weight"]]


def test_cli_export_import(tmp_path: Path, model_dir: Path, capsys) -> None:
    out = tmp_path / "hf"
    assert main(["export", str(model_dir), "--format", "hf", "--out", str(out), "--json"]) == 0
    exported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert exported["architecture"] == "LlamaForCausalLM"
    assert "tokenizer.json" in exported["tokenizer_files"]
    assert main(["import", str(out), "--out", str(tmp_path / "back"), "--json"]) == 0
    imported = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert imported["params"] == exported["params"]
    assert main(["export", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert main(["import", str(model_dir), "--out", str(tmp_path / "y")]) == 2
    assert "config.json is missing" in capsys.readouterr().err
    assert main(["export", str(model_dir), "--out", str(model_dir)]) == 2
    assert "would overwrite the source" in capsys.readouterr().err
    assert (model_dir / "model.json").is_file()


def test_sharded_export_loads_in_transformers_and_imports_back(tmp_path: Path, make_model) -> None:
    model = make_model(n_heads=8, n_kv_heads=2)
    src = save_model_dir(model, tmp_path / "native")
    summary = export_hf(src, tmp_path / "hf", max_shard_size="60KB")
    files = summary["files"]
    assert len(files) > 3 and files[-1] == f"model-{len(files):05d}-of-{len(files):05d}.safetensors"
    assert sorted(p.name for p in (tmp_path / "hf").glob("*.safetensors")) == sorted(files)
    index = json.loads((tmp_path / "hf" / "model.safetensors.index.json").read_text())
    for f in files:  # at most the limit (plus the header), or one tensor larger than it
        alone = sum(v == f for v in index["weight_map"].values()) == 1
        assert alone or (tmp_path / "hf" / f).stat().st_size < 60_000 + 10_000, f
    assert set(index["weight_map"].values()) == set(files)
    assert index["metadata"]["total_size"] == 4 * model.num_params() == 4 * summary["params"]
    hf = _hf_model(tmp_path / "hf")
    tokens = _tokens(20)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-4, rtol=0)
    # Imported back in shards of its own, bit for bit.
    back = import_hf(tmp_path / "hf", tmp_path / "back", max_shard_size="100KB")
    assert len(back["files"]) > 1 and back["params"] == model.num_params()
    loaded = load_model_dir(tmp_path / "back")
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name


def test_bad_shard_size_is_one_line_and_writes_nothing(tmp_path: Path, model_dir: Path, capsys):
    for command in ("export", "import"):
        out = tmp_path / command
        code = main([command, str(model_dir), "--out", str(out), "--max-shard-size", "lots"])
        assert code == 2
        err = capsys.readouterr().err.strip()
        assert "--max-shard-size" in err and len(err.splitlines()) == 1
        assert not out.exists()


def test_import_takes_the_checkpoints_start_token_and_says_which(
    tmp_path: Path, make_model, tiny_tokenizer, capsys
) -> None:
    src = save_model_dir(make_model(), tmp_path / "native", tokenizer=tiny_tokenizer)
    export_hf(src, tmp_path / "hf")
    # An aquila export round-trips with aquila's convention: </s>, nothing recorded.
    assert main(["import", str(tmp_path / "hf"), "--out", str(tmp_path / "back")]) == 0
    assert "start of document: </s> (from tokenizer_config.json)" in capsys.readouterr().out
    assert "doc_start_token" not in load_model_dir(tmp_path / "back").cfg.extra
    # A checkpoint whose tokenizer adds Aquila2's [CLS] (Llama 2 style add_bos_token).
    cfg_file = tmp_path / "hf" / "tokenizer_config.json"
    cfg_file.write_text(json.dumps({**json.loads(cfg_file.read_text()), "bos_token": "[CLS]"}))
    summary = import_hf(tmp_path / "hf", tmp_path / "cls")
    assert summary["doc_start"] == {"token": "[CLS]", "from": "tokenizer_config.json"}
    model = load_model_dir(tmp_path / "cls")
    assert model.cfg.extra["doc_start_token"] == "[CLS]"
    args = ["generate", str(tmp_path / "cls"), "--prompt", "In the", "--greedy", "--json"]
    assert main([*args, "--max-new-tokens", "8"]) == 0
    ours = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"]
    prompt = [tiny_tokenizer.bos_id, *tiny_tokenizer.encode("In the")]
    assert ours == list(generate(model, prompt, 8, greedy=True, eos_id=tiny_tokenizer.eos_id))
    # Llama 3 style: only tokenizer.json's template names the token.
    cfg_file.write_text(json.dumps({"bos_token": "[CLS]"}))
    tok_file = tmp_path / "hf" / "tokenizer.json"
    tok = json.loads(tok_file.read_text())
    tok["post_processor"] = {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel"},
            {
                "type": "TemplateProcessing",
                "single": [
                    {"SpecialToken": {"id": "[CLS]", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}},
                ],
                "pair": [],
                "special_tokens": {},
            },
        ],
    }
    tok_file.write_text(json.dumps(tok))
    summary = import_hf(tmp_path / "hf", tmp_path / "llama3")
    assert summary["doc_start"] == {"token": "[CLS]", "from": "tokenizer.json post_processor"}
