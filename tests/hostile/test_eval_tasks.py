"""monitor.eval.tasks against a new run: a malformed task file or two tasks of one name are
refused with one line before the run directory exists."""

from __future__ import annotations

import json

import pytest

from aquila.cli import main

from .conftest import one_line


@pytest.mark.parametrize(
    "record,tasks,expected",
    [
        ({"query": "q", "choices": ["a", "b"], "gold": 5}, '["mc:{f}"]', "field 'gold' = 5"),
        ({"query": "q", "choices": "ab", "gold": 0}, '["mc:{f}"]', "field 'choices' must be"),
        (None, '["bpb", "bpb"]', "config key monitor.eval.tasks"),
        (None, '["nope:{f}"]', "config key monitor.eval.tasks"),
    ],
)
def test_bad_eval_tasks_refuse_the_run_before_it_exists(
    record, tasks, expected, train_args, tmp_path, capsys
):
    f = tmp_path / "q.jsonl"
    if record is not None:
        f.write_text(json.dumps(record) + "\n")
    run = tmp_path / "run"
    args = train_args(run, "monitor.eval.enabled=true", f"monitor.eval.tasks={tasks.format(f=f)}")
    assert main(args) == 2
    line = one_line(capsys.readouterr().err)
    assert expected in line
    if record is not None:
        assert f"{f}:1:" in line
    assert not run.exists()
