"""Cut a long text into pieces at pre-token boundaries, so encoding it piece by piece gives the
same ids as encoding it whole, in memory bounded by the piece size.

The byte-level pre-tokenizer (GPT-2's pattern, ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+|
?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``) never lets a pre-token run across

* the start of a whitespace run (a pre-token holding whitespace begins with it), or
* a change between letters, digits and other symbols (each run class stops at the others),

so a cut there, after any character but an apostrophe (which may begin a contraction such as
``'s``), falls between pre-tokens, and BPE never merges across pre-tokens. Only a run longer than
the search window with no such boundary (a megabyte of letters without a space or punctuation)
is cut inside a pre-token; that piece's edge may then encode differently.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator

# Unicode White_Space (what the pre-tokenizer's \s matches); str.isspace() also counts
# U+001C..U+001F, which the pattern treats as symbols.
_WHITESPACE = frozenset(
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008"
    "\u2009\u200a\u2028\u2029\u202f\u205f\u3000"
)
# How far back from the target length a boundary is looked for before cutting anyway.
SEARCH_CHARS = 4096


def _char_class(ch: str) -> int:
    if ch in _WHITESPACE:
        return 0
    cat = unicodedata.category(ch)[0]
    return 1 if cat == "L" else 2 if cat == "N" else 3


def is_boundary(text: str, i: int) -> bool:
    """Whether a pre-token starts at ``text[i]`` whatever follows (``0 < i < len(text)``)."""
    before, at = text[i - 1], text[i]
    if before in _WHITESPACE or before == "'":
        return False
    c = _char_class(at)
    return c == 0 or c != _char_class(before)


def find_cut(text: str, start: int, target: int) -> int:
    """The last boundary in ``(max(start, target - SEARCH_CHARS), target]``, else ``target``."""
    lo = max(start, target - SEARCH_CHARS)
    # A space is the common boundary in most languages: try the fast search first.
    for sep in (" ", "\n"):
        i = text.rfind(sep, lo + 1, target + 1)
        while i > lo:
            if is_boundary(text, i):
                return i
            i = text.rfind(sep, lo + 1, i)
    for i in range(target, lo, -1):
        if is_boundary(text, i):
            return i
    return target


def pieces(text: str, max_chars: int) -> Iterator[str]:
    """``text`` in order as pieces of at most ``max_chars`` characters, cut at boundaries."""
    if max_chars < 2:
        raise ValueError("max_chars must be >= 2")
    start, n = 0, len(text)
    while n - start > max_chars:
        cut = find_cut(text, start, start + max_chars)
        yield text[start:cut]
        start = cut
    yield text[start:]
