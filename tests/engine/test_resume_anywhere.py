"""Mixture changed live through `aquila control`, a kill, a resume on 2 processes, back to 1:
every step's batch is exactly what the pure sampler over the recorded mixture history says."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from aquila.data.sampler import MixtureHistory, Sampler
from aquila.engine.checkpoint import list_checkpoints
from aquila.engine.dcp import is_sharded
from aquila.engine.rundb import RunDB

# Runs one training (fresh or resumed) and logs each rank's batches: used in-process and under
# torchrun, so both paths go through the same prepare_run as `aquila train`.
DRIVER = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    from aquila.cli import main as cli
    from aquila.engine.callbacks import Callback
    from aquila.train.run import prepare_run


    class Recorder(Callback):
        def __init__(self, path):
            self.path = Path(path)

        def before_optimizer(self, trainer, info):
            names = trainer.data.source_names
            row = {
                "step": trainer.state.step + 1,
                "rank": trainer.dist.rank,
                "world": trainer.dist.world,
                "g": info["global_indices"].tolist(),
                "src": [names[i] for i in info["source_ids"].tolist()],
            }
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\\n")

        def on_step(self, trainer, metrics):
            if metrics.logged and trainer.is_main:
                with self.path.with_suffix(".loss").open("a") as f:
                    f.write(json.dumps([metrics.step, metrics.loss, metrics.grad_norm]) + "\\n")


    class Control(Callback):
        # `aquila control` from inside the run, after step k: applies at the boundary before k+1.
        def __init__(self, run_dir, at):
            self.run_dir, self.at = str(run_dir), at

        def on_step(self, trainer, metrics):
            argv = self.at.get(metrics.step)
            if argv and trainer.is_main:
                assert cli(["control", self.run_dir, *argv]) == 0


    class Kill(Callback):
        def __init__(self, step):
            self.step = step

        def on_step(self, trainer, metrics):
            if metrics.step == self.step:
                raise RuntimeError("killed")


    if __name__ == "__main__":
        # Any further arguments are config overrides (a layout: train.tp=2).
        run_dir, log, max_steps, *extra = sys.argv[1:]
        run = prepare_run(
            resume=run_dir, overrides=[f"train.max_steps={max_steps}", *extra],
            callbacks=[Recorder(log)], quiet=True,
        )
        print(run.trainer.fit(), run.trainer.state.step)
        from aquila.engine.distributed import shutdown_distributed

        shutdown_distributed()
    """
)


def load_driver(tmp_path: Path):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER)
    spec = importlib.util.spec_from_file_location("resume_driver", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return path, mod


def torchrun(nproc: int, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", f"--nproc-per-node={nproc}", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    return res


def read_log(path: Path) -> dict[int, dict[int, dict]]:
    out: dict[int, dict[int, dict]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        out.setdefault(row["step"], {})[row["rank"]] = row
    return out


@pytest.mark.distributed
def test_live_mixture_kill_resume_on_2_then_1_process(make_config, tmp_path):
    driver_path, drv = load_driver(tmp_path)
    run_dir = tmp_path / "run"
    log = tmp_path / "batches.jsonl"
    cfg = make_config("train.max_steps=6", "train.checkpoint_every=2", run_dir=run_dir)
    from aquila.train.run import prepare_run

    control = drv.Control(
        run_dir,
        {
            2: ["set-mixture", "kjv=0.2,news=0.8"],  # applies before step 3, kept by ckpt 4
            4: ["set-mixture", '{"kjv": 0.9, "news": 0.1}'],  # after ckpt 4: lost in the kill
        },
    )
    run = prepare_run(cfg, callbacks=[drv.Recorder(log), control, drv.Kill(5)], quiet=True)
    with pytest.raises(RuntimeError, match="killed"):
        run.trainer.fit()
    assert [s for s, _ in list_checkpoints(run_dir)] == [2, 4]
    applied = [c for c in RunDB(run_dir).commands() if c["status"] == "applied"]
    assert [(c["kind"], c["applied_step"]) for c in applied] == [
        ("set-mixture", 2),
        ("set-mixture", 4),
    ]

    # Resume from step 4 on 2 processes (gloo, FSDP2, sharded checkpoint) up to step 7.
    torchrun(2, str(driver_path), str(run_dir), str(log), "7")
    ckpts = dict(list_checkpoints(run_dir))
    assert 7 in ckpts and is_sharded(ckpts[7])

    # And back to 1 process, from the 2-process checkpoint, to step 10.
    resumed = prepare_run(
        resume=run_dir, callbacks=[drv.Recorder(log)], quiet=True, overrides=["train.max_steps=10"]
    )
    assert resumed.trainer.state.step == 7
    assert resumed.trainer.fit() == "completed"

    data = resumed.data
    history = data.history
    # Both live changes, the lost one re-applied at its step: samples 8 and 16 (4 per step).
    assert [g for g, _ in history.segments] == [0, 8, 16]
    assert history.segments[1][1] == pytest.approx({"kjv": 0.2, "news": 0.8})
    assert history.segments[2][1] == pytest.approx({"kjv": 0.9, "news": 0.1})
    replay = [h for h in resumed.trainer.history if h.get("command") == "set-mixture"]
    assert [(h["step"], h["samples"]) for h in replay] == [(2, 8), (4, 16)]

    # The pure function over the recorded history, independent of any trainer state.
    sampler = Sampler(data.num_chunks, MixtureHistory.from_json(history.to_json()), data.seed)
    rows = read_log(log)
    assert sorted(rows) == list(range(1, 11))
    worlds = {}
    for step in range(1, 11):
        # Steps 5 of the killed run and of the resumed one must agree: keep the last writer.
        by_rank = rows[step]
        world = max(r["world"] for r in by_rank.values())
        worlds[step] = world
        assert sorted(by_rank) == list(range(world))
        g = [x for r in range(world) for x in by_rank[r]["g"]]
        assert g == list(range((step - 1) * 4, step * 4))
        src, _ = sampler.sample(np.array(g))
        assert [x for r in range(world) for x in by_rank[r]["src"]] == [
            sampler.source_names[i] for i in src
        ]
    assert worlds == {1: 1, 2: 1, 3: 1, 4: 1, 5: 2, 6: 2, 7: 2, 8: 1, 9: 1, 10: 1}
    # The mixture changes are visible in the data: news dominates 8..15, kjv from 16 on.
    counts = lambda lo, hi: Sampler.counts_at(sampler, hi)["kjv"] - sampler.counts_at(lo)["kjv"]  # noqa: E731
    assert counts(8, 16) <= 3 and counts(16, 40) >= 18
