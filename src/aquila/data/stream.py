"""The training stream: token sources, the run's mixture (its file's plan and the history of
weights by global sample index) and the pure sampler.

It owns the mixture of a run: the mixture file is parsed once, when the stream opens, and
control, mixing, the monitor and the dashboard ask the stream for phases and weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from aquila.data.batches import Batch, BatchReader
from aquila.data.mixture import MixturePlan, check_weights, load_mixture
from aquila.data.sampler import MixtureHistory, Sampler
from aquila.data.shards import TokenSource, load_sources
from aquila.errors import UserError


class TrainData:
    """Reads batches by global sample index; the mixture can change at any index.

    Its whole state is the mixture history (segments of weights by global index), each segment
    labelled with what set it (a phase's name, ``mixture N`` for hand-set weights, ``auto
    (POLICY)``): with the seed that determines every batch, on any number of ranks.
    """

    def __init__(
        self,
        sources: dict[str, TokenSource],
        seq_len: int,
        seed: int,
        weights: dict[str, float] | None = None,
        plan: MixturePlan | None = None,
    ):
        """``plan``: the run's mixture file, parsed; its first phase is the mixture at sample 0
        unless ``weights`` are given."""
        self.sources = sources
        self.plan = plan
        self.seq_len = seq_len
        self.seed = seed
        self.num_chunks = {name: s.num_chunks(seq_len) for name, s in sources.items()}
        empty = [n for n, c in self.num_chunks.items() if c == 0]
        if empty:
            raise UserError(
                f"source(s) {', '.join(empty)} hold fewer than seq_len+1 = {seq_len + 1} tokens"
            )
        # A mixture file's first phase holds from sample 0; its later phases are set by the
        # control callback when their first sample comes.
        w = (dict(plan.phases[0].weights) if plan else None) or weights or natural_weights(sources)
        self.history = MixtureHistory().with_segment(0, self._check_weights(w))
        self.labels: list[tuple[int, str]] = [(0, plan.phases[0].name if plan else "mixture 1")]
        self._rebuild()

    @property
    def source_names(self) -> list[str]:
        return self.sampler.source_names

    def _check_weights(self, weights: dict[str, float]) -> dict[str, float]:
        weights = check_weights(weights, set(self.sources), "mixture: ")
        return {name: weights.get(name, 0.0) for name in self.sources}

    def _rebuild(self) -> None:
        self.sampler = Sampler(self.num_chunks, self.history, self.seed)
        self.reader = BatchReader(self.sources, self.sampler, self.seq_len)

    def add_source(self, name: str, source: TokenSource) -> None:
        """Open another source (weight 0 until a mixture names it)."""
        if name in self.sources:
            raise UserError(f"source {name!r} is already open")
        chunks = source.num_chunks(self.seq_len)
        if chunks == 0:
            raise UserError(f"source {name!r} holds fewer than seq_len+1 tokens")
        self.sources[name], self.num_chunks[name] = source, chunks

    def remove_source(self, name: str) -> None:
        """Close a source no mixture has named yet (an add that failed)."""
        del self.sources[name], self.num_chunks[name]

    def set_weights(self, from_g: int, weights: dict[str, float], label: str | None = None) -> None:
        """The weights from global sample ``from_g`` on, labelled ``label`` (a phase's name, a
        policy's) or, for hand-set weights, ``mixture N``."""
        self.history = self.history.with_segment(from_g, self._check_weights(weights))
        if self.labels[-1][0] == int(from_g):
            self.labels.pop()  # the segment it replaces
        self.labels.append((int(from_g), label or f"mixture {len(self.history.segments)}"))
        self._rebuild()

    def label_at(self, g: int, samples_per_step: int | None = None) -> str:
        """The label of the mixture in force at global sample ``g``. With ``samples_per_step``,
        a mixture file's later phase counts from its first sample on, also before the control
        callback has applied it (it does so at the step boundary where that sample comes)."""
        name = next((n for from_g, n in reversed(self.labels) if from_g <= g), self.labels[0][1])
        if self.plan is not None and samples_per_step:
            names = [p.name for p in self.plan.phases]
            due = self.plan.phase_at_sample(g, self.seq_len, samples_per_step).name
            if name in names and names.index(due) > names.index(name):
                return due
        return name

    def phases(self, samples_per_step: int) -> list[tuple[int, str, dict[str, float]]]:
        """``(from_g, name, weights)`` of each phase of the mixture file (none without one)."""
        if self.plan is None:
            return []
        segs = self.plan.segments(self.seq_len, samples_per_step)
        return [(g, p.name, w) for (g, w), p in zip(segs, self.plan.phases)]

    def current_weights(self) -> dict[str, float]:
        return dict(self.history.segments[-1][1])

    def read(self, g: np.ndarray) -> Batch:
        return self.reader.read(g)

    def documents(self, batch: Batch) -> list[list[tuple[str, int]]]:
        """For each sequence of ``batch``, the ``(source, document index)`` pairs it holds."""
        return self.reader.documents(batch)

    def state_dict(self) -> dict[str, Any]:
        return {
            "history": self.history.to_json(),
            "seed": self.seed,
            "labels": [[g, name] for g, name in self.labels],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = MixtureHistory.from_json(state["history"])
        labels = [(int(g), str(name)) for g, name in state.get("labels") or []]
        if len(labels) != len(self.history.segments):  # a state saved before segments had labels
            first = self.labels[0][1]
            labels = [
                (g, first if i == 0 else f"mixture {i + 1}")
                for i, (g, _) in enumerate(self.history.segments)
            ]
        self.labels = labels
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
    mixture: str | Path | None = None,
) -> TrainData:
    """The run's sources, each checked (with ``vocab_size``: every id below it) before any
    batch is read, and its mixture file (``mixture``), parsed against them."""
    sources = load_sources(
        Path(data_dir), names or None, tokenizer_hash=tokenizer_hash, vocab_size=vocab_size
    )
    plan = load_mixture(mixture, known_sources=set(sources)) if mixture else None
    return TrainData(sources, seq_len, seed, weights or None, plan)
