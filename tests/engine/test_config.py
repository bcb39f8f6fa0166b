import pytest

from aquila.cli import main
from aquila.engine.config import load_config
from aquila.errors import UserError


def test_toml_and_dotted_overrides(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text(
        '[model]\npreset = "aquila-test"\nn_layers = 3\n'
        "[optim]\nlr = 1e-3\n[train]\nmax_steps = 7\n[data]\nweights = { kjv = 2, zh = 1 }\n"
    )
    cfg = load_config(path, ["optim.lr=3e-4", "train.max_steps=500", "data.seq_len=64"])
    assert cfg.model.n_layers == 3 and cfg.model.hidden_size == 64
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.max_steps == 500 and cfg.data.seq_len == 64
    assert cfg.data.weights == {"kjv": 2.0, "zh": 1.0}


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.preset='aquila-test'", "model.rope_scaling=2", "optim.lr=1e-3"])
    cfg.save(tmp_path / "c.toml")
    again = load_config(tmp_path / "c.toml")
    assert again.to_dict() == cfg.to_dict()
    assert again.model.rope_scaling == 2.0


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("optim.lrr=1", "unknown config key optim.lrr; valid keys in [optim]: beta1"),
        ("model.layers=3", "unknown config key model.layers; valid keys in [model]: preset"),
        ("trian.max_steps=3", "unknown config section 'trian'"),
        ("train.max_steps=abc", "config key train.max_steps = 'abc': expected an integer"),
        ("model.preset='nope'", "unknown preset 'nope'; known presets: aquila2-7b"),
    ],
)
def test_bad_keys_are_clear_errors(override, expected):
    with pytest.raises(UserError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_cli_unknown_key_exits_2(capsys):
    assert main(["train", "--set", "optim.bogus=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key optim.bogus" in err


def test_missing_config_file_exits_2(tmp_path, capsys):
    assert main(["train", "--config", str(tmp_path / "none.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err
