from aquila.monitor import store
from aquila.monitor.suggest import stalled_sources, suggestions


def _rows(n, kjv, news):
    return [
        {"step": s, "loss": (kjv(s) + news(s)) / 2, "source_loss": {"kjv": kjv(s), "news": news(s)}}
        for s in range(1, n + 1)
    ]


def test_stalled_source_found():
    rows = _rows(40, lambda s: 5.0 - 0.05 * s, lambda s: 4.0)
    assert set(stalled_sources(rows)) == {"news"}
    assert stalled_sources(rows[:5]) == {}


def test_suggestions_from_run_db(tmp_path):
    db = store.open_db(tmp_path)
    store.add_mixture(db, 0, 0, "mixture 1", {"kjv": 0.5, "news": 0.5})
    for r in _rows(40, lambda s: 5.0 - 0.05 * s, lambda s: 4.0):
        db.add_metrics(r["step"], r)
    for step in (12, 30):
        db.add_event(step, "spike", "loss spike", "warning", suspect_source="news")
    db.add_event(35, "divergence", "diverged", "error")
    db.add_eval(10, "heldout-bpb", {"languages": {"en": {"bpb": 2.0}}})
    db.add_eval(20, "heldout-bpb", {"languages": {"en": {"bpb": 2.2}}})
    got = {s.kind: s for s in suggestions(db)}
    assert got["source-stalled"].command == {
        "kind": "set-mixture",
        "args": {"weights": {"kjv": 0.5, "news": 0.25}},
    }
    assert "news" in got["spike-source"].message and got["spike-source"].command is not None
    assert got["divergence"].command == {"kind": "set-lr", "args": {"scale": 0.5}}
    assert "'en'" in got["heldout-rising"].message
    assert "plateau" not in got


def test_every_source_stalled_is_a_plateau(tmp_path):
    db = store.open_db(tmp_path)
    store.add_mixture(db, 0, 0, "mixture 1", {"kjv": 0.5, "news": 0.5})
    for r in _rows(40, lambda s: 4.0, lambda s: 4.0):
        db.add_metrics(r["step"], r)
    kinds = [s.kind for s in suggestions(db)]
    assert kinds == ["plateau"]
