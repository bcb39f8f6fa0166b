"""A static picture of a run for reports: loss (overall and per source), norms, LR, throughput,
held-out bits per byte and the weight trajectory, in one PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from aquila.engine.rundb import RunDB
from aquila.errors import UserError
from aquila.monitor import store


def save_png(db: RunDB, out: str | Path, title: str = "") -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--png needs matplotlib: pip install 'aquila[monitor]'") from None
    rows = store.latest_metrics(db)
    if not rows:
        raise UserError(f"{db.path}: no metrics logged yet, nothing to plot")
    steps = [r["step"] for r in rows]

    def series(key):
        return [r.get(key) if isinstance(r.get(key), (int, float)) else float("nan") for r in rows]

    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    ax = axes[0][0]
    ax.plot(steps, series("loss"), color="black", lw=2, label="loss")
    for name in sorted({n for r in rows for n in r.get("source_loss", {})}):
        ax.plot(steps, [r.get("source_loss", {}).get(name, float("nan")) for r in rows], label=name)
    ax.set_title("loss (overall and per source)")
    ax.legend(fontsize=8)
    ax = axes[0][1]
    ax.plot(steps, series("grad_norm"), label="grad norm")
    ax.set_title("gradient norm (left) / parameter norm (right)")
    ax.twinx().plot(steps, series("param_norm"), color="tab:orange")
    axes[0][2].plot(steps, series("lr"))
    axes[0][2].set_title("learning rate")
    axes[1][0].plot(steps, series("tokens_per_s"))
    axes[1][0].set_title("tokens / s")
    ax = axes[1][1]
    for lang, pts in _bpb(db).items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=lang)
    ax.set_title("held-out bits per byte")
    if ax.lines:
        ax.legend(fontsize=8)
    ax = axes[1][2]
    traj = [r for r in store.trajectory(db) if r["distance"] is not None]
    for ptype in dict.fromkeys(r["ptype"] for r in traj):
        pts = [r for r in traj if r["ptype"] == ptype]
        ax.plot([r["step"] for r in pts], [r["distance"] for r in pts], marker="o", label=ptype)
    ax.set_title("weight trajectory (Fréchet / 1B tokens)")
    if traj:
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
    for a in axes.flat:
        a.set_xlabel("step")
        a.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _bpb(db: RunDB) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for e in db.evals():
        if e["task"] == "heldout-bpb":
            for lang, r in e["data"].get("languages", {}).items():
                out.setdefault(lang, []).append((e["step"], r["bpb"]))
    return {k: sorted(v) for k, v in out.items()}
