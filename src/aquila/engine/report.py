"""The end-of-run report: held-out bits-per-byte per language beside the byte-unigram entropy,
and a greedy sample in each language."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aquila.eval.bpb import bits_per_byte, unigram_bpb
from aquila.model.generate import generate
from aquila.model.transformer import AquilaModel
from aquila.tokenizer import Tokenizer

SAMPLE_PROMPTS = {"en": "And God said,", "zh": "中国人民"}
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


def evaluate_heldout(
    model: AquilaModel, tokenizer: Tokenizer, sets: list[HeldoutSet], seq_len: int
) -> dict[str, dict]:
    """bpb per source and per language (languages pool their sources' bits and bytes)."""
    per_source, pooled = {}, {}
    for s in sets:
        if not s.texts:
            continue
        r = bits_per_byte(model, tokenizer, s.texts, seq_len=seq_len)
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
    per_lang = {
        lang: {
            "bpb": a["bits"] / a["bytes"],
            "unigram_bpb": unigram_bpb(a["texts"]),
            "bytes": a["bytes"],
        }
        for lang, a in pooled.items()
    }
    return {"sources": per_source, "languages": per_lang}


@torch.no_grad()
def greedy_samples(
    model: AquilaModel, tokenizer: Tokenizer, max_new_tokens: int = 48
) -> dict[str, str]:
    out = {}
    for lang, prompt in SAMPLE_PROMPTS.items():
        ids = list(
            generate(
                model,
                tokenizer.encode(prompt),
                max_new_tokens,
                greedy=True,
                eos_id=tokenizer.eos_id,
            )
        )
        out[lang] = prompt + tokenizer.decode(ids)
    return out
