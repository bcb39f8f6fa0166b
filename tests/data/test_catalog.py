"""The SQLite catalog: sources with hashed files, clear errors, mixture versions."""

from __future__ import annotations

import hashlib

import pytest

from aquila.data.catalog import Catalog
from aquila.errors import UserError


@pytest.fixture
def kjv_file(tmp_path, english_text):
    p = tmp_path / "kjv.txt"
    p.write_text(english_text[:5000], encoding="utf-8")
    return p


def test_add_source_records_files_with_hash(tmp_path, kjv_file):
    cat = Catalog(tmp_path / "catalog.sqlite")
    src = cat.add_source("kjv", [kjv_file], "en", "book")
    assert src.files[0].sha256 == hashlib.sha256(kjv_file.read_bytes()).hexdigest()
    assert src.files[0].size_bytes == kjv_file.stat().st_size
    assert cat.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert cat.source_names() == ["kjv"]


def test_duplicate_source_needs_replace(tmp_path, kjv_file):
    cat = Catalog(tmp_path / "catalog.sqlite")
    first = cat.add_source("kjv", [kjv_file], "en", "book")
    with pytest.raises(UserError, match="already exists.*--replace"):
        cat.add_source("kjv", [kjv_file], "en", "book")
    kjv_file.write_text("changed text", encoding="utf-8")
    second = cat.add_source("kjv", [kjv_file], "en", "book", replace=True)
    assert second.fingerprint != first.fingerprint
    assert cat.source_names() == ["kjv"]


def test_missing_path_and_bad_lang_named(tmp_path, kjv_file):
    cat = Catalog(tmp_path / "catalog.sqlite")
    with pytest.raises(UserError, match="nope.txt"):
        cat.add_source("x", [tmp_path / "nope.txt"], "en", "web")
    with pytest.raises(UserError, match="--lang"):
        cat.add_source("x", [kjv_file], "fr", "web")
    with pytest.raises(UserError, match="unknown source 'y'"):
        cat.source("y")


def test_mixture_versions_follow_content(tmp_path):
    cat = Catalog(tmp_path / "catalog.sqlite")
    assert cat.record_mixture("m", "a = 1") == 1
    assert cat.record_mixture("m", "a = 1") == 1
    assert cat.record_mixture("m", "a = 2") == 2
    assert [r[1] for r in cat.mixtures()] == [1, 2]
