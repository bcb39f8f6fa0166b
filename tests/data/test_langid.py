"""Language identification on real English, Chinese and code samples."""

from __future__ import annotations

import glob
from pathlib import Path

from aquila.data.langid import contradicts, detect


def test_detects_real_english_and_chinese(english_text, chinese_text):
    en = [english_text[i : i + 400] for i in range(0, 40_000, 400)]
    zh = [ln for ln in chinese_text.split("\n") if len(ln) > 30][:100]
    assert sum(detect(t).lang == "en" for t in en) == len(en)
    assert sum(detect(t).lang == "zh" for t in zh) == len(zh)


def test_contradiction_rules(english_text, chinese_text):
    zh = chinese_text[:600]
    assert contradicts(zh, "en") is not None and contradicts(zh, "en").lang == "zh"
    assert contradicts(english_text[:600], "zh").lang == "en"
    assert contradicts(english_text[:600], "en") is None
    french = "Le chat dort sur la table depuis ce matin, et personne ne veut le réveiller."
    assert contradicts(french, "en").lang == "fr"
    # Code and mixed sources are never contradicted.
    assert contradicts(zh, "code") is None and contradicts(zh, "mixed") is None


def test_python_sources_are_not_flagged_in_english_source():
    files = sorted(glob.glob(str(Path(glob.__file__).parent / "json" / "*.py")))
    snippets = [Path(f).read_text()[i : i + 400] for f in files for i in range(0, 2000, 400)]
    assert snippets
    assert all(contradicts(s, "en") is None for s in snippets)
