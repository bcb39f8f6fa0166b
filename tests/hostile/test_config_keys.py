"""Every config key is checked before a run directory is created or changed: one line naming the
key, its value and what is allowed; exit code 2."""

from __future__ import annotations

import pytest
import torch

from aquila.cli import main

from .conftest import one_line, tree

# (override, what the line says): one case per rule or relation a user can break.
NEW_RUN = [
    ("optim.grad_clip=-1", "optim.grad_clip = -1.0: must be a finite number >= 0"),
    ("optim.min_lr=-1e-4", "optim.min_lr = -0.0001: must be a finite number >= 0"),
    ("optim.lr=0", "optim.lr = 0.0: must be a finite number > 0"),
    ("optim.lr=-1", "optim.lr = -1.0: must be a finite number > 0"),
    ("optim.lr=nan", "optim.lr = nan: must be a finite number > 0"),
    ("optim.lr=inf", "optim.lr = inf: must be a finite number > 0"),
    ("optim.min_lr=0.5", "optim.min_lr = 0.5: must be <= optim.lr (0.003)"),
    ("optim.beta1=2", "optim.beta1 = 2.0: must be a finite number >= 0 and < 1"),
    ("optim.beta2=1", "optim.beta2 = 1.0: must be a finite number >= 0 and < 1"),
    ("optim.eps=0", "optim.eps = 0.0: must be a finite number > 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay = -0.1: must be a finite number >= 0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps = -1: must be an integer >= 0"),
    ("optim.schedule='linear'", "optim.schedule = 'linear': must be one of 'cosine', 'constant'"),
    ("train.max_steps=0", "train.max_steps = 0: must be an integer >= 1"),
    ("train.max_steps=-5", "train.max_steps = -5: must be an integer >= 1"),
    ("train.max_steps='abc'", "train.max_steps = 'abc': expected an integer"),
    ("train.max_steps=2.5", "train.max_steps = 2.5: expected an integer"),
    ("train.checkpoint_every=-1", "train.checkpoint_every = -1: must be an integer >= 0"),
    ("train.batch_size=0", "train.batch_size = 0: must be an integer >= 1"),
    ("train.batch_size=-4", "train.batch_size = -4: must be an integer >= 1"),
    ("train.micro_batch_size=-1", "train.micro_batch_size = -1: must be an integer >= 0"),
    ("train.micro_batch_size=8", "train.micro_batch_size = 8: must be <= train.batch_size (4)"),
    ("train.log_every=0", "train.log_every = 0: must be an integer >= 1"),
    ("train.keep_last=0", "train.keep_last = 0: must be an integer >= 1"),
    ("train.keep_last=-1", "train.keep_last = -1: must be an integer >= 1"),
    ("train.keep_every=-3", "train.keep_every = -3: must be an integer >= 0"),
    ("train.threads=-1", "train.threads = -1: must be an integer >= 0"),
    ("train.max_seconds=-1", "train.max_seconds = -1.0: must be a finite number >= 0"),
    ("train.max_seconds=nan", "train.max_seconds = nan: must be a finite number >= 0"),
    ("train.ramp_start=2", "train.ramp_start/ramp_increment/ramp_steps = [2, 0, 0]"),
    ("train.tp=0", "train.tp = 0: must be an integer >= 1"),
    ("train.replicate=-2", "train.replicate = -2: must be an integer >= 1"),
    ("train.dtype='float64'", "train.dtype = 'float64': must be one of 'auto'"),
    ("train.device='gpu'", "train.device = 'gpu': must be 'auto' or a torch device"),
    ("train.on_save_error='ignore'", "train.on_save_error = 'ignore': must be one of 'stop'"),
    ("train.compile=3", "train.compile = 3: expected true or false"),
    ("train.seed=-1", "train.seed = -1: must be an integer >= 0"),
    ("data.seq_len=0", "data.seq_len = 0: must be an integer >= 1"),
    ("data.seq_len=1000", "data.seq_len = 1000: must be <= model.max_seq_len (128)"),
    ("data.seed=-1", "data.seed = -1: must be an integer >= 0"),
    ("data.weights={kjv=nan}", "data.weights = {'kjv': nan}: must map sources to finite weights"),
    ("data.weights={kjv=-1}", "data.weights = {'kjv': -1.0}: must map sources to finite weights"),
    ("data.weights={kjv=0}", "data.weights = {'kjv': 0.0}: must map sources to finite weights"),
    ("data.weights={kjv='a'}", "data.weights = {'kjv': 'a'}: expected a table of source = number"),
    ("data.sources=[1]", "data.sources = [1]: must be a list of source names"),
    (
        "data.heldout='/nonexistent'",
        "data.heldout = '/nonexistent': must be a directory of <lang>/",
    ),
    ("model.hidden_size=0", "model.hidden_size = 0: must be an integer >= 1"),
    ("model.n_heads=5", "model.n_heads = 5: must divide model.hidden_size (64)"),
    ("model.norm_eps=-1", "model.norm_eps = -1.0: must be a finite number > 0"),
    ("model.rope_scaling=0.5", "model.rope_scaling = 0.5: must be a finite number >= 1"),
    ("monitor.spike.sigma=-1", "monitor.spike.sigma = -1.0: must be a finite number > 0"),
    ("monitor.spike.sigma='x'", "monitor.spike.sigma = 'x': expected a number"),
    ("monitor.nonfinite.policy='explode'", "monitor.nonfinite.policy = 'explode': must be one of"),
    ("monitor.divergence.ema=1", "monitor.divergence.ema = 1.0: must be a finite number >= 0"),
    ("monitor.eval.every=0", "monitor.eval.every = 0: must be an integer >= 1"),
]
if not torch.cuda.is_available():
    NEW_RUN.append(("train.device='cuda'", "train.device = 'cuda': this machine has 0 CUDA"))


