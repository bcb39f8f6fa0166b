"""Train the bilingual byte-level BPE on a language-balanced sample of the input.

Inputs are read twice: the first pass decides each document's language (see ``stats``) and size,
a seeded plan then picks which documents (or a prefix of the last one) fill each language's byte
budget, and the second pass feeds exactly those to the BPE trainer. Memory therefore holds only
the bytes that are trained on, and the same inputs and seed always give the same tokenizer.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aquila.errors import UserError
from aquila.progress import ByteProgress
from aquila.tokenizer.stats import LANGS, InputDoc, InputSpec, input_files, iter_file_documents
from aquila.tokenizer.tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe

TRAINING_FILE = "training.json"
# Long documents are cut into pieces of about this size so the trainer's threads share the work.
PIECE_CHARS = 1 << 18

# The default tokenizer: half Chinese, a little code; sized to train in well under 30 s on 2 cores.
DEFAULT_SHARES = {"zh": 0.5, "en": 0.45, "code": 0.05}
DEFAULT_MAX_BYTES = 10_000_000


@dataclass
class TrainSettings:
    vocab_size: int = 100_000
    zh_ratio: float = 0.5
    max_bytes: int | None = None
    min_frequency: int = 2
    seed: int = 0


@dataclass
class Plan:
    """How many bytes of each document to train on (0: skipped; less than its size: a prefix)."""

    keep: list[int]
    available: dict[str, int] = field(default_factory=dict)  # by language
    used: dict[str, int] = field(default_factory=dict)  # by language
    notes: list[str] = field(default_factory=list)


def plan_selection(
    langs: list[str],
    sizes: list[int],
    shares: dict[str, float],
    max_bytes: int | None = None,
    seed: int = 0,
    group_of: Callable[[str], str] = lambda lang: lang,
) -> Plan:
    """Fill each group's share of the budget with whole documents in a seeded random order.

    The budget is the largest total for which every group can supply its share, capped by
    ``max_bytes``. A group with no documents is dropped (and the others' shares renormalised);
    the last document a group takes may be cut to a prefix so the shares come out exact.
    """
    groups: dict[str, list[int]] = {g: [] for g in shares}
    available: dict[str, int] = {}
    for i, (lang, size) in enumerate(zip(langs, sizes)):
        available[lang] = available.get(lang, 0) + size
        g = group_of(lang)
        if g in groups:
            groups[g].append(i)
    group_bytes = {g: sum(sizes[i] for i in idx) for g, idx in groups.items()}
    notes = [
        f"no {g} documents in the input" for g, s in shares.items() if s > 0 and not group_bytes[g]
    ]
    live = {g: s for g, s in shares.items() if s > 0 and group_bytes[g]}
    keep = [0] * len(sizes)
    used: dict[str, int] = {}
    if not live:
        return Plan(keep, available, used, notes)
    norm = sum(live.values())
    total = min(group_bytes[g] / (s / norm) for g, s in live.items())
    if max_bytes is not None:
        total = min(total, max_bytes)
    rng = random.Random(seed)
    for g, s in live.items():
        budget = int(total * s / norm)
        order = list(groups[g])
        rng.shuffle(order)
        for i in order:
            if budget <= 0:
                break
            take = min(sizes[i], budget)
            keep[i] = take
            budget -= take
            used[langs[i]] = used.get(langs[i], 0) + take
    return Plan(keep, available, used, notes)


def _prefix(text: str, num_bytes: int) -> str:
    data = text.encode("utf-8")
    return text if num_bytes >= len(data) else data[:num_bytes].decode("utf-8", errors="ignore")


def _pieces(text: str) -> Iterator[str]:
    """Split after line breaks into pieces of about PIECE_CHARS: pre-tokens never span a word
    and a newline, so only the whitespace run at each cut is counted differently."""
    start = 0
    while len(text) - start > PIECE_CHARS:
        cut = text.rfind("\n", start + PIECE_CHARS // 2, start + PIECE_CHARS)
        cut = start + PIECE_CHARS if cut < 0 else cut + 1
        yield text[start:cut]
        start = cut
    yield text[start:]


def _read_pass(specs: list[InputSpec], label: str, show_progress: bool) -> Iterator[InputDoc]:
    files = [(f, s.lang) for s in specs for f in input_files(s)]
    with ByteProgress(
        show_progress, label, sum(f.stat().st_size for f, _ in files), transient=True
    ) as advance:
        for f, lang in files:
            yield from iter_file_documents(f, lang)
            advance(f.stat().st_size)


def train_from_inputs(
    specs: list[InputSpec], settings: TrainSettings, show_progress: bool = False
) -> tuple[Tokenizer, dict]:
    """Read ``specs``, balance en/zh by ``settings.zh_ratio`` and train; returns the tokenizer and
    a JSON-able record of the settings and input statistics."""
    if not 0.0 <= settings.zh_ratio <= 1.0:
        raise UserError(f"--zh-ratio {settings.zh_ratio} must be between 0 and 1")
    if settings.max_bytes is not None and settings.max_bytes <= 0:
        raise UserError(f"--max-bytes {settings.max_bytes} must be positive")
    _check_vocab(settings.vocab_size)
    t0 = time.perf_counter()
    langs, sizes = [], []
    for doc in _read_pass(specs, "reading", show_progress):
        langs.append(doc.lang)
        sizes.append(len(doc.text.encode("utf-8")))
    if not sizes:
        names = ", ".join(str(s.path) for s in specs)
        raise UserError(f"--input {names}: no text found (empty files or no documents)")
    shares = {"zh": settings.zh_ratio, "en": 1.0 - settings.zh_ratio}
    plan = plan_selection(
        langs, sizes, shares, settings.max_bytes, settings.seed,
        group_of=lambda lang: "zh" if lang == "zh" else "en",
    )  # fmt: skip
    if not any(plan.keep):
        raise UserError(f"--zh-ratio {settings.zh_ratio}: {'; '.join(plan.notes)}")

    def texts() -> Iterator[str]:
        for i, doc in enumerate(_read_pass(specs, "training", show_progress)):
            if plan.keep[i]:
                yield from _pieces(_prefix(doc.text, plan.keep[i]))

    tok = train_bpe(texts(), settings.vocab_size, settings.min_frequency, show_progress)
    info = _record(settings, plan, len(sizes), time.perf_counter() - t0, tok)
    info["inputs"] = [str(s.path) if s.lang is None else f"{s.lang}={s.path}" for s in specs]
    return tok, info


def _check_vocab(vocab_size: int) -> None:
    if vocab_size < 257:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least 257 "
            f"(256 bytes + 1 merge); {len(SPECIAL_TOKENS)} special tokens are added on top"
        )


def _record(settings: TrainSettings, plan: Plan, docs: int, seconds: float, tok: Tokenizer) -> dict:
    order = [lang for lang in LANGS if lang in plan.available] + sorted(
        set(plan.available) - set(LANGS)
    )
    bpe = tok.vocab_size - len(SPECIAL_TOKENS)
    notes = list(plan.notes)
    if bpe < settings.vocab_size:
        notes.append(
            f"the input supports only {bpe} of the {settings.vocab_size} requested BPE tokens "
            "(too little text or --min-frequency too high)"
        )
    return {
        "settings": asdict(settings),
        "vocab_size": tok.vocab_size,
        "documents": docs,
        "bytes_available": {lang: plan.available[lang] for lang in order},
        "bytes_used": {lang: plan.used.get(lang, 0) for lang in order},
        "seconds": round(seconds, 2),
        "hash": tok.hash,
        "notes": notes,
    }


def save_trained(tok: Tokenizer, info: dict, out: Path) -> Path:
    """Tokenizer files plus ``training.json``."""
    tok.save(out)
    (out / TRAINING_FILE).write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    return out


def default_tokenizer(
    cache_dir: Path, vocab_size: int = 8192, max_bytes: int = DEFAULT_MAX_BYTES
) -> Path:
    """The tokenizer trained on the sample corpus' train split, cached by vocab and corpus version.

    Half Chinese (news and reviews), the rest English (Bibles, Python docs) with 5 % Python code.
    The directory appears atomically (built under a temporary name, then renamed), so concurrent
    callers and interrupted runs never see a half-written tokenizer.
    """
    from aquila.data.samples import CORPUS_VERSION, load_sample_corpus

    name = f"tokenizer-v{vocab_size}-{CORPUS_VERSION}"
    if max_bytes != DEFAULT_MAX_BYTES:
        name += f"-b{max_bytes}"
    final = Path(cache_dir) / name
    if (final / "tokenizer.json").is_file():
        return final
    _check_vocab(vocab_size)
    t0 = time.perf_counter()
    docs = [(s.lang, d) for s in load_sample_corpus("train") for d in s.documents]
    langs = [lang for lang, _ in docs]
    sizes = [len(d.encode("utf-8")) for _, d in docs]
    plan = plan_selection(langs, sizes, DEFAULT_SHARES, max_bytes)
    texts = (piece for (_, d), k in zip(docs, plan.keep) if k for piece in _pieces(_prefix(d, k)))
    tok = train_bpe(texts, vocab_size)
    settings = TrainSettings(vocab_size, DEFAULT_SHARES["zh"], max_bytes)
    info = _record(settings, plan, len(docs), time.perf_counter() - t0, tok)
    info["inputs"] = [f"aquila sample corpus {CORPUS_VERSION} (train split)"]
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        save_trained(tok, info, tmp)
        os.replace(tmp, final)
    except OSError:
        # Another process finished first: its (identical) tokenizer wins.
        if not (final / "tokenizer.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
