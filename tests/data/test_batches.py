"""Batches: tokens gathered by global index, provenance back to documents, reader throughput."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from aquila.data.batches import BatchReader
from aquila.data.sampler import MixtureHistory, Sampler, global_indices
from aquila.data.shards import load_sources, tokenize_source


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, english_text, chinese_text, tiny_tokenizer) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    out = tmp_path_factory.mktemp("shards")
    for name, text, size in (("kjv", english_text, 2000), ("news", chinese_text, 1000)):
        path = raw / f"{name}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for i in range(0, len(text), size):
                f.write(json.dumps({"text": text[i : i + size]}, ensure_ascii=False) + "\n")
        tokenize_source(name, [path], tiny_tokenizer, out, show_progress=False)
    return out


def make_reader(data_dir: Path, seq_len: int, seed: int = 0) -> BatchReader:
    sources = load_sources(data_dir)
    h = MixtureHistory().with_segment(0, {"kjv": 0.7, "news": 0.3})
    sampler = Sampler({n: s.num_chunks(seq_len) for n, s in sources.items()}, h, seed)
    return BatchReader(sources, sampler, seq_len)


def test_batch_holds_the_sampled_chunks(data_dir):
    T = 32
    reader = make_reader(data_dir, T)
    g = np.arange(100, 164)
    batch = reader.read(g)
    assert batch.tokens.shape == (64, T + 1) and batch.tokens.dtype.is_floating_point is False
    assert batch.inputs.shape == batch.targets.shape == (64, T)
    assert (batch.inputs[:, 1:] == batch.targets[:, :-1]).all()
    src, chunk = reader.sampler.sample(g)
    assert batch.source_ids.tolist() == src.tolist() and batch.chunk_ids.tolist() == chunk.tolist()
    assert np.array_equal(batch.global_indices, g)
    for row in range(len(g)):
        source = reader.sources[reader.source_names[int(src[row])]]
        assert np.array_equal(batch.tokens[row].numpy(), source.chunk(int(chunk[row]), T))
    assert set(batch.source_ids.tolist()) == {0, 1}


def test_batches_identical_across_world_sizes(data_dir):
    T, global_batch = 16, 24
    whole = make_reader(data_dir, T).read(np.arange(global_batch * 3, global_batch * 4))
    for world in (2, 3, 4):
        local = global_batch // world
        parts = [
            make_reader(data_dir, T).read(global_indices(3, r, world, local)) for r in range(world)
        ]
        for field in ("tokens", "source_ids", "chunk_ids"):
            joined = np.concatenate([getattr(p, field).numpy() for p in parts])
            assert np.array_equal(joined, getattr(whole, field).numpy()), (world, field)


def test_documents_trace_back_to_source_text(data_dir, tiny_tokenizer):
    T = 64
    reader = make_reader(data_dir, T)
    batch = reader.read(np.arange(8))
    docs = reader.documents(batch)
    assert len(docs) == 8
    for row, pairs in enumerate(docs):
        name = reader.source_names[int(batch.source_ids[row])]
        source = reader.sources[name]
        assert pairs and all(n == name for n, _ in pairs)
        # The listed documents, concatenated, contain the chunk's tokens.
        first, last = pairs[0][1], pairs[-1][1]
        span = np.asarray(source.tokens[source.doc_offsets[first] : source.doc_offsets[last + 1]])
        offset = int(batch.chunk_ids[row]) * T - int(source.doc_offsets[first])
        assert np.array_equal(span[offset : offset + T + 1], batch.tokens[row].numpy())
        assert [d for _, d in pairs] == list(range(first, last + 1))


@pytest.mark.parametrize("seq_len,batch", [(256, 64), (4096, 8)])
def test_reader_throughput(data_dir, seq_len, batch):
    reader = make_reader(data_dir, seq_len)
    reader.read(np.arange(batch))  # warm the page cache
    steps, t0 = 20, time.perf_counter()
    for step in range(steps):
        reader.read(np.arange(step * batch, (step + 1) * batch))
    rate = steps * batch * seq_len / (time.perf_counter() - t0)
    print(f"reader: {rate / 1e6:.1f}M tokens/s at seq_len {seq_len}, batch {batch}")
    assert rate > 1e6
