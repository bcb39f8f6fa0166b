"""Model dirs: atomic save/load, clear errors, and resolving run dirs to checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aquila.errors import UserError
from aquila.model.io import (
    load_model_dir,
    resolve_model_dir,
    resolve_tokenizer_dir,
    save_file_atomic,
    save_model_dir,
)


def test_round_trip_is_exact(tmp_path: Path, tiny_model) -> None:
    out = save_model_dir(tiny_model, tmp_path / "m")
    meta = json.loads((out / "model.json").read_text())
    assert meta["format"] == "aquila" and meta["format_version"] == 1
    assert meta["config"] == tiny_model.cfg.to_dict()
    loaded = load_model_dir(out)
    for name, t in tiny_model.state_dict().items():
        assert torch.equal(t, loaded.state_dict()[name]), name
    tokens = torch.randint(0, 512, (2, 17), generator=torch.Generator().manual_seed(1))
    assert torch.equal(tiny_model(tokens), loaded(tokens))
    # Nothing temporary is left beside the output.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_casts_dtype(tmp_path: Path, tiny_model) -> None:
    out = save_model_dir(tiny_model, tmp_path / "m")
    loaded = load_model_dir(out, dtype=torch.bfloat16)
    assert loaded.lm_head.weight.dtype == torch.bfloat16
    assert torch.equal(loaded.lm_head.weight, tiny_model.lm_head.weight.to(torch.bfloat16))


def test_save_with_tokenizer_and_overwrite(tmp_path: Path, tiny_model, make_model, tiny_tokenizer):
    out = save_model_dir(tiny_model, tmp_path / "m", tokenizer=tiny_tokenizer)
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    # Saving over an earlier model dir replaces it whole.
    other = make_model(seed=5)
    save_model_dir(other, out)
    assert not (out / "tokenizer.json").exists()
    assert torch.equal(load_model_dir(out).embed_tokens.weight, other.embed_tokens.weight)


def test_refuses_to_replace_unrelated_dir(tmp_path: Path, tiny_model) -> None:
    target = tmp_path / "docs"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="not a model dir"):
        save_model_dir(tiny_model, target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_load_errors_name_the_problem(tmp_path: Path, tiny_model) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_model_dir(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="model.json is missing"):
        load_model_dir(empty)

    out = save_model_dir(tiny_model, tmp_path / "m")
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_model_dir(out)
    weights.unlink()
    with pytest.raises(UserError, match="model.safetensors is missing"):
        load_model_dir(out)

    (out / "model.json").write_text("{not json")
    with pytest.raises(UserError, match="model.json"):
        load_model_dir(out)


def test_shape_mismatch_names_the_tensor(tmp_path: Path, tiny_model) -> None:
    out = save_model_dir(tiny_model, tmp_path / "m")
    meta = json.loads((out / "model.json").read_text())
    meta["config"]["ffn_size"] = 192
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"layers\.0\.mlp\.gate_proj\.weight.*\(160, 64\)"):
        load_model_dir(out)
    meta["config"]["n_layers"] = 3
    meta["config"]["ffn_size"] = 160
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match=r"missing tensor.*layers\.2\."):
        load_model_dir(out)
    meta["config"]["bogus"] = 1
    (out / "model.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="bogus"):
        load_model_dir(out)


def _run_dir(tmp_path: Path, model, tokenizer) -> Path:
    run = tmp_path / "run"
    tokenizer.save(run / "tokenizer")
    for step in (9, 10, 100):
        ckpt = run / "checkpoints" / f"step-{step:08d}"
        save_model_dir(model, ckpt)
        (ckpt / "train_state.pt").write_bytes(b"")
    # Leftovers of an interrupted save never count as checkpoints.
    (run / "checkpoints" / ".tmp-step-00000200-1").mkdir()
    return run


def test_resolve_run_dir(tmp_path: Path, tiny_model, tiny_tokenizer) -> None:
    run = _run_dir(tmp_path, tiny_model, tiny_tokenizer)
    latest = run / "checkpoints" / "step-00000100"
    assert resolve_model_dir(run) == latest
    assert resolve_model_dir(latest) == latest
    assert resolve_tokenizer_dir(run) == run / "tokenizer"
    assert resolve_tokenizer_dir(latest) == run / "tokenizer"
    # A model dir with its own tokenizer uses it.
    own = save_model_dir(tiny_model, tmp_path / "own", tokenizer=tiny_tokenizer)
    assert resolve_tokenizer_dir(own) == own


def test_resolve_errors(tmp_path: Path, tiny_model) -> None:
    with pytest.raises(UserError, match="does not exist"):
        resolve_model_dir(tmp_path / "missing")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with pytest.raises(UserError, match="no checkpoints"):
        resolve_model_dir(run)
    with pytest.raises(UserError, match="neither a model dir"):
        resolve_model_dir(tmp_path)
    bare = save_model_dir(tiny_model, tmp_path / "bare")
    with pytest.raises(UserError, match="no tokenizer"):
        resolve_tokenizer_dir(bare)


def test_save_file_atomic(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "state.bin"
    save_file_atomic(target, b"one")
    save_file_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["state.bin"]


def _layouts(tmp_path: Path, model) -> dict[str, Path]:
    """The same weights as one file, as Hugging Face-style shards, and as DCP shards."""
    import warnings

    import torch.distributed.checkpoint as dcp

    from aquila.model.io import export_state_dict, plan_shards, write_model_config, write_shards

    single = save_model_dir(model, tmp_path / "single")
    state = export_state_dict(model)
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    write_model_config(model.cfg, sharded)
    groups = plan_shards([(k, v.numel() * 4) for k, v in state.items()], 40_000)
    summary = write_shards(sharded, groups, lambda names: {n: state[n] for n in names})
    assert len(summary["files"]) == len(groups) > 3
    assert summary["files"][0] == f"model-00001-of-{len(groups):05d}.safetensors"
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(state)
    dist = tmp_path / "dcp"
    dist.mkdir()
    write_model_config(model.cfg, dist)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.save({"model": state}, checkpoint_id=str(dist / "dcp"))
    return {"single": single, "sharded": sharded, "dcp": dist}


def test_every_weight_layout_loads_alike(tmp_path: Path, tiny_model) -> None:
    from aquila.model.io import weight_layout, weights_bytes
    from aquila.monitor.trajectory import checkpoint_curves, model_curves

    dirs = _layouts(tmp_path, tiny_model)
    expected = tiny_model.state_dict()
    for layout, path in dirs.items():
        assert weight_layout(path) == layout
        assert weights_bytes(path) >= 4 * tiny_model.num_params()
        for dtype in (None, torch.bfloat16):
            loaded = load_model_dir(path, dtype=dtype)
            for name, t in expected.items():
                want = t if dtype is None else t.to(dtype)
                assert torch.equal(loaded.state_dict()[name], want), (layout, name)
        # Weight statistics read any layout tensor by tensor.
        assert checkpoint_curves(path) == model_curves(tiny_model), layout


def test_damaged_sharded_dirs_are_named(tmp_path: Path, tiny_model) -> None:
    dirs = _layouts(tmp_path, tiny_model)
    index = dirs["sharded"] / "model.safetensors.index.json"
    weight_map = json.loads(index.read_text())["weight_map"]
    first = sorted(set(weight_map.values()))[0]
    (dirs["sharded"] / first).unlink()
    with pytest.raises(UserError, match=f"weight file .*{first} is missing"):
        load_model_dir(dirs["sharded"])
    name = next(iter(weight_map))
    index.write_text(json.dumps({"weight_map": {**weight_map, name: "../elsewhere.safetensors"}}))
    with pytest.raises(UserError, match="weight_map must map tensor names to file names"):
        load_model_dir(dirs["sharded"])
    index.write_text("{")
    with pytest.raises(UserError, match="cannot read .*index.json"):
        load_model_dir(dirs["sharded"])
    (dirs["dcp"] / "dcp" / ".metadata").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"cannot read .*\.metadata"):
        load_model_dir(dirs["dcp"])


@pytest.mark.parametrize(
    ("text", "size"),
    [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1.5 kb", 1500), (123, 123)],
)
def test_sizes_parse_like_hugging_face(text, size) -> None:
    from aquila.model.io import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "GB", "-1GB", "0", "5XB", "five", "1e9"])
def test_bad_sizes_are_refused(text) -> None:
    from aquila.model.io import parse_size

    with pytest.raises(UserError, match="size") as err:
        parse_size(text)
    assert "\n" not in str(err.value)
