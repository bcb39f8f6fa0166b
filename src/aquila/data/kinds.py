"""The vocabularies that describe a data source: its language and its kind of text."""

from __future__ import annotations

from aquila.errors import UserError

LANGS = ("en", "zh", "code", "mixed")
# Aquila2's source categories, plus news (People's Daily in the sample corpus).
KINDS = ("web", "wiki", "book", "paper", "news", "qa", "code", "knowledge")


def check_lang_kind(lang: str, kind: str) -> None:
    if lang not in LANGS:
        raise UserError(f"--lang must be one of {', '.join(LANGS)}, got {lang!r}")
    if kind not in KINDS:
        raise UserError(f"--kind must be one of {', '.join(KINDS)}, got {kind!r}")
