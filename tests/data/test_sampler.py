"""The sampler is a pure function of the global index: counts, epochs, partitions, history."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from aquila.data.sampler import (
    MixtureHistory,
    Sampler,
    feistel_permute,
    global_indices,
)

B = 1024


def history(*segments: tuple[int, dict[str, float]]) -> MixtureHistory:
    h = MixtureHistory()
    for from_g, weights in segments:
        h = h.with_segment(from_g, weights)
    return h


def names_of(sampler: Sampler, src: np.ndarray) -> np.ndarray:
    return np.array(sampler.source_names)[src]


def test_frequencies_match_weights():
    weights = {"web": 0.55, "book": 0.3, "code": 0.149, "tiny": 0.001}
    s = Sampler({"web": 10_000, "book": 500, "code": 3_000, "tiny": 7}, history((0, weights)), 3)
    n = 300 * B
    src, _ = s.sample(np.arange(n))
    for length in (50 * B, 123_457, n):
        freq = np.bincount(src[:length], minlength=4) / length
        for i, name in enumerate(s.source_names):
            assert abs(freq[i] - weights[name]) <= 1 / B, (name, length, freq[i])
    # At block boundaries the count is the nested floor split: a few samples off at most, at
    # any length, so even a 0.1% source gets its share.
    counts = np.bincount(src, minlength=4)
    for i, name in enumerate(s.source_names):
        assert abs(counts[i] - weights[name] * n) <= len(weights), name


def test_counts_at_equals_replay_across_segments():
    num_chunks = {"en": 900, "zh": 400, "code": 50, "new": 33}
    h = history(
        (0, {"en": 0.7, "zh": 0.3}),
        (5_000, {"en": 0.5, "zh": 0.3, "new": 0.2}),  # a new source appears mid-run
        (9_500, {"en": 0.6, "zh": 0.0, "new": 0.1, "code": 0.3}),  # zh switched off
        (9_500 + 3 * B, {"en": 1, "zh": 1, "code": 1, "new": 1}),
    )
    s = Sampler(num_chunks, h, seed=11)
    total = 20_000
    src, _ = s.sample(np.arange(total))
    zh = s.source_names.index("zh")
    assert not np.any(src[9_500 : 9_500 + 3 * B] == zh)
    assert not np.any(src[:5_000] == s.source_names.index("new"))
    rng = np.random.default_rng(0)
    probes = [0, 1, 4_999, 5_000, 5_001, 9_500, 9_500 + 3 * B, total, *rng.integers(0, total, 40)]
    for g in probes:
        replay = np.bincount(src[:g], minlength=len(num_chunks))
        counts = s.counts_at(int(g))
        assert [counts[n] for n in s.source_names] == replay.tolist(), g
        epochs = s.epochs_at(int(g))
        for n in s.source_names:
            assert epochs[n] == pytest.approx(counts[n] / num_chunks[n])


def test_same_index_same_sample_for_fresh_objects_and_any_partition():
    h = history((0, {"a": 0.5, "b": 0.25, "c": 0.25}), (700, {"a": 0.1, "b": 0.9, "c": 0}))
    num_chunks = {"a": 97, "b": 1_000, "c": 13}
    global_batch, steps = 48, 30
    reference = Sampler(num_chunks, h, seed=5).sample(np.arange(global_batch * steps))
    for world, local in ((1, 48), (2, 24), (3, 16), (4, 12), (8, 6), (48, 1)):
        src_parts, chunk_parts = [], []
        for step in range(steps):
            for rank in range(world):
                # Each rank gets its own fresh sampler: no state is shared between ranks.
                src, chunk = Sampler(num_chunks, h, seed=5).sample(
                    global_indices(step, rank, world, local)
                )
                src_parts.append(src)
                chunk_parts.append(chunk)
        assert np.array_equal(np.concatenate(src_parts), reference[0]), (world, local)
        assert np.array_equal(np.concatenate(chunk_parts), reference[1]), (world, local)
    assert all(len(a) == 0 for a in Sampler(num_chunks, h, seed=5).sample(np.arange(0)))
    # Order of the query does not matter either.
    g = np.random.default_rng(1).permutation(global_batch * steps)
    src, chunk = Sampler(num_chunks, h, seed=5).sample(g)
    assert np.array_equal(src, reference[0][g]) and np.array_equal(chunk, reference[1][g])
    # Another seed is another stream.
    other = Sampler(num_chunks, h, seed=6).sample(np.arange(global_batch * steps))
    assert not np.array_equal(other[1], reference[1])


def test_every_chunk_once_per_epoch():
    num_chunks = {"a": 37, "b": 100, "c": 5}
    h = history((0, {"a": 0.4, "b": 0.4, "c": 0.2}), (1_500, {"a": 0.2, "b": 0.5, "c": 0.3}))
    s = Sampler(num_chunks, h, seed=2)
    src, chunk = s.sample(np.arange(6_000))
    for i, name in enumerate(s.source_names):
        seen = chunk[src == i]
        n = num_chunks[name]
        epochs = [seen[e * n : (e + 1) * n] for e in range(len(seen) // n)]
        assert len(epochs) >= 3
        for order in epochs:
            assert sorted(order.tolist()) == list(range(n)), name
        if n > 5:
            assert any(not np.array_equal(epochs[0], o) for o in epochs[1:]), name
        assert s.epochs_at(6_000)[name] == pytest.approx(len(seen) / n)


def test_mixture_change_and_new_source_leave_the_past_unchanged():
    g1 = 3_333
    old = Sampler({"en": 500, "zh": 200}, history((0, {"en": 0.6, "zh": 0.4})), seed=9)
    # "aaa" sorts first, so source positions shift: identity must follow names, not positions.
    new_h = history((0, {"en": 0.6, "zh": 0.4}), (g1, {"en": 0.2, "zh": 0.3, "aaa": 0.5}))
    new = Sampler({"en": 500, "zh": 200, "aaa": 80}, new_h, seed=9)
    g = np.arange(g1 + 5 * B)
    src_old, chunk_old = old.sample(g)
    src_new, chunk_new = new.sample(g)
    assert np.array_equal(names_of(old, src_old[:g1]), names_of(new, src_new[:g1]))
    assert np.array_equal(chunk_old[:g1], chunk_new[:g1])
    assert not np.array_equal(names_of(old, src_old[g1:]), names_of(new, src_new[g1:]))
    assert np.mean(names_of(new, src_new[g1:]) == "aaa") == pytest.approx(0.5, abs=1 / B)


def test_history_validation_and_json_round_trip():
    h = history((0, {"a": 3, "b": 1}))
    assert h.segments[0][1] == {"a": 0.75, "b": 0.25}
    with pytest.raises(ValueError, match="must start at 0"):
        MixtureHistory().with_segment(5, {"a": 1})
    h2 = h.with_segment(100, {"a": 1, "b": 0})
    with pytest.raises(ValueError, match="before the last change at 100"):
        h2.with_segment(99, {"a": 1})
    with pytest.raises(ValueError, match=">= 0"):
        h2.with_segment(200, {"a": -1, "b": 2})
    with pytest.raises(ValueError, match="positive sum"):
        h2.with_segment(200, {"a": 0, "b": 0})
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['c'\]"):
        h2.with_segment(200, {"c": 1}, known={"a", "b"})
    # A change at the same index replaces the last one.
    assert h2.with_segment(100, {"b": 1}).segments[-1] == (100, {"b": 1.0})
    assert len(h2.with_segment(100, {"b": 1}).segments) == 2

    odd = history((0, {"a": 1 / 3, "b": 2 / 7, "c": 0.1}), (777, {"a": 0.3, "c": 0.7}))
    restored = MixtureHistory.from_json(json.loads(json.dumps(odd.to_json())))
    assert restored == odd
    g = np.arange(5_000)
    chunks = {"a": 10, "b": 20, "c": 30}
    a = Sampler(chunks, odd, 4).sample(g)
    b = Sampler(chunks, restored, 4).sample(g)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError, match=r"unknown source\(s\) \['c'\]"):
        Sampler({"a": 10, "b": 20}, odd, 4)
    with pytest.raises(ValueError, match="no chunks"):
        Sampler({"a": 0, "b": 20, "c": 1}, odd, 4)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 17, 1_000, 4_097])
def test_feistel_is_a_bijection(n):
    x = np.arange(n)
    for key in (0, 12345):
        y = feistel_permute(x, n, np.full(n, key, dtype=np.uint64))
        assert sorted(y.tolist()) == list(range(n))
    if n >= 17:
        assert not np.array_equal(y, x)


def test_throughput():
    h = history((0, {"web": 0.5, "book": 0.2, "code": 0.2, "zh": 0.1}))
    s = Sampler({"web": 10**7, "book": 10**5, "code": 10**6, "zh": 3 * 10**6}, h, seed=0)
    g = np.arange(10**6, 2 * 10**6)
    t0 = time.perf_counter()
    s.sample(g)
    rate = len(g) / (time.perf_counter() - t0)
    print(f"sampler: {rate:,.0f} samples/s on 1M indices")
    assert rate > 100_000  # a training step needs thousands per second, not millions
