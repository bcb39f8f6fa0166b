"""`aquila eval` end to end on a saved model dir and a run dir."""

from __future__ import annotations

import json
import shutil

from aquila.cli import main
from aquila.engine.rundb import RunDB


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_eval_json_on_model_dir(eval_model_dir, capsys, tmp_path):
    out_file = tmp_path / "res.json"
    rc = main(
        [
            "eval",
            str(eval_model_dir),
            "--tasks",
            "en_next_verse,zh_news_cloze",
            "--limit",
            "3",
            "--json",
            "--quiet",
            "--out",
            str(out_file),
        ]
    )
    assert rc == 0
    res = _last_json(capsys.readouterr().out)
    assert set(res) == {"en_next_verse", "zh_news_cloze"}
    assert res["zh_news_cloze"]["chance"] == 0.25 and res["zh_news_cloze"]["n"] == 3
    assert json.loads(out_file.read_text()) == res


def test_eval_default_tasks(eval_model_dir, capsys):
    assert main(["eval", str(eval_model_dir), "--limit", "2", "--json", "--quiet"]) == 0
    res = _last_json(capsys.readouterr().out)
    assert set(res) == {"bpb", "en_word_cloze", "zh_word_cloze"}
    assert res["en_word_cloze"]["n"] == 2 and res["zh_word_cloze"]["chance"] == 0.25


def test_eval_run_dir_records_results(eval_model_dir, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(eval_model_dir, run / "checkpoints" / "step-00000050")
    assert (
        main(["eval", str(run), "--tasks", "mc:" + str(_mc_file(tmp_path)), "--json", "--quiet"])
        == 0
    )
    res = _last_json(capsys.readouterr().out)
    (row,) = RunDB(run).evals()
    assert row["step"] == 50 and row["task"] == "mc:mc" and row["data"]["metrics"] == res["mc:mc"]
    assert row["data"]["spec"] == "mc:" + str(_mc_file(tmp_path))
    assert row["data"]["checkpoint"] == "step-00000050" and row["data"]["origin"] == "aquila eval"
    assert not (run / "eval").exists()
    # An unreadable run database is refused before anything is scored.
    (run / "run.sqlite").unlink()
    (run / "run.sqlite").write_bytes(b"not a database" * 100)
    assert main(["eval", str(run), "--tasks", "bpb", "--json", "--quiet"]) == 2
    captured = capsys.readouterr()
    assert "run database cannot be read" in captured.err and captured.out == ""


def _mc_file(tmp_path, n=2):
    f = tmp_path / "mc.jsonl"
    rows = [
        {
            "query": "In the beginning God created",
            "choices": [" the heaven", " 人民", " x"],
            "gold": 0,
        }
    ] * n
    f.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return f


def test_two_mc_files_give_two_results(eval_model_dir, capsys, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    fa, fb = _mc_file(a), _mc_file(b, n=3)
    argv = ["eval", str(eval_model_dir), "--json", "--quiet", "--tasks"]
    assert main([*argv, f"mc:{fa},other=mc:{fb}"]) == 0
    res = _last_json(capsys.readouterr().out)
    assert list(res) == ["mc:mc", "other"]
    assert res["mc:mc"]["n"] == 2 and res["other"]["n"] == 3
    assert main([*argv, f"mc:{fa},mc:{fb}"]) == 2
    err = capsys.readouterr().err
    assert "both named 'mc:mc'" in err and "mc_mc_2=" in err


def test_eval_table_output(eval_model_dir, capsys, tmp_path):
    assert (
        main(["eval", str(eval_model_dir), "--tasks", "mc:" + str(_mc_file(tmp_path)), "--quiet"])
        == 0
    )
    out = capsys.readouterr().out
    assert "acc_norm" in out and "0.3333" in out  # chance of a 3-way choice


def test_eval_errors_exit_2(eval_model_dir, tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["eval", str(eval_model_dir), "--tasks", "nope"]) == 2
    assert "unknown task" in capsys.readouterr().err
    assert main(["eval", str(eval_model_dir), "--tasks", "mmlu:" + str(tmp_path / "none.csv")]) == 2
    assert "none.csv" in capsys.readouterr().err
    assert main(["eval", str(eval_model_dir), "--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main(["eval"]) == 2


def test_eval_compare(eval_model_dir, tmp_path, capsys):
    q = tmp_path / "int4"
    assert (
        main(
            [
                "quantize",
                str(eval_model_dir),
                "--method",
                "rtn",
                "--group-size",
                "32",
                "--out",
                str(q),
                "--quiet",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert (
        main(
            [
                "eval",
                "--compare",
                str(eval_model_dir),
                str(q),
                "--tasks",
                "mc:" + str(_mc_file(tmp_path)),
                "--json",
                "--quiet",
            ]
        )
        == 0
    )
    rep = _last_json(capsys.readouterr().out)
    assert rep["models"][1].endswith("(int4)")
    a, b = rep["size"]
    assert a["linear_weight_bytes"] / b["linear_weight_bytes"] > 5
    assert all(t > 0 for t in rep["tokens_per_s"])
