"""A held-out text directory, the config factory of the monitor tests and one finished run."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_configure(config):
    config.addinivalue_line("markers", "browser: drives a headless Chromium (needs playwright)")


@pytest.fixture(scope="session")
def heldout_dir(tmp_path_factory, english_text, chinese_text) -> Path:
    root = tmp_path_factory.mktemp("heldout")
    for lang, text in (("en", english_text[-6000:]), ("zh", chinese_text[-3000:])):
        (root / lang).mkdir()
        (root / lang / "part.txt").write_text(text, encoding="utf-8")
    return root


@pytest.fixture()
def make_config(shard_dir, tiny_config, heldout_dir, tmp_path):
    def make(*overrides: str, run_dir: Path | None = None):
        return tiny_config(
            shard_dir,
            run_dir or tmp_path / "run",
            f"data.heldout='{heldout_dir}'",
            "train.batch_size=4",
            "train.max_steps=6",
            "train.log_every=1",
            "train.checkpoint_every=3",
            *overrides,
        )

    return make


@pytest.fixture(scope="session")
def monitored_run(shard_dir, tiny_config, heldout_dir, tmp_path_factory) -> Path:
    """A finished 12-step run of the aquila-test model with every monitor callback attached."""
    from aquila.monitor import MonitorOptions, monitor_callbacks
    from aquila.train.run import prepare_run

    run_dir = tmp_path_factory.mktemp("monitored") / "run"
    cfg = tiny_config(
        shard_dir,
        run_dir,
        f"data.heldout='{heldout_dir}'",
        "train.batch_size=4",
        "train.max_steps=12",
        "train.log_every=2",
        "train.checkpoint_every=6",
    )
    opts = MonitorOptions.from_any({"eval": {"max_bytes": 3000}})
    prepare_run(cfg, callbacks=monitor_callbacks(opts), quiet=True, monitor=False).trainer.fit()
    return run_dir