@pytest.mark.parametrize(("override", "says"), NEW_RUN, ids=[c[0] for c in NEW_RUN])
def test_new_run_refuses_bad_key_and_creates_nothing(train_args, tmp_path, capsys, override, says):
    run_dir = tmp_path / "run"
    rc = main(train_args(run_dir, "optim.lr=3e-3", override))
    line = one_line(capsys.readouterr().err)
    assert rc == 2
    assert f"aquila: error: config key {says}" in line, line
    assert not run_dir.exists()


RESUME = [
    ("train.log_every=0", "config key train.log_every = 0: must be an integer >= 1"),
    ("optim.lr=-1", "config key optim.lr = -1.0: must be a finite number > 0"),
    ("train.keep_last=0", "config key train.keep_last = 0"),
    ("model.n_layers=3", "is for another model shape: n_layers=2 (config says 3)"),
    ("model.max_seq_len=64", "another model shape: max_seq_len=128 (config says 64)"),
    ("data.heldout='/nonexistent'", "config key data.heldout = '/nonexistent'"),
    ("data.seq_len=200", "config key data.seq_len = 200: must be <= model.max_seq_len (128)"),
    ("train.bogus=1", "unknown config key train.bogus"),
    ("train.max_steps=4", "train.max_steps = 4: must be >= 6, the step of step-00000006"),
]


@pytest.mark.parametrize(("override", "says"), RESUME, ids=[c[0] for c in RESUME])
def test_rejected_resume_changes_nothing(run_copy, capsys, override, says):
    before = tree(run_copy)
    rc = main(["train", "--resume", str(run_copy), "--quiet", "--no-report", "--set", override])
    line = one_line(capsys.readouterr().err)
    assert rc == 2 and says in line, line
    assert tree(run_copy) == before


def test_a_rejected_resume_leaves_the_run_resumable(run_copy, capsys):
    """The reproduction: a refused `--set model.n_layers=3` used to rewrite config.toml, so
    every later plain resume failed the same way."""
    assert main(["train", "--resume", str(run_copy), "--set", "model.n_layers=3"]) == 2
    capsys.readouterr()
    rc = main(
        ["train", "--resume", str(run_copy), "--quiet", "--no-report"]
        + ["--set", "train.max_steps=7", "--json"]
    )
    assert rc == 0, capsys.readouterr().err
    assert '"steps": 7' in capsys.readouterr().out
    assert "max_steps = 7" in (run_copy / "config.toml").read_text()


def test_mixture_weights_naming_an_unknown_source(train_args, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(train_args(run_dir, "data.weights={kjv=1, bible=1}")) == 2
    assert "mixture: unknown source(s) ['bible']" in one_line(capsys.readouterr().err)
    assert not run_dir.exists()


def test_heldout_without_documents_is_refused_at_start(train_args, tmp_path, capsys):
    heldout = tmp_path / "heldout"
    (heldout / "en").mkdir(parents=True)
    run_dir = tmp_path / "run"
    assert main(train_args(run_dir, f"data.heldout='{heldout}'")) == 2
    assert "en/ holds no document" in one_line(capsys.readouterr().err)
    assert not run_dir.exists()


def test_run_dir_that_is_a_file(train_args, tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("mine")
    assert main(train_args(path)) == 2
    assert "exists and is not a directory" in one_line(capsys.readouterr().err)
    assert main(train_args(path / "run")) == 2
    assert f"cannot create run directory {path / 'run'}" in one_line(capsys.readouterr().err)
    assert path.read_text() == "mine"


def test_resume_of_a_corrupt_config(run_copy, capsys):
    (run_copy / "config.toml").write_text("[train\nmax_steps = ")
    before = tree(run_copy)
    assert main(["train", "--resume", str(run_copy)]) == 2
    assert "cannot parse config" in one_line(capsys.readouterr().err)
    assert tree(run_copy) == before
