"""Damaged or hand-made token shards are refused when a training opens them, before the run
directory exists: one line naming the file and what is wrong, exit code 2, the shards untouched.

The one file a check may write is ``.scan.json``, the cached result of reading a shard's tokens.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aquila.cli import main
from aquila.data.shard_check import SCAN_FILE
from aquila.data.shards import OFFSETS_FILE, TOKENS_FILE, TokenSource, load_sources

from .conftest import one_line, tree


def _manifest(field, value):
    def change(src: Path) -> None:
        path = src / "manifest.json"
        m = json.loads(path.read_text())
        if value is KeyError:
            del m[field]
        else:
            m[field] = value
        path.write_text(json.dumps(m))

    return change


def _offsets(edit):
    def change(src: Path) -> None:
        offsets = np.load(src / OFFSETS_FILE)
        np.save(src / OFFSETS_FILE, edit(offsets.copy()))

    return change


def _swap(o):
    o[2], o[3] = o[3], o[2]
    return o


def _shift(o):
    o[1] += 1
    return o


def _last_beyond(o):
    o[-1] += 5
    return o


def _token(value: int, at: int = 100):
    def change(src: Path) -> None:
        ids = np.fromfile(src / TOKENS_FILE, dtype="<u4")
        ids[at] = value
        ids.tofile(src / TOKENS_FILE)

    return change


def _write(name: str, data: bytes):
    return lambda src: (src / name).write_bytes(data)


CASES = [
    pytest.param(
        _manifest("tokens", "12"),
        "manifest.json: manifest field tokens = '12': must be an integer >= 0",
        id="tokens-as-string",
    ),
    pytest.param(
        _manifest("documents", -3),
        "manifest field documents = -3: must be an integer >= 0",
        id="negative-documents",
    ),
    pytest.param(
        _manifest("eos_id", 1.5),
        "manifest field eos_id = 1.5: must be an integer >= 0",
        id="float-eos",
    ),
    pytest.param(
        _manifest("files", "a.jsonl"),
        "manifest field files = 'a.jsonl': must be a list",
        id="files",
    ),
    pytest.param(
        _manifest("files", [{"path": "a.jsonl", "documents": "7", "bytes": 1}]),
        "manifest field files = [{'path'",
        id="file-entry",
    ),
    pytest.param(
        _manifest("lang", "fr"), "manifest field lang = 'fr': must be one of en, zh", id="lang"
    ),
    pytest.param(
        _manifest("source", None), "manifest field source = None: must be a non-empty", id="name"
    ),
    pytest.param(
        _manifest("eos_id", KeyError), "manifest field 'eos_id' is missing", id="missing-field"
    ),
    pytest.param(
        _manifest("format_version", "1"), "format_version '1', this version reads 1", id="version"
    ),
    pytest.param(
        _write("manifest.json", b"[1, 2]"), "corrupt manifest (a JSON list", id="manifest-list"
    ),
    pytest.param(
        _write("manifest.json", b'{"tokens": 1'), "manifest.json: corrupt manifest", id="json"
    ),
    pytest.param(_offsets(_swap), "document 2 runs from offset", id="offsets-not-increasing"),
    pytest.param(_offsets(lambda o: o.astype(np.float64)), "offsets of shape", id="offsets-float"),
    pytest.param(_offsets(lambda o: o[:-2]), "offsets, the manifest's", id="offsets-too-few"),
    pytest.param(_offsets(_last_beyond), "offsets run from 0 to", id="offsets-beyond-tokens"),
    pytest.param(_offsets(_shift), "document 0 ends with id", id="offsets-off-the-eos"),
    pytest.param(
        _offsets(lambda o: np.array([object()] * len(o))),
        "cannot read document offsets",
        id="offsets-pickled",
    ),
    pytest.param(_write(OFFSETS_FILE, b"garbage"), "cannot read document offsets", id="npy"),
    pytest.param(_write(TOKENS_FILE, b"\0" * 12), "12 bytes, manifest says", id="tokens-truncated"),
    pytest.param(
        _token(512),
        "token id 512 is beyond the model's vocabulary (model.vocab_size = 512; first such id "
        "at token 100)",
        id="id-beyond-vocab",
    ),
    pytest.param(_token(2**32 - 1, at=7), "token id 4294967295 is beyond", id="id-max-uint32"),
]


@pytest.fixture()
def data_copy(shard_dir, tmp_path) -> Path:
    dst = tmp_path / "data"
    shutil.copytree(shard_dir, dst)
    return dst


def _without_scan(t: dict) -> dict:
    return {k: v for k, v in t.items() if not k.endswith(SCAN_FILE)}


@pytest.mark.parametrize(("damage", "says"), CASES)
def test_a_damaged_shard_is_refused_before_training(
    data_copy, damage, says, train_args, tmp_path, capsys
):
    damage(data_copy / "kjv")
    before = tree(data_copy)
    run_dir = tmp_path / "run"
    assert main(train_args(run_dir, f"data.dir='{data_copy}'")) == 2
    line = one_line(capsys.readouterr().err)
    assert says in line and str(data_copy / "kjv") in line, line
    assert not run_dir.exists()
    assert _without_scan(tree(data_copy)) == _without_scan(before)


def test_an_id_just_below_the_vocabulary_trains(data_copy, train_args, tmp_path):
    _token(511)(data_copy / "kjv")
    assert main(train_args(tmp_path / "run", f"data.dir='{data_copy}'", "train.max_steps=1")) == 0


def test_data_inspect_refuses_a_damaged_shard(data_copy, capsys):
    _offsets(_swap)(data_copy / "news")
    assert main(["data", "inspect", str(data_copy)]) == 2
    assert "news/doc_offsets.npy: corrupt shard" in one_line(capsys.readouterr().err)


def test_the_token_scan_is_cached_and_redone_when_a_file_changes(data_copy, monkeypatch):
    import aquila.data.shard_check as sc

    src = data_copy / "kjv"
    (src / SCAN_FILE).unlink()  # as after a copy that kept no cache
    sc._MEMORY.clear()
    calls = []
    real = sc._scan
    monkeypatch.setattr(sc, "_scan", lambda *a: calls.append(1) or real(*a))
    for _ in range(3):
        load_sources(data_copy, ["kjv"], vocab_size=512)
    assert len(calls) == 1
    sc._MEMORY.clear()  # a new process: the result is read back from .scan.json
    load_sources(data_copy, ["kjv"], vocab_size=512)
    assert len(calls) == 1 and (src / SCAN_FILE).is_file()
    _token(600)(src)  # rewritten: a new modification time
    with pytest.raises(Exception, match="token id 600 is beyond"):
        load_sources(data_copy, ["kjv"], vocab_size=512)
    assert len(calls) == 2


def test_a_data_dir_that_cannot_keep_the_scan_still_opens(data_copy):
    import aquila.data.shard_check as sc

    src = data_copy / "news"
    (src / SCAN_FILE).unlink()
    (src / SCAN_FILE).mkdir()  # the cache cannot be written there
    sc._MEMORY.clear()
    assert TokenSource(src).scan().max_token_id < 512
    assert (src / SCAN_FILE).is_dir() and not list(src.glob("*.tmp"))


def test_a_live_add_source_of_a_damaged_shard_is_rejected(data_copy, tiny_config, tmp_path):
    from aquila.engine.callbacks import Callback
    from aquila.engine.rundb import RunDB
    from aquila.train.run import prepare_run

    _token(9999)(data_copy / "news")
    cfg = tiny_config(
        data_copy,
        tmp_path / "run",
        "data.sources=['kjv']",
        "train.batch_size=4",
        "train.max_steps=3",
        "monitor.eval.enabled=false",
    )
    run = prepare_run(cfg, quiet=True)
    d = str(run.run_dir)

    class AddAfterFirst(Callback):
        def on_step(self, trainer, metrics):
            if metrics.step == 1:
                assert main(["control", d, "add-source", "news"]) == 0  # queued

    run.trainer.callbacks.append(AddAfterFirst())
    assert run.trainer.fit() == "completed"  # the training went on without it
    (row,) = RunDB(d).commands()
    assert row["status"] == "rejected" and "token id 9999 is beyond" in row["reason"]
    assert run.data.source_names == ["kjv"]
