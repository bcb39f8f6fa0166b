"""Held-out bits per byte: one evaluation for the end-of-run report, the background evaluator,
ratio sweeps and the ``bpb`` tasks of ``aquila eval``.

A held-out set is named text in one language: a sample-corpus source, a ``<lang>/`` directory of
``data.heldout``, or one file of ``bpb:PATH``. Languages pool their sets' bits and bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from aquila.eval.bpb import bits_per_byte, unigram_bpb
from aquila.model.transformer import AquilaModel
from aquila.tokenizer import Tokenizer

# Held-out text per source is capped so the report takes seconds, not minutes.
MAX_HELDOUT_BYTES = 150_000


@dataclass
class HeldoutSet:
    name: str
    lang: str
    texts: list[str]


def _cap(texts: list[str], max_bytes: int) -> list[str]:
    out, total = [], 0
    for t in texts:
        if total >= max_bytes:
            break
        out.append(t)
        total += len(t.encode("utf-8"))
    return out


def sample_heldout(max_bytes: int = MAX_HELDOUT_BYTES) -> list[HeldoutSet]:
    from aquila.data.samples import load_sample_corpus

    return [
        HeldoutSet(s.name, s.lang, _cap(s.documents, max_bytes))
        for s in load_sample_corpus("heldout")
    ]


def heldout_from_dir(path: Path, max_bytes: int = MAX_HELDOUT_BYTES) -> list[HeldoutSet]:
    """``DIR/<lang>/...`` files (txt/jsonl), one held-out set per language sub-directory."""
    from aquila.data.readers import iter_documents

    sets = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        texts = [d.text for d in iter_documents(sub)]
        sets.append(HeldoutSet(sub.name, sub.name, _cap(texts, max_bytes)))
    return sets


def run_heldout(
    heldout: str | Path | None, data_dir: str | Path | None, max_bytes: int = MAX_HELDOUT_BYTES
) -> list[HeldoutSet]:
    """A run's held-out text: its ``data.heldout`` directory if set, else the sample corpus'
    held-out split when it trains on the samples (no ``data.dir``); none for other data."""
    if heldout:
        return heldout_from_dir(Path(heldout), max_bytes)
    if not data_dir:
        return sample_heldout(max_bytes)
    return []


def evaluate_heldout(
    model: AquilaModel,
    tokenizer: Tokenizer,
    sets: list[HeldoutSet],
    seq_len: int | None = None,
    batch_size: int = 8,
    advance: Callable[[int], None] | None = None,
) -> dict[str, dict]:
    """bpb per set and per language (languages pool their sets' bits and bytes), each beside
    the byte-unigram entropy of the same text. ``seq_len`` defaults to the model's context;
    ``advance(1)`` is called after each set."""
    per_source, pooled = {}, {}
    for s in sets:
        if not s.texts:
            continue
        r = bits_per_byte(model, tokenizer, s.texts, seq_len=seq_len, batch_size=batch_size)
        per_source[s.name] = {
            "lang": s.lang,
            "bpb": r["bpb"],
            "bytes": r["bytes"],
            "unigram_bpb": unigram_bpb(s.texts),
        }
        acc = pooled.setdefault(s.lang, {"bits": 0.0, "bytes": 0, "texts": []})
        acc["bits"] += r["bpb"] * r["bytes"]
        acc["bytes"] += r["bytes"]
        acc["texts"].extend(s.texts)
        if advance:
            advance(1)
    per_lang = {
        lang: {
            "bpb": a["bits"] / a["bytes"],
            "unigram_bpb": unigram_bpb(a["texts"]),
            "bytes": a["bytes"],
        }
        for lang, a in pooled.items()
    }
    return {"sources": per_source, "languages": per_lang}


def pooled_bpb(result: dict[str, dict]) -> tuple[float, int]:
    """The bpb and bytes of all of ``evaluate_heldout``'s sets together."""
    bits = sum(r["bpb"] * r["bytes"] for r in result["sources"].values())
    nbytes = sum(r["bytes"] for r in result["sources"].values())
    return bits / nbytes, nbytes
