"""Which language a document is in, reading tokenizer inputs, and bytes per token per language.

Language is decided per document, cheaply and without a model:

* ``code`` for files with a source-code extension (``.py``, ``.js``, ...), or any input given as
  ``code=PATH``;
* ``zh`` when more than ``ZH_THRESHOLD`` of its non-space characters are CJK (Han ideographs, CJK
  punctuation, full-width forms);
* ``en`` otherwise (English and every other non-CJK language).

An input may force the language of all its documents with a ``LANG=PATH`` prefix (``en=``,
``zh=`` or ``code=``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aquila.errors import UserError

LANGS = ("en", "zh", "code")
ZH_THRESHOLD = 0.3
CODE_SUFFIXES = frozenset(
    {".py", ".pyi", ".js", ".ts", ".c", ".h", ".cc", ".cpp", ".hpp", ".java", ".go", ".rs", ".rb",
     ".sh", ".sql", ".toml", ".yaml", ".yml"}
)  # fmt: skip
# Han ideographs (basic, extension A, compatibility, extensions B+), CJK symbols and punctuation,
# full-width forms: what People's Daily text is made of.
_CJK_RE = re.compile(
    "[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef\U00020000-\U0003134f]"
)
_SPACE_RE = re.compile(r"\s")
# Long documents: a prefix decides the language as well as the whole text.
_CLASSIFY_CHARS = 20_000


def cjk_share(text: str) -> float:
    """The share of non-whitespace characters that are CJK (0.0 for empty text)."""
    sample = text[:_CLASSIFY_CHARS]
    visible = len(sample) - len(_SPACE_RE.findall(sample))
    return len(_CJK_RE.findall(sample)) / visible if visible else 0.0


def text_language(text: str) -> str:
    """``zh`` or ``en`` by the share of CJK characters (see the module docstring)."""
    return "zh" if cjk_share(text) > ZH_THRESHOLD else "en"


@dataclass(frozen=True)
class InputSpec:
    path: Path
    lang: str | None = None  # forced language for every document, else decided per document


def parse_input(spec: str) -> InputSpec:
    """``PATH`` or ``LANG=PATH`` (LANG one of en, zh, code); the path must exist."""
    lang = None
    head, sep, tail = spec.partition("=")
    if sep and head in LANGS:
        lang, spec = head, tail
    path = Path(spec)
    if not path.exists():
        raise UserError(f"--input {spec}: no such file or directory")
    return InputSpec(path, lang)


@dataclass(frozen=True)
class InputDoc:
    lang: str
    text: str
    source: str  # the file it came from, for messages


def _read_code(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not valid UTF-8 at byte offset {exc.start} (byte 0x{data[exc.start]:02x})"
        ) from None


def input_files(spec: InputSpec) -> list[Path]:
    """The files of one input: itself, or every non-hidden file under it in sorted order."""
    if spec.path.is_file():
        return [spec.path]
    return [
        p
        for p in sorted(spec.path.rglob("*"))
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(spec.path).parts)
    ]


def iter_file_documents(path: Path, forced_lang: str | None = None) -> Iterator[InputDoc]:
    """Documents of one file: code files whole, ``.txt``/``.jsonl``/``.parquet`` via the readers.

    A ``.txt`` file is one document; a ``.jsonl`` file has one document per line (``text``).
    """
    from aquila.data.readers import iter_documents

    if path.suffix.lower() in CODE_SUFFIXES:
        text = _read_code(path)
        if text.strip():
            yield InputDoc(forced_lang or "code", text, str(path))
        return
    for doc in iter_documents(path):
        yield InputDoc(forced_lang or text_language(doc.text), doc.text, str(path))


@dataclass
class LangStats:
    documents: int = 0
    bytes: int = 0
    tokens: int = 0

    def to_json(self) -> dict:
        bpt = self.bytes / self.tokens if self.tokens else None
        return {
            "documents": self.documents,
            "bytes": self.bytes,
            "tokens": self.tokens,
            "bytes_per_token": round(bpt, 4) if bpt else None,
        }


@dataclass
class CorpusStats:
    langs: dict[str, LangStats] = field(default_factory=dict)

    def add(self, lang: str, num_bytes: int, num_tokens: int) -> None:
        s = self.langs.setdefault(lang, LangStats())
        s.documents += 1
        s.bytes += num_bytes
        s.tokens += num_tokens

    def to_json(self) -> dict:
        return {lang: self.langs[lang].to_json() for lang in sorted(self.langs, key=_lang_order)}


def _lang_order(lang: str) -> tuple[int, str]:
    return (LANGS.index(lang) if lang in LANGS else len(LANGS), lang)


def bytes_per_token(tokenizer, docs: list[InputDoc], batch: int = 256) -> CorpusStats:
    """UTF-8 bytes and token counts per language (documents encoded without specials)."""
    stats = CorpusStats()
    for i in range(0, len(docs), batch):
        chunk = docs[i : i + batch]
        for doc, ids in zip(chunk, tokenizer.encode_batch([d.text for d in chunk])):
            stats.add(doc.lang, len(doc.text.encode("utf-8")), len(ids))
    return stats
