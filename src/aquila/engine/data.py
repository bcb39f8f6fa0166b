"""The trainer's view of the data: token sources, the mixture history and the pure sampler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aquila.data.batches import Batch, BatchReader
from aquila.data.sampler import MixtureHistory, Sampler
from aquila.data.shards import TokenSource, load_sources
from aquila.errors import UserError


class TrainData:
    """Reads batches by global sample index; the mixture can change at any index.

    Its whole state is the mixture history (segments of weights by global index): with the seed
    that determines every batch, on any number of ranks.
    """

    def __init__(
        self,
        sources: dict[str, TokenSource],
        seq_len: int,
        seed: int,
        weights: dict[str, float] | None = None,
    ):
        self.sources = sources
        self.seq_len = seq_len
        self.seed = seed
        self.num_chunks = {name: s.num_chunks(seq_len) for name, s in sources.items()}
        empty = [n for n, c in self.num_chunks.items() if c == 0]
        if empty:
            raise UserError(
                f"source(s) {', '.join(empty)} hold fewer than seq_len+1 = {seq_len + 1} tokens"
            )
        w = weights or natural_weights(sources)
        self.history = MixtureHistory().with_segment(0, self._check_weights(w))
        self._rebuild()

    @property
    def source_names(self) -> list[str]:
        return self.sampler.source_names

    def _check_weights(self, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(self.sources))
        if unknown:
            raise UserError(
                f"unknown source(s) in mixture: {unknown}; known: {sorted(self.sources)}"
            )
        if any(v < 0 for v in weights.values()) or sum(weights.values()) <= 0:
            raise UserError(f"mixture weights must be >= 0 with a positive sum, got {weights}")
        return {name: float(weights.get(name, 0.0)) for name in self.sources}

    def _rebuild(self) -> None:
        self.sampler = Sampler(self.num_chunks, self.history, self.seed)
        self.reader = BatchReader(self.sources, self.sampler, self.seq_len)

    def set_weights(self, from_g: int, weights: dict[str, float]) -> None:
        self.history = self.history.with_segment(from_g, self._check_weights(weights))
        self._rebuild()

    def current_weights(self) -> dict[str, float]:
        return dict(self.history.segments[-1][1])

    def read(self, g: np.ndarray) -> Batch:
        return self.reader.read(g)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.to_json(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = MixtureHistory.from_json(state["history"])
        self._rebuild()


def natural_weights(sources: dict[str, TokenSource]) -> dict[str, float]:
    total = sum(s.num_tokens for s in sources.values())
    return {name: s.num_tokens / total for name, s in sources.items()}


def open_train_data(
    data_dir: str | Path,
    names: list[str],
    seq_len: int,
    seed: int,
    weights: dict[str, float],
    tokenizer_hash: str | None,
    vocab_size: int | None = None,
) -> TrainData:
    """The run's sources, each checked (with ``vocab_size``: every id below it) before any
    batch is read."""
    sources = load_sources(
        Path(data_dir), names or None, tokenizer_hash=tokenizer_hash, vocab_size=vocab_size
    )
    return TrainData(sources, seq_len, seed, weights or None)
