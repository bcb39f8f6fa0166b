"""Weight trajectories (Aquila2 report): per parameter type, the curve of per-layer weight std;
consecutive checkpoints are compared by the discrete Fréchet distance between their curves,
divided by the tokens trained between them (reported per 1B tokens).

The std of a tensor comes from its sum, sum of squares and count. In a multi-process run each
rank computes them over its own shards and one all-reduce adds them (an element held by several
ranks counted once), so no rank ever gathers a weight. A saved checkpoint is read one tensor at a
time, whatever its layout.
"""

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


def _layer_types(names) -> dict[str, dict[int, str]]:
    """Per parameter type, layer index -> parameter name, for the names that have a type."""
    found: dict[str, dict[int, str]] = {}
    for name in names:
        m = _LAYER.search(name)
        if m and m.group(2) in _SUFFIX_TO_TYPE:
            found.setdefault(_SUFFIX_TO_TYPE[m.group(2)], {})[int(m.group(1))] = name
    return found


def moments(t: torch.Tensor) -> torch.Tensor:
    """(sum, sum of squares, count) of ``t``'s elements in float64."""
    x = t.detach().float()
    return torch.stack(
        [
            x.sum(dtype=torch.float64),
            (x * x).sum(dtype=torch.float64),
            torch.tensor(x.numel(), dtype=torch.float64, device=x.device),
        ]
    )


def _curves(found: dict[str, dict[int, str]], stats: dict[str, torch.Tensor]) -> dict:
    curves = {}
    for ptype, layers in found.items():
        m = torch.stack([stats[layers[i]] for i in sorted(layers)]).cpu()  # one host sync
        total, squares, n = m[:, 0], m[:, 1], m[:, 2]
        # Unbiased, as torch.std: (sum x^2 - (sum x)^2 / n) / (n - 1).
        var = (squares - total * total / n).clamp(min=0) / (n - 1).clamp(min=1)
        curves[ptype] = var.sqrt().tolist()
    return {p: curves[p] for p in PARAM_TYPES if p in curves}


def std_curves(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, list[float]]:
    """Per parameter type, the std of each layer's (whole) weights in layer order."""
    tensors = dict(named)
    found = _layer_types(tensors)
    stats = {n: moments(tensors[n]) for layers in found.values() for n in layers.values()}
    return _curves(found, stats)


def model_curves(model: torch.nn.Module) -> dict[str, list[float]]:
    """The curves of the weights in memory. With sharded parameters (or any multi-process run)
    this is a collective: every rank must call it; each reduces its own shards."""
    import torch.distributed as dist

    from aquila.model.sharding import local_view

    params = dict(model.named_parameters())
    found = _layer_types(params)
    names = [n for layers in found.values() for n in layers.values()]
    if not names:
        return {}
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return _curves(found, {n: moments(params[n]) for n in names})
    from aquila.engine.distributed import replica_count

    # Each rank's sums over its own elements, each divided by how many ranks hold a copy; one
    # all-reduce for every tensor of every layer.
    local = torch.stack(
        [moments(local_view(params[n]).local) / replica_count(params[n], world) for n in names]
    )
    dist.all_reduce(local)
    return _curves(found, dict(zip(names, local)))


def checkpoint_curves(path: str | Path) -> dict[str, list[float]]:
    """The curves of a saved model dir (any weight layout: one file, sharded, or a multi-process
    checkpoint's DCP shards), read one tensor at a time."""
    from aquila.model.io import open_weights

    source = open_weights(path)
    found = _layer_types(source.infos())
    stats = {}
    for layers in found.values():
        for name in layers.values():
            stats[name] = moments(source.read([name])[name])
    return _curves(found, stats)


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
    """On each checkpoint: the std curves of its weights (computed in memory as the save starts)
    and the distance to the previous checkpoint, stored per parameter type with the data phase
    in force."""

    def __init__(self):
        self.db = None
        self.seen: dict[int, tuple[int, dict[str, list[float]]]] = {}
        # Curves and the data phase, taken as a save started, by step, until its checkpoint is
        # reported.
        self.pending: dict[int, tuple[dict[str, list[float]], str]] = {}

    def on_start(self, trainer) -> None:
        if not trainer.is_main:
            return
        from aquila.monitor import store

        self.db = store.open_db(trainer.run_dir)
        for row in store.trajectory(self.db):
            tokens, curves = self.seen.setdefault(row["step"], (row["tokens"], {}))
            curves[row["ptype"]] = row["curve"]

    def before_save(self, trainer) -> None:
        # Every rank, at the save's start: the checkpoint's own weights (a background write
        # completes steps later), reduced across shards without gathering.
        curves = model_curves(trainer.model)  # collective: every rank takes part
        if self.db is not None:
            from aquila.monitor.metrics import mixture_label

            # The phase in force at this checkpoint's position: a background write reports its
            # checkpoint steps later, possibly after a phase that starts later has begun.
            self.pending[trainer.state.step] = (curves, mixture_label(trainer))

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
        taken = self.pending.pop(step, None)
        self.pending = {s: c for s, c in self.pending.items() if s > step}
        if taken is not None:
            curves, label = taken
        else:  # saved without before_save (an older caller): read it back
            curves, label = checkpoint_curves(path), mixture_label(trainer)
        earlier = [s for s, (t, _) in self.seen.items() if t < tokens]
        prev = max(earlier) if earlier else None
        dist = {}
        if prev is not None:
            prev_tokens, prev_curves = self.seen[prev]
            dist = trajectory_distances(prev_curves, curves, tokens - prev_tokens)
        for ptype, curve in curves.items():
            store.put_trajectory(self.db, step, ptype, tokens, label, curve, prev, dist.get(ptype))
        self.seen[step] = (tokens, curves)
