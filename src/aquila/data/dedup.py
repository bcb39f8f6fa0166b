"""Exact and near-duplicate detection: normalised-text hashes and MinHash LSH (datasketch).

Shingles follow the script: Chinese-dominant text uses character 5-grams (no spaces to split
on), everything else word 5-grams. Signatures are computed per part in parallel; the decision
pass walks documents in a fixed order (source registration order, part, position) and keeps the
first of every duplicate group, so the result never depends on scheduling.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from aquila.data.quality import CJK_RE

NUM_PERM = 128
SHINGLE = 5
SEED = 1
SCHEME = "affine32"
_PUNCT_RE = re.compile(r"[\W_]+", re.UNICODE)
_WORD_RE = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.8
    num_perm: int = NUM_PERM
    shingle: int = SHINGLE


def exact_key(text: str) -> str:
    """Hash of the text with case, punctuation and whitespace differences removed."""
    norm = _PUNCT_RE.sub(" ", unicodedata.normalize("NFKC", text).lower()).strip()
    return hashlib.blake2b(norm.encode(), digest_size=16).hexdigest()


def shingles(text: str, n: int = SHINGLE) -> list[bytes]:
    text = unicodedata.normalize("NFKC", text).lower()
    cjk = CJK_RE.findall(text)
    if len(cjk) > 0.25 * len(text.replace(" ", "").replace("\n", "")):
        chars = _PUNCT_RE.sub("", text)
        units = [chars[i : i + n] for i in range(max(1, len(chars) - n + 1))]
    else:
        words = _WORD_RE.findall(text)
        units = [" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))]
    return [u.encode() for u in set(units) if u]


def signatures(texts: list[str], cfg: DedupConfig) -> tuple[list[str], np.ndarray]:
    """Exact keys and MinHash signatures (len(texts), num_perm) for one part."""
    from datasketch import MinHash

    keys = [exact_key(t) for t in texts]
    sigs = np.zeros((len(texts), cfg.num_perm), dtype=np.uint64)
    # Generating the permutations is the costly part of a MinHash: share them across documents.
    perms = MinHash(num_perm=cfg.num_perm, seed=SEED, scheme=SCHEME).permutations
    for i, t in enumerate(texts):
        m = MinHash(num_perm=cfg.num_perm, seed=SEED, permutations=perms, scheme=SCHEME)
        sh = shingles(t, cfg.shingle)
        if sh:
            m.update_batch(sh)
        sigs[i] = m.hashvalues
    return keys, sigs


@dataclass(frozen=True)
class DocRef:
    source: str
    part: int
    index: int
    doc_id: str


@dataclass(frozen=True)
class Duplicate:
    removed: DocRef
    kept: DocRef
    reason: str  # "exact_duplicate" or "near_duplicate"
    jaccard: float


def find_duplicates(
    parts: list[tuple[str, int, list[str], list[str], np.ndarray]], cfg: DedupConfig
) -> list[Duplicate]:
    """Walk parts (source, part, doc_ids, exact_keys, signatures) in the given order."""
    from datasketch import LeanMinHash, MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    first_exact: dict[str, DocRef] = {}
    kept: dict[int, tuple[DocRef, LeanMinHash]] = {}
    dups: list[Duplicate] = []
    for source, part, ids, keys, sigs in parts:
        for i, (doc_id, key) in enumerate(zip(ids, keys)):
            ref = DocRef(source, part, i, doc_id)
            if key in first_exact:
                dups.append(Duplicate(ref, first_exact[key], "exact_duplicate", 1.0))
                continue
            first_exact[key] = ref
            mh = LeanMinHash(seed=SEED, hashvalues=sigs[i], scheme=SCHEME)
            best: tuple[float, DocRef] | None = None
            for cand in lsh.query(mh):
                other_ref, other = kept[cand]
                j = mh.jaccard(other)
                if j >= cfg.threshold and (best is None or j > best[0]):
                    best = (j, other_ref)
            if best is not None:
                dups.append(Duplicate(ref, best[1], "near_duplicate", round(best[0], 4)))
                continue
            handle = len(kept)
            kept[handle] = (ref, mh)
            lsh.insert(handle, mh)
    return dups


def jaccard_estimates(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise MinHash Jaccard estimates between two signature matrices of equal shape."""
    return (a == b).mean(axis=1)
