"""The mixture sampler: a pure function ``g -> (source, chunk)`` of the global sample index.

Given the seed and the mixture history (segments ``(from_g, weights)``), sample ``g`` is fixed:
no state is carried from one index to the next, so any rank can read any index, a run resumes on
another world size from ``g`` alone, and a mixture change at ``g1`` leaves every ``g < g1`` as it
was. Construction:

* **Counts.** Within a segment, the number of samples source ``i`` gets among the first ``n`` is
  a nested floor split: the first source (in name order, positive weights only) gets
  ``floor(n * w_1)``, the next ``floor(rest * w_2 / (w_2 + ...))`` of the rest, and so on; the
  last takes what remains. Each count is monotone in ``n``, they sum to ``n`` exactly and each
  stays within ``m`` samples of ``w_i * n`` (small weights too). The fractions are fixed-point
  (24 bits) so the arithmetic is exact integer math on every machine; the rounding moves a
  share by about 3e-8 per source.
* **Order.** Indices are cut into blocks of ``B`` from the segment start; block ``j`` holds
  ``count(jB + B) - count(jB)`` samples of each source in an order shuffled by a generator
  seeded with ``(seed, from_g, j)``. So ``counts_at(g)`` is the closed-form count at the block
  start plus a count over at most ``B`` entries: no replay from 0.
* **Chunks.** The ``n``-th draw of a source reads chunk ``perm_epoch(n mod N)`` with
  ``epoch = n // N``: every chunk is seen once per epoch and repetition is countable. The
  permutation is a keyed Feistel network with cycle walking, a bijection on ``[0, N)`` that
  needs no memory, so a corpus of a billion chunks costs nothing to shuffle.

Sources are keyed by name, never by position, so adding a source mid-run changes nothing before
the segment that introduces it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from aquila.checks import check_weights
from aquila.errors import UserError

FRAC_BITS = 24
# g * 2**FRAC_BITS must fit in int64: 2**39 samples is 2.2e15 tokens at seq_len 4096.
MAX_INDEX = 1 << (63 - FRAC_BITS)
FEISTEL_ROUNDS = 6
_GAMMA = 0x9E3779B97F4A7C15
_BLOCK_TAG = 0x5EED_B10C


@dataclass(frozen=True)
class MixtureHistory:
    """Ordered segments ``(from_g, weights)``; the weights of a segment hold from ``from_g`` on."""

    segments: tuple[tuple[int, dict[str, float]], ...] = field(default_factory=tuple)

    def with_segment(
        self, from_g: int, weights: dict[str, float], known: set[str] | None = None
    ) -> MixtureHistory:
        """A new history with ``weights`` (normalised) from ``from_g``; a segment starting at the
        same index as the last one replaces it. Raises ValueError saying what is wrong."""
        from_g = int(from_g)
        if not self.segments and from_g != 0:
            raise ValueError(f"the first mixture segment must start at 0, not {from_g}")
        if self.segments and from_g < self.segments[-1][0]:
            raise ValueError(
                f"mixture change at sample {from_g} is before the last change at "
                f"{self.segments[-1][0]}: the past cannot be changed"
            )
        try:
            weights = check_weights(weights, None if known is None else set(known), "mixture: ")
        except UserError as exc:
            raise ValueError(str(exc)) from None
        total = sum(weights.values())
        normed = {k: v / total for k, v in sorted(weights.items())}
        kept = (
            self.segments[:-1]
            if self.segments and self.segments[-1][0] == from_g
            else self.segments
        )
        return MixtureHistory((*kept, (from_g, normed)))

    def weights_at(self, g: int) -> dict[str, float]:
        for from_g, weights in reversed(self.segments):
            if from_g <= g:
                return dict(weights)
        raise ValueError("empty mixture history")

    def to_json(self) -> list[dict]:
        return [{"from_g": g, "weights": dict(w)} for g, w in self.segments]

    @classmethod
    def from_json(cls, obj: list[dict]) -> MixtureHistory:
        """Weights are taken verbatim (already normalised): renormalising could change the last
        bit of a float and with it which samples an old index maps to."""
        h = cls()
        for seg in obj:
            checked = h.with_segment(int(seg["from_g"]), seg["weights"])
            h = MixtureHistory((*checked.segments[:-1], (int(seg["from_g"]), dict(seg["weights"]))))
        return h


def _name_key(seed: int, name: str) -> np.uint64:
    digest = hashlib.sha256(f"{seed}\x00{name}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a fast, well-mixing bijection on uint64."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def feistel_permute(x: np.ndarray, n: int, key: np.ndarray) -> np.ndarray:
    """A keyed bijection of ``[0, n)`` applied to ``x`` (one key per element)."""
    bits = max(2, int(n - 1).bit_length())
    bits += bits & 1
    half = np.uint64(bits // 2)
    mask = np.uint64((1 << (bits // 2)) - 1)
    round_keys = [
        _mix64(key + np.uint64((r + 1) * _GAMMA % (1 << 64))) for r in range(FEISTEL_ROUNDS)
    ]

    def rounds(v: np.ndarray, sel: np.ndarray | None) -> np.ndarray:
        left, right = v >> half, v & mask
        for rk in round_keys:
            k = rk if sel is None else rk[sel]
            left, right = right, left ^ (_mix64(right ^ k) & mask)
        return (left << half) | right

    y = rounds(x.astype(np.uint64), None)
    # Cycle walking: the domain is at most 4n, so a few passes bring every value into [0, n).
    bad = np.flatnonzero(y >= np.uint64(n))
    while bad.size:
        y[bad] = rounds(y[bad], bad)
        bad = bad[y[bad] >= np.uint64(n)]
    return y.astype(np.int64)


class _Segment:
    """One mixture segment: the positive-weight sources and their fixed-point split fractions."""

    def __init__(self, from_g: int, weights: dict[str, float], index_of: dict[str, int]):
        self.from_g = from_g
        names = sorted(n for n, w in weights.items() if w > 0)
        w = np.array([weights[n] for n in names], dtype=np.float64)
        rest = np.cumsum(w[::-1])[::-1]
        # Conditional share of each source in what the earlier ones left; at least 1 so a tiny
        # positive weight is never rounded away.
        frac = np.maximum(1, np.round(w / rest * (1 << FRAC_BITS))).astype(np.int64)
        self.frac = np.minimum(frac, 1 << FRAC_BITS)
        self.global_ids = np.array([index_of[n] for n in names], dtype=np.int64)

    def counts(self, n: np.ndarray) -> np.ndarray:
        """``(len(n), m)`` samples of each source among the first ``n`` of this segment."""
        rest = np.asarray(n, dtype=np.int64).copy()
        out = np.empty((len(rest), len(self.frac)), dtype=np.int64)
        for i, f in enumerate(self.frac[:-1]):
            out[:, i] = (rest * f) >> FRAC_BITS
            rest -= out[:, i]
        out[:, -1] = rest
        return out


class Sampler:
    """``sample(g)`` -> (source index into ``source_names``, chunk index), purely from g."""

    def __init__(
        self, num_chunks: dict[str, int], history: MixtureHistory, seed: int, block_size: int = 1024
    ):
        if not history.segments:
            raise ValueError("empty mixture history")
        self.num_chunks = {k: int(v) for k, v in num_chunks.items()}
        self.source_names = sorted(self.num_chunks)
        self.history, self.seed, self.block = history, int(seed), int(block_size)
        index_of = {n: i for i, n in enumerate(self.source_names)}
        for from_g, weights in history.segments:
            used = {n for n, w in weights.items() if w > 0}
            unknown = sorted(used - set(index_of))
            if unknown:
                raise ValueError(f"mixture at sample {from_g} uses unknown source(s) {unknown}")
            empty = sorted(n for n in used if self.num_chunks[n] <= 0)
            if empty:
                raise ValueError(
                    f"mixture at sample {from_g} uses source(s) {empty} with no chunks"
                )
        self._segments = [_Segment(g0, w, index_of) for g0, w in history.segments]
        self._starts = np.array([s.from_g for s in self._segments], dtype=np.int64)
        self._chunk_count = np.array([self.num_chunks[n] for n in self.source_names], np.int64)
        self._name_keys = [_name_key(self.seed, n) for n in self.source_names]
        self._block_cache = lru_cache(maxsize=4096)(self._build_block)
        # Counts before each segment, so a lookup starts from the nearest change, not from 0.
        self._base = np.zeros((len(self._segments), len(self.source_names)), dtype=np.int64)
        for k in range(1, len(self._segments)):
            length = int(self._starts[k] - self._starts[k - 1])
            self._base[k] = self._base[k - 1] + self._counts_in(k - 1, length)

    # -- blocks ---------------------------------------------------------------------------------
    def _build_block(self, k: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Source of each position, its occurrence number in the block, counts before the block."""
        seg, b = self._segments[k], self.block
        before, after = seg.counts(np.array([j * b, j * b + b]))
        quota = after - before
        canonical = np.repeat(np.arange(len(quota)), quota)
        rng = np.random.default_rng([self.seed, _BLOCK_TAG, int(seg.from_g), j])
        order = rng.permutation(b)
        local = canonical[order]
        # Occurrence number in position order, so draws of a source are numbered as they come.
        by_source = np.argsort(local, kind="stable")
        group_start = np.cumsum(quota) - quota
        occ = np.empty(b, dtype=np.int64)
        occ[by_source] = np.arange(b) - group_start[local[by_source]]
        base = self._base[k].copy()
        base[seg.global_ids] += before
        return seg.global_ids[local], occ, base

    def _counts_in(self, k: int, n: int) -> np.ndarray:
        """Per-source counts (all sources) among the first ``n`` samples of segment ``k``."""
        seg = self._segments[k]
        j, o = divmod(n, self.block)
        out = np.zeros(len(self.source_names), dtype=np.int64)
        out[seg.global_ids] = seg.counts(np.array([j * self.block]))[0]
        if o:
            src, _, _ = self._block_cache(k, j)
            out += np.bincount(src[:o], minlength=len(self.source_names))
        return out

    def _check(self, g: np.ndarray) -> None:
        if g.size and (g.min() < 0 or g.max() >= MAX_INDEX):
            raise ValueError(
                f"sample indices must be in [0, {MAX_INDEX}), got {g.min()}..{g.max()}"
            )

    # -- public ---------------------------------------------------------------------------------
    def sample(self, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = np.asarray(g, dtype=np.int64).ravel()
        self._check(g)
        if not g.size:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        k = np.searchsorted(self._starts, g, side="right") - 1
        j, pos = np.divmod(g - self._starts[k], self.block)
        # One key per (segment, block); blocks are built (or fetched from the cache) once each.
        keys, inv = np.unique((k << 40) | j, return_inverse=True)
        blocks = [self._block_cache(int(key >> 40), int(key & ((1 << 40) - 1))) for key in keys]
        src_tab = np.stack([b[0] for b in blocks])
        occ_tab = np.stack([b[1] for b in blocks])
        base_tab = np.stack([b[2] for b in blocks])
        inv = inv.ravel()
        src = src_tab[inv, pos]
        draw = base_tab[inv, src] + occ_tab[inv, pos]
        return src, self._chunks(src, draw)

    def _chunks(self, src: np.ndarray, draw: np.ndarray) -> np.ndarray:
        chunk = np.empty_like(draw)
        for s in np.unique(src):
            sel = np.flatnonzero(src == s)
            n = int(self._chunk_count[s])
            epoch, within = np.divmod(draw[sel], n)
            key = _mix64(self._name_keys[s] ^ _mix64(epoch.astype(np.uint64)))
            chunk[sel] = feistel_permute(within, n, key)
        return chunk

    def counts_at(self, g: int) -> dict[str, int]:
        """Samples drawn from each source among indices ``< g`` (O(B), no replay)."""
        g = int(g)
        self._check(np.array([g]))
        k = int(np.searchsorted(self._starts, g, side="right") - 1)
        counts = self._base[k] + self._counts_in(k, g - int(self._starts[k]))
        return {n: int(c) for n, c in zip(self.source_names, counts)}

    def epochs_at(self, g: int) -> dict[str, float]:
        """Passes over each source's chunks among indices ``< g`` (1.5 = seen one and a half times)."""
        return {n: c / self.num_chunks[n] for n, c in self.counts_at(g).items()}


def global_indices(step: int, rank: int, world: int, local_batch: int) -> np.ndarray:
    """The sample indices rank ``rank`` of ``world`` reads at ``step`` with a fixed batch size."""
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} out of range for world size {world}")
    start = (step * world + rank) * local_batch
    return np.arange(start, start + local_batch, dtype=np.int64)
