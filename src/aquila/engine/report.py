"""The end-of-run report: held-out bits-per-byte per language beside the byte-unigram entropy,
and two samples in each language: greedy, and a seeded nucleus sample.

A small model's greedy continuation falls into a loop within a few words (the argmax of a
repeated context is the repetition), so the report also shows what sampling gives: temperature
0.8 with top-p 0.95, a common default, seeded so that the same checkpoint reports the same text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from aquila.eval.bpb import bits_per_byte, unigram_bpb
from aquila.model.generate import document_start_id, generate
from aquila.model.transformer import AquilaModel
from aquila.tokenizer import Tokenizer

SAMPLE_PROMPTS = {"en": "And God said,", "zh": "中国人民"}
NUCLEUS = {"temperature": 0.8, "top_p": 0.95, "seed": 0}
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
def report_samples(
    model: AquilaModel, tokenizer: Tokenizer, max_new_tokens: int = 48, nucleus: bool = False
) -> dict[str, str]:
    """A continuation of each language's prompt, which follows the start-of-document token as
    in ``aquila generate``: greedy, or with ``nucleus`` the seeded ``NUCLEUS`` sample."""
    sampling = {"greedy": True} if not nucleus else NUCLEUS
    start = document_start_id(model.cfg, tokenizer)
    out = {}
    for lang, prompt in SAMPLE_PROMPTS.items():
        ids = [
            t
            for t in generate(
                model,
                [start, *tokenizer.encode(prompt)],
                max_new_tokens,
                eos_id=tokenizer.eos_id,
                **sampling,
            )
            if t != tokenizer.eos_id
        ]
        out[lang] = prompt + tokenizer.decode(ids)
    return out


def greedy_samples(
    model: AquilaModel, tokenizer: Tokenizer, max_new_tokens: int = 48
) -> dict[str, str]:
    return report_samples(model, tokenizer, max_new_tokens)
