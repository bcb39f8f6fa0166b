"""Few-shot examples of MMLU/C-Eval/CMMLU come from the dev split, never the question itself."""

from __future__ import annotations

import pytest

from aquila.cli import main
from aquila.errors import UserError
from aquila.eval.multiple_choice import fewshot_context, fewshot_shots
from aquila.eval.readers import read_letter_split
from aquila.eval.tasks import parse_tasks, set_fewshot_from


def _mmlu(path, subject, questions):
    path.mkdir(parents=True, exist_ok=True)
    f = path / f"{subject}_{path.name}.csv"
    f.write_text("".join(f"{q},w,x,y,z,B\n" for q in questions), encoding="utf-8")
    return f


@pytest.fixture
def mmlu(tmp_path):
    root = tmp_path / "mmlu"
    _mmlu(root / "test", "astronomy", ["What is the Sun?", "What is Mars?", "Shared question?"])
    _mmlu(root / "test", "law", ["What is a tort?"])
    _mmlu(root / "dev", "astronomy", [f"Dev astro {i}?" for i in range(5)] + ["Shared question?"])
    _mmlu(root / "dev", "law", [f"Dev law {i}?" for i in range(5)])
    return root


def test_dev_split_beside_the_test_dir_is_the_default(mmlu):
    examples, pool, source = read_letter_split("mmlu", mmlu / "test")
    assert source == str(mmlu / "dev") and len(examples) == 4 and len(pool) == 11
    shots = fewshot_shots(examples, 0, 5, pool)
    # The first 5 dev questions of the same subject, in order.
    assert [s.context.split("\n")[0] for s in shots] == [f"Dev astro {i}?" for i in range(5)]
    law = fewshot_shots(examples, 3, 5, pool)
    assert {s.group for s in law} == {"law"}
    # A dev question equal to the evaluated one is never its own shot.
    shared = fewshot_shots(examples, 2, 6, pool)
    assert "Shared question?" not in [s.context.split("\n")[0] for s in shared]
    assert len(shared) == 5
    prompt = fewshot_context(examples, 2, 6, pool=pool)
    assert prompt.count("Shared question?") == 1 and prompt.endswith(examples[2].context)


def test_a_directory_holding_dev_files_uses_them_and_does_not_evaluate_them(mmlu, tmp_path):
    examples, pool, source = read_letter_split("mmlu", mmlu)  # dev/ and test/ inside
    assert len(examples) == 4 and len(pool) == 11 and "dev files" in source
    flat = tmp_path / "flat"
    _mmlu(flat, "astronomy", ["Q1?", "Q2?"]).rename(flat / "astronomy_test.csv")
    _mmlu(flat, "astronomy", ["D1?"]).rename(flat / "astronomy_dev.csv")
    examples, pool, _ = read_letter_split("mmlu", flat)
    assert [e.context.split("\n")[0] for e in examples] == ["Q1?", "Q2?"]
    assert [e.context.split("\n")[0] for e in pool] == ["D1?"]
    # A single test file finds SUBJECT_dev.csv beside it.
    _, pool, source = read_letter_split("mmlu", flat / "astronomy_test.csv")
    assert source == str(flat / "astronomy_dev.csv") and len(pool) == 1


def test_without_a_dev_split_shots_are_other_questions(tmp_path):
    f = _mmlu(tmp_path / "x", "s", ["A?", "B?", "A?", "C?"])
    examples, pool, source = read_letter_split("mmlu", f)
    assert pool is None and "no dev split" in source
    for i, ex in enumerate(examples):
        shots = fewshot_shots(examples, i, 3)
        assert all(s.context != ex.context for s in shots)  # not itself, nor a duplicate
    assert len(fewshot_shots(examples, 0, 3)) == 2  # B? and C?: the other A? is the same


def test_fewshot_from_option(mmlu, tmp_path, eval_model_dir, capsys, monkeypatch):
    import aquila.eval.multiple_choice as mc

    prompts = []
    real = mc.fewshot_context

    def spy(*a, **k):
        prompts.append(real(*a, **k))
        return prompts[-1]

    monkeypatch.setattr(mc, "fewshot_context", spy)
    other = _mmlu(tmp_path / "other", "astronomy", ["Other dev?"])
    (task,) = parse_tasks(f"mmlu:{mmlu / 'test'}")
    set_fewshot_from([task], str(other))
    task.prepare(None)
    assert task.extra["fewshot_source"] == str(other)
    assert [s.context.split("\n")[0] for s in task.extra["fewshot_pool"]] == ["Other dev?"]
    with pytest.raises(UserError, match="--fewshot-from applies to one mmlu/ceval/cmmlu task"):
        set_fewshot_from(parse_tasks("bpb"), str(other))
    argv = ["eval", str(eval_model_dir), "--tasks", f"mmlu:{mmlu / 'test'}", "--quiet"]
    assert main([*argv, "--num-fewshot", "2", "--limit", "1", "--json"]) == 0
    assert f"few-shot examples from {mmlu / 'dev'}" in capsys.readouterr().err
    (prompt,) = prompts  # the scored prompt holds the dev shots
    assert prompt.startswith("Dev astro 0?") and "Dev astro 1?" in prompt
    assert prompt.endswith("What is the Sun?\nA. w\nB. x\nC. y\nD. z\nAnswer:")
