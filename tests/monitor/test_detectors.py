import math
import random

import pytest

from aquila.errors import UserError
from aquila.monitor.config import (
    DivergenceOptions,
    MonitorOptions,
    PlateauOptions,
    SpikeOptions,
)
from aquila.monitor.detectors import (
    DivergenceDetector,
    NonFiniteDetector,
    PlateauDetector,
    SpikeDetector,
)


def test_spike_fires_above_sigma_and_keeps_spikes_out_of_window():
    rng = random.Random(0)
    det = SpikeDetector(SpikeOptions(window=64, sigma=6.0, min_history=20))
    for step in range(1, 101):
        assert det.update(step, 3.0 + rng.gauss(0, 0.02), 1.0 + rng.gauss(0, 0.01)) is None
    hit = det.update(101, 3.5, 1.0)
    assert hit and hit.kind == "spike" and "loss" in hit.evidence
    assert hit.evidence["loss"]["sigmas"] > 6 and hit.evidence["window"] == 64
    # The spike did not widen the window: a second identical spike fires too.
    assert det.update(102, 3.5, 1.0) is not None
    assert det.update(103, 3.01, 1.0) is None
    gn = det.update(104, 3.0, 5.0)
    assert gn and "grad_norm" in gn.evidence and "loss" not in gn.evidence


def test_spike_needs_history():
    det = SpikeDetector(SpikeOptions(min_history=20))
    assert all(det.update(s, 3.0 if s < 5 else 30.0, 1.0) is None for s in range(1, 8))


def test_nonfinite():
    det = NonFiniteDetector()
    assert det.update(1, 2.0, 1.0) is None
    f = det.update(2, math.nan, 1.0)
    assert f and f.severity == "error" and f.evidence["loss"] == "nan"
    assert det.update(3, 2.0, math.inf).message.endswith("gradient norm at step 3")


def test_plateau_fires_once_after_window_without_improvement():
    det = PlateauDetector(PlateauOptions(window=50, min_delta=0.01, ema=0.5))
    found = [det.update(s, 5.0 - 0.02 * s) for s in range(1, 51)]
    assert not any(found)
    flat = [det.update(s, 4.0) for s in range(51, 160)]
    hits = [f for f in flat if f]
    assert len(hits) == 1 and hits[0].kind == "plateau" and hits[0].step >= 100
    # Improvement re-arms it.
    det.update(200, 3.0)
    assert det.reported is False


def test_divergence_detects_rise_above_minimum():
    det = DivergenceDetector(DivergenceOptions(rise=0.25, ema=0.5, min_steps=10))
    for s in range(1, 31):
        assert det.update(s, 4.0 - 0.05 * s) is None  # falls to 2.5
    hits = [det.update(s, 4.0) for s in range(31, 40)]
    fired = [h for h in hits if h]
    assert len(fired) == 1 and fired[0].evidence["minimum"] == pytest.approx(2.5, abs=0.1)


def test_options_from_dict_and_errors():
    opts = MonitorOptions.from_any({"spike": {"policy": "skip", "sigma": 4}, "tensorboard": True})
    assert opts.spike.policy == "skip" and opts.spike.sigma == 4.0 and opts.spike.window == 128
    assert opts.nonfinite.policy == "rewind"
    with pytest.raises(UserError, match="monitor.spike.policy"):
        MonitorOptions.from_any({"spike": {"policy": "explode"}})
    with pytest.raises(UserError, match="unknown config key monitor.spikes"):
        MonitorOptions.from_any({"spikes": {}})
