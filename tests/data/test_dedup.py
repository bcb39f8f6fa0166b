"""Exact and MinHash near-duplicate detection on real text, including KJV vs ASV."""

from __future__ import annotations

import numpy as np

from aquila.data.dedup import DedupConfig, exact_key, find_duplicates, signatures


def _chapters(module: str, limit: int) -> dict[int, str]:
    bible = __import__(f"pythonbible_{module}.plain_text_bible", fromlist=["bible"]).bible
    out: dict[int, list[str]] = {}
    for vid in sorted(bible.verse_start_indices):
        if len(out) == limit and vid // 1000 not in out:
            break
        text = bible.scripture_content[
            bible.verse_start_indices[vid] : bible.verse_end_indices[vid]
        ]
        out.setdefault(vid // 1000, []).append(text.strip())
    return {k: " ".join(v) for k, v in out.items()}


def _part(source, texts, cfg):
    return (source, 0, [f"{source}-{i}" for i in range(len(texts))], texts)


def test_exact_key_ignores_case_punctuation_space():
    assert exact_key("In the beginning, God created!") == exact_key("in the  beginning God created")
    assert exact_key("In the beginning") != exact_key("In the end")


def test_near_duplicates_within_and_across_sources(english_text, chinese_text):
    cfg = DedupConfig(threshold=0.8)
    en = [english_text[i * 3000 : (i + 1) * 3000] for i in range(6)]
    zh = ["\n".join(chinese_text.split("\n")[i : i + 6]) for i in range(0, 60, 6)]
    edited = en[2].replace("God", "the LORD", 1)  # one edit in a long chapter
    zh_edited = zh[3][:-3] + "。"
    a = _part("a", en + zh, cfg)
    b = _part("b", [edited, zh_edited, en[4]], cfg)
    dups = find_duplicates([a, b], cfg)
    found = {(d.removed.doc_id, d.kept.doc_id, d.reason) for d in dups}
    assert ("b-0", "a-2", "near_duplicate") in found
    assert ("b-1", f"a-{6 + 3}", "near_duplicate") in found
    assert ("b-2", "a-4", "exact_duplicate") in found
    assert len(dups) == 3  # nothing in source a is a duplicate of anything else
    # Order decides which copy is kept.
    dups_rev = find_duplicates([_part("b", [en[4]], cfg), _part("a", en, cfg)], cfg)
    assert [(d.removed.doc_id, d.kept.doc_id) for d in dups_rev] == [("a-4", "b-0")]


def test_kjv_asv_chapters_flagged_at_translation_threshold():
    kjv, asv = _chapters("kjv", 80), _chapters("asv", 80)
    common = sorted(set(kjv) & set(asv))
    cfg = DedupConfig(threshold=0.4)
    k = _part("kjv", [kjv[c] for c in common], cfg)
    a = _part("asv", [asv[c] for c in common], cfg)
    dups = find_duplicates([k, a], cfg)
    cross = [d for d in dups if d.removed.source == "asv"]
    # Most ASV chapters are revisions of the KJV chapter with the same number, and only of it.
    assert len(cross) >= 0.6 * len(common)
    assert all(d.kept.doc_id.split("-")[1] == d.removed.doc_id.split("-")[1] for d in cross)
    # At the web default of 0.8 the two translations are different documents.
    strict = DedupConfig(threshold=0.8)
    assert not find_duplicates([_part("kjv", [kjv[c] for c in common], strict),
                                _part("asv", [asv[c] for c in common], strict)], strict)  # fmt: skip
    exact, sig = signatures(k[3], strict)
    assert len(set(exact.tolist())) == len(common) and np.all(sig < np.iinfo(np.uint32).max)
