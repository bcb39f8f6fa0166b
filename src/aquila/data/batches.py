"""Batches by global sample index: the sampler picks (source, chunk), the reader gathers tokens."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from aquila.data.sampler import Sampler
from aquila.data.shards import TokenSource


@dataclass
class Batch:
    """``n`` sequences of ``T + 1`` tokens and where each came from."""

    tokens: torch.Tensor  # int64 (n, T + 1)
    source_ids: torch.Tensor  # int64 (n,), index into the sampler's source_names
    chunk_ids: torch.Tensor  # int64 (n,)
    global_indices: np.ndarray  # int64 (n,)

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, 1:]


class BatchReader:
    """Reads the batch of any set of global sample indices from memory-mapped token sources."""

    def __init__(self, sources: dict[str, TokenSource], sampler: Sampler, seq_len: int):
        missing = sorted(set(sampler.source_names) - set(sources))
        if missing:
            raise ValueError(f"sampler names source(s) {missing} that are not loaded")
        for name in sampler.source_names:
            have = sources[name].num_chunks(seq_len)
            if sampler.num_chunks[name] != have:
                raise ValueError(
                    f"sampler expects {sampler.num_chunks[name]} chunks of {seq_len} in "
                    f"{name!r}, the source has {have}"
                )
        self.sources, self.sampler, self.seq_len = sources, sampler, seq_len
        self._ordered = [sources[n] for n in sampler.source_names]

    @property
    def source_names(self) -> list[str]:
        return self.sampler.source_names

    def read(self, g: np.ndarray) -> Batch:
        g = np.asarray(g, dtype=np.int64).ravel()
        src, chunk = self.sampler.sample(g)
        tokens = np.empty((len(g), self.seq_len + 1), dtype=np.int64)
        offsets = np.arange(self.seq_len + 1, dtype=np.int64)
        for s in np.unique(src):
            rows = np.flatnonzero(src == s)
            # One fancy-index gather per source: the memmap reads just the pages it needs.
            starts = chunk[rows] * self.seq_len
            tokens[rows] = self._ordered[s].tokens[starts[:, None] + offsets]
        return Batch(
            tokens=torch.from_numpy(tokens),
            source_ids=torch.from_numpy(src.astype(np.int64)),
            chunk_ids=torch.from_numpy(chunk.astype(np.int64)),
            global_indices=g,
        )

    def documents(self, batch: Batch) -> list[list[tuple[str, int]]]:
        """For each sequence, the ``(source, document index)`` pairs whose tokens it holds."""
        out = []
        for s, c in zip(batch.source_ids.tolist(), batch.chunk_ids.tolist()):
            source = self._ordered[s]
            docs = source.documents_in_chunk(c, self.seq_len)
            name = self.sampler.source_names[s]
            out.append([(name, int(d)) for d in docs])
        return out
