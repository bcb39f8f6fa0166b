"""Documents to token ids in bounded memory, in this process or in worker processes.

A document longer than ``PIECE_CHARS`` is encoded in pieces cut at pre-token boundaries
(:mod:`aquila.tokenizer.pieces`: the ids are those of the whole document); one encode call holds
about ``BATCH_CHARS`` characters, so the tokenizer's bookkeeping (offsets, token strings:
hundreds of bytes a token) stays bounded whatever the size of one document.

With ``workers > 1`` the batches are encoded by that many processes, at most two batches each in
flight, and their results are taken back in submission order: the ids are the same, in the same
order, whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from aquila.data.readers import Document
from aquila.data.shard_check import TOKEN_DTYPE
from aquila.tokenizer.pieces import pieces

PIECE_CHARS = 1 << 16
# An encode call's bookkeeping is hundreds of bytes a token: at 1 M characters of Chinese (about
# 0.7 M tokens) one batch alone peaked near 300 MB; 128 K characters keep it near 40 MB and
# still feed the tokenizer's thread pool (no slower, measured).
BATCH_CHARS = 1 << 17


@dataclass
class EncodeBatch:
    """Pieces of documents to encode together; ``ends[i]``: piece i ends its document."""

    pieces: list[str] = field(default_factory=list)
    ends: list[bool] = field(default_factory=list)
    chars: int = 0
    documents: int = 0

    def add(self, piece: str, end: bool) -> None:
        self.pieces.append(piece)
        self.ends.append(end)
        self.chars += len(piece)
        self.documents += end


@dataclass(frozen=True)
class Encoded:
    """One batch encoded: its tokens (an EOS after each document's last piece), tokens per
    piece including that EOS, and the UTF-8 bytes of its text."""

    tokens: np.ndarray
    piece_lengths: np.ndarray
    nbytes: int


def encode_batches(
    docs: Iterator[Document], batch_docs: int, batch_chars: int | None = None
) -> Iterator[EncodeBatch]:
    """The documents' pieces, in order, grouped into batches of at most ``batch_docs`` document
    ends and about ``batch_chars`` (default ``BATCH_CHARS``) characters; a document may span
    batches."""
    batch_chars = batch_chars or BATCH_CHARS
    batch = EncodeBatch()
    for doc in docs:
        for piece, end in _with_last(pieces(doc.text, PIECE_CHARS)):
            batch.add(piece, end)
            if batch.documents >= batch_docs or batch.chars >= batch_chars:
                yield batch
                batch = EncodeBatch()
    if batch.pieces:
        yield batch


def _with_last(items: Iterator[str]) -> Iterator[tuple[str, bool]]:
    prev = next(items)
    for item in items:
        yield prev, False
        prev = item
    yield prev, True


def encode_batch(tokenizer, batch: EncodeBatch) -> Encoded:
    eos = np.array([tokenizer.eos_id], dtype=TOKEN_DTYPE)
    parts, lengths = [], np.empty(len(batch.pieces), np.int64)
    for i, (ids, end) in enumerate(zip(tokenizer.encode_batch(batch.pieces), batch.ends)):
        parts.append(np.asarray(ids, dtype=TOKEN_DTYPE))
        if end:
            parts.append(eos)
        lengths[i] = len(ids) + end
    tokens = np.concatenate(parts) if parts else np.zeros(0, TOKEN_DTYPE)
    return Encoded(tokens, lengths, sum(len(p.encode("utf-8")) for p in batch.pieces))


def document_lengths(
    piece_lengths: np.ndarray, ends: list[bool], carried: int
) -> tuple[np.ndarray, int]:
    """Tokens per document ended in this batch (the first one adds ``carried`` from earlier
    batches), and the tokens of a document still open at the batch's end."""
    cum = np.cumsum(piece_lengths) + carried
    end_at = cum[np.asarray(ends, dtype=bool)]
    doc_lengths = np.diff(end_at, prepend=0)
    open_tokens = int(cum[-1] - (end_at[-1] if len(end_at) else 0)) if len(cum) else carried
    return doc_lengths, open_tokens


_WORKER_TOKENIZER = None


def _init_worker(tokenizer_json: str) -> None:
    global _WORKER_TOKENIZER
    # One encoding thread per worker: the workers are the parallelism.
    os.environ["RAYON_NUM_THREADS"] = "1"
    from tokenizers import Tokenizer as HFTokenizer

    from aquila.tokenizer import Tokenizer

    _WORKER_TOKENIZER = Tokenizer(HFTokenizer.from_str(tokenizer_json))


def _encode_in_worker(batch: EncodeBatch) -> Encoded:
    return encode_batch(_WORKER_TOKENIZER, batch)


def encoded_batches(
    batches: Iterator[EncodeBatch], tokenizer, workers: int = 1
) -> Iterator[tuple[EncodeBatch, Encoded]]:
    """Each batch with its encoding, in order; ``workers > 1`` encodes in that many processes."""
    if workers <= 1:
        for batch in batches:
            yield batch, encode_batch(tokenizer, batch)
        return
    # spawn: a fresh interpreter per worker, never a fork of a process whose tokenizer thread
    # pool is already running.
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(tokenizer.hf.to_str(),)
    ) as pool:
        pending: deque = deque()
        try:
            for batch in batches:
                pending.append((batch, pool.submit(_encode_in_worker, batch)))
                if len(pending) >= 2 * workers:  # bounded: never the whole corpus in flight
                    done, future = pending.popleft()
                    yield done, future.result()
            while pending:
                done, future = pending.popleft()
                yield done, future.result()
        finally:
            for _, future in pending:
                future.cancel()
