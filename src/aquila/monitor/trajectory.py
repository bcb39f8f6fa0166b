"""Weight trajectories (Aquila2 report): per parameter type, the curve of per-layer weight std;
consecutive checkpoints are compared by the discrete Fréchet distance between their curves,
divided by the tokens trained between them (reported per 1B tokens)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from aquila.engine.callbacks import Callback

# Parameter type -> the suffix of its name inside ``layers.N.`` (HF-Llama names).
PARAM_TYPES = {
    "q": "self_attn.q_proj.weight",
    "k": "self_attn.k_proj.weight",
    "v": "self_attn.v_proj.weight",
    "o": "self_attn.o_proj.weight",
    "gate": "mlp.gate_proj.weight",
    "up": "mlp.up_proj.weight",
    "down": "mlp.down_proj.weight",
    "input_layernorm": "input_layernorm.weight",
    "post_attention_layernorm": "post_attention_layernorm.weight",
}
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.(.+)$")
_SUFFIX_TO_TYPE = {v: k for k, v in PARAM_TYPES.items()}


def discrete_frechet(p: np.ndarray, q: np.ndarray) -> float:
    """Discrete Fréchet distance (Eiter & Mannila 1994) between polylines of points ``(n, d)``.

    The smallest, over monotone couplings of the two point sequences, of the largest distance
    between coupled points: dynamic programming over the n x m coupling grid.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if q.ndim == 1:
        q = q[:, None]
    if len(p) == 0 or len(q) == 0:
        raise ValueError("discrete_frechet needs non-empty curves")
    d = np.linalg.norm(p[:, None, :] - q[None, :, :], axis=-1)
    ca = np.empty_like(d)
    n, m = d.shape
    for i in range(n):
        for j in range(m):
            if i == 0 and j == 0:
                prev = 0.0
            elif i == 0:
                prev = ca[0, j - 1]
            elif j == 0:
                prev = ca[i - 1, 0]
            else:
                prev = min(ca[i - 1, j], ca[i - 1, j - 1], ca[i, j - 1])
            ca[i, j] = max(prev, d[i, j])
    return float(ca[-1, -1])


def curve_points(stds: list[float]) -> np.ndarray:
    """A std curve as points ``(layer index, std)``: the layer axis keeps couplings near-diagonal."""
    return np.stack([np.arange(len(stds), dtype=np.float64), np.asarray(stds, np.float64)], 1)


def std_curves(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, list[float]]:
    """Per parameter type, the std of each layer's weights in layer order."""
    found: dict[str, dict[int, torch.Tensor]] = {}
    for name, tensor in named:
        m = _LAYER.search(name)
        if not m or m.group(2) not in _SUFFIX_TO_TYPE:
            continue
        found.setdefault(_SUFFIX_TO_TYPE[m.group(2)], {})[int(m.group(1))] = tensor
    curves = {}
    for ptype, layers in found.items():
        # One stacked transfer per type: a single host sync however deep the model is.
        stds = torch.stack([layers[i].detach().float().std() for i in sorted(layers)])
        curves[ptype] = stds.cpu().tolist()
    return {p: curves[p] for p in PARAM_TYPES if p in curves}


def model_curves(model: torch.nn.Module) -> dict[str, list[float]]:
    return std_curves(model.named_parameters())


def checkpoint_curves(path: str | Path) -> dict[str, list[float]]:
    """The curves of a saved model dir (``model.safetensors``), read lazily tensor by tensor."""
    from safetensors import safe_open

    file = Path(path) / "model.safetensors"
    with safe_open(str(file), framework="pt") as f:
        return std_curves((k, f.get_tensor(k)) for k in f.keys() if _LAYER.search(k))  # noqa: SIM118


def checkpoint_tokens(path: str | Path) -> int:
    state = torch.load(Path(path) / "train_state.pt", map_location="cpu", weights_only=True)
    return int(state["trainer"]["tokens"])


def trajectory_distances(
    a: Mapping[str, list[float]], b: Mapping[str, list[float]], tokens_between: int
) -> dict[str, float]:
    """Fréchet distance per parameter type between two checkpoints' curves, per 1B tokens."""
    if tokens_between <= 0:
        raise ValueError(f"tokens between checkpoints must be positive, got {tokens_between}")
    scale = 1e9 / tokens_between
    return {
        p: discrete_frechet(curve_points(a[p]), curve_points(b[p])) * scale for p in a if p in b
    }


class TrajectoryCallback(Callback):
    """On each checkpoint: the std curves from the in-memory model and the distance to the
    previous checkpoint, stored per parameter type with the data phase in force."""

    def __init__(self):
        self.db = None
        self.seen: dict[int, tuple[int, dict[str, list[float]]]] = {}

    def on_start(self, trainer) -> None:
        if not trainer.is_main:
            return
        from aquila.monitor import store

        self.db = store.open_db(trainer.run_dir)
        for row in store.trajectory(self.db):
            tokens, curves = self.seen.setdefault(row["step"], (row["tokens"], {}))
            curves[row["ptype"]] = row["curve"]

    def on_checkpoint(self, trainer, path) -> None:
        if self.db is None:
            return
        from aquila.monitor import store
        from aquila.monitor.metrics import mixture_label

        saved = trainer.checkpoint_state  # a background write completes steps later
        step, tokens = saved.step, saved.tokens
        if any(s >= step for s in self.seen):
            # A rewind: later curves belong to a path training has left.
            self.seen = {s: v for s, v in self.seen.items() if s < step}
            store.drop_trajectory_after(self.db, step - 1)
        # A distributed checkpoint's consolidated weights are on disk; the in-memory parameters
        # are shards only rank 0 cannot reduce alone, or have moved on since a background write.
        on_disk = trainer.dist.world > 1 or step != trainer.state.step
        curves = checkpoint_curves(path) if on_disk else model_curves(trainer.model)
        earlier = [s for s, (t, _) in self.seen.items() if t < tokens]
        prev = max(earlier) if earlier else None
        dist = {}
        if prev is not None:
            prev_tokens, prev_curves = self.seen[prev]
            dist = trajectory_distances(prev_curves, curves, tokens - prev_tokens)
        label = mixture_label(trainer)
        for ptype, curve in curves.items():
            store.put_trajectory(self.db, step, ptype, tokens, label, curve, prev, dist.get(ptype))
        self.seen[step] = (tokens, curves)
