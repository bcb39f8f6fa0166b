"""Index maps from a large model's units (hidden dims, FFN neurons, heads, layers) to a small one's.

Every unit of the grown model copies a unit of the small model. The first units keep their
source's index; extra units pick sources from a seeded permutation, cycled when the model more
than doubles, so each source is copied as evenly as possible.

Hidden dims are special: they are the residual stream every layer reads through an RMSNorm.
The grown residual stream is ``h' = M h`` for a D x d matrix M with one non-zero per row:
- ``tile``: ``M[j, src j] = s_j`` with ``s_j = sqrt(D / (d * c))`` where c is the number of
  copies of dim ``src j``. Then ``M^T M = (D/d) I``, so rms(h') = rms(h) and
  ``RMSNorm'(M h) = M RMSNorm(h)`` with gains copied. A reader's weight becomes
  ``W' = (d/D) W M^T`` (``W' M = W``): column j is ``(d/D) s_j W[:, src j]``. For x2 every dim
  has two copies, s = 1, and this is the familiar split of each fan-in column in halves.
- ``rescale``: ``M = [I; 0]``: new dims start at zero. rms(h') = rms(h) * sqrt(d/D), so the old
  gains are multiplied by sqrt(d/D) (the normalised input grew by sqrt(D/d)). Readers' columns for
  the new dims multiply zeros: they are free, and get fresh random values that break symmetry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NORM_MODES = ("tile", "rescale")
DEPTH_MODES = ("stack", "interpolate")


def choose_sources(small: int, large: int, gen: torch.Generator) -> torch.Tensor:
    """(large,) source index per unit: identity for the first ``small``, then a seeded cycle."""
    extra = large - small
    if extra <= 0:
        return torch.arange(large)
    reps = -(-extra // small)
    picks = torch.cat([torch.randperm(small, generator=gen) for _ in range(reps)])[:extra]
    return torch.cat([torch.arange(small), picks])


def copy_counts(src: torch.Tensor, small: int) -> torch.Tensor:
    return torch.bincount(src, minlength=small)


@dataclass
class HiddenMap:
    """How each of the D hidden dims is made from the d small ones (see the module docstring)."""

    src: torch.Tensor  # (D,) source dim
    out_scale: torch.Tensor  # (D,) rows written into the residual stream: s_j (tile) or 1/0
    in_scale: torch.Tensor  # (D,) columns read after a norm
    gain_scale: torch.Tensor  # (D,) norm gains: gamma' = gamma[src] * gain_scale
    free: torch.Tensor  # (D,) bool: reader columns that multiply zeros (rescale's new dims)
    small: int

    @classmethod
    def build(cls, small: int, large: int, mode: str, gen: torch.Generator) -> HiddenMap:
        src = choose_sources(small, large, gen)
        new = torch.arange(large) >= small
        if mode == "tile":
            counts = copy_counts(src, small)[src].double()
            s = torch.sqrt(large / (small * counts))
            ones, none = (
                torch.ones(large, dtype=torch.float64),
                torch.zeros(large, dtype=torch.bool),
            )
            return cls(src, s, s * small / large, ones, none, small)
        if mode == "rescale":
            old = (~new).double()
            g = torch.full((large,), math.sqrt(small / large), dtype=torch.float64)
            return cls(src, old, old, g, new, small)
        raise ValueError(f"unknown norm mode {mode!r}")

    @property
    def new(self) -> torch.Tensor:
        return torch.arange(len(self.src)) >= self.small


@dataclass
class NeuronMap:
    """FFN neurons: duplicated rows in gate/up, fan-out columns of down split by copy count."""

    src: torch.Tensor
    split: torch.Tensor  # (F,) 1 / copies of the source neuron
    small: int

    @classmethod
    def build(cls, small: int, large: int, gen: torch.Generator) -> NeuronMap:
        src = choose_sources(small, large, gen)
        return cls(src, 1.0 / copy_counts(src, small)[src].double(), small)

    @property
    def new(self) -> torch.Tensor:
        return torch.arange(len(self.src)) >= self.small


@dataclass
class HeadMap:
    """Query heads and key/value heads under GQA; head_dim never changes.

    Large kv group k' copies small group ``kv_src[k']``. Its first G slots hold that group's G
    query heads, further slots copies of them, so every query head still reads the key/value
    head its source read and produces the same output; o_proj splits the copies' columns.
    """

    q_src: torch.Tensor  # (H',)
    kv_src: torch.Tensor  # (K',)
    q_split: torch.Tensor  # (H',) 1 / copies of the source head
    new_q: torch.Tensor  # (H',) bool
    new_kv: torch.Tensor  # (K',) bool

    @classmethod
    def build(cls, heads: int, kv: int, heads2: int, kv2: int, gen: torch.Generator) -> HeadMap:
        group, group2 = heads // kv, heads2 // kv2
        kv_src = choose_sources(kv, kv2, gen)
        slots = choose_sources(group, group2, gen)  # the same slot pattern in every group
        q_src = (kv_src[:, None] * group + slots[None, :]).reshape(-1)
        new_kv = torch.arange(kv2) >= kv
        new_q = (new_kv[:, None] | (torch.arange(group2) >= group)[None, :]).reshape(-1)
        split = 1.0 / copy_counts(q_src, heads)[q_src].double()
        return cls(q_src, kv_src, split, new_q, new_kv)


def depth_plan(small: int, large: int, mode: str) -> list[tuple[int, bool]]:
    """(source layer, is new) for each layer of the grown model.

    ``stack`` puts copies of the whole stack on top (layer i copies i mod L, as StackBERT and
    bert2BERT); ``interpolate`` places each copy right after its source, spreading the copies
    evenly over the depth (AquilaMoE's AKI-Pro).
    """
    if mode == "stack":
        return [(i % small, i >= small) for i in range(large)]
    if mode == "interpolate":
        plan = []
        for i in range(small):
            copies = (i + 1) * large // small - i * large // small
            plan += [(i, c > 0) for c in range(copies)]
        return plan
    raise ValueError(f"unknown depth mode {mode!r}")
