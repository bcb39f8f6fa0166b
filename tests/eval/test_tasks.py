"""Task registry, multiple-choice scoring, built-in held-out tasks and results files."""

from __future__ import annotations

import json
import math
import re

import pytest

from aquila.errors import UserError
from aquila.eval.builtin import en_next_verse, next_sentence_examples, zh_news_cloze
from aquila.eval.lm import LogLikelihood
from aquila.eval.multiple_choice import fewshot_context, score_examples
from aquila.eval.readers import MCExample
from aquila.eval.results import checkpoint_step, record_results
from aquila.eval.tasks import get_task, parse_tasks


class _TableLM:
    """Log-probs from a table: isolates acc / acc_norm from any model."""

    batch_size = 4

    def __init__(self, tokenizer, table):
        self.tokenizer, self.table = tokenizer, table

    def loglikelihood(self, pairs):
        # An entry keyed by (context, choice) wins over one keyed by the choice alone.
        return [
            LogLikelihood(self.table.get((x, c), self.table.get(c)), False, 1) for x, c in pairs
        ]

    def loglikelihood_shared(self, context, choices):
        return self.loglikelihood([(context, c) for c in choices])


def test_acc_and_acc_norm_differ_by_length(tiny_tokenizer):
    # The long gold answer has the lowest total log-prob but the best per byte.
    ex = [MCExample("Q:", [" yes", " a much longer answer", " no"], gold=1)]
    lm = _TableLM(tiny_tokenizer, {" yes": -4.0, " a much longer answer": -10.0, " no": -5.0})
    r = score_examples(lm, ex)
    assert r == {"acc": 0.0, "acc_norm": 1.0, "acc_pmi": 0.0, "n": 1}


def test_acc_pmi_rewards_what_the_context_raised(tiny_tokenizer):
    # " the" is likelier everywhere; the context raised " Lord" the most over its prior.
    ex = [MCExample("Praise ye", [" the", " Lord"], gold=1)]
    table = {
        ("Praise ye", " the"): -2.0,
        ("Praise ye", " Lord"): -3.0,
        ("", " the"): -1.5,
        ("", " Lord"): -8.0,
    }
    r = score_examples(_TableLM(tiny_tokenizer, table), ex)
    assert r["acc"] == 0.0 and r["acc_pmi"] == 1.0


def test_context_free_examples_are_scored_once(tiny_tokenizer):
    """Sentence-order tasks have no context: their choices' priors are their scores, so the
    model sees each choice once; examples with a context still get their priors scored."""
    seen: list[tuple[str, str]] = []

    class Counting(_TableLM):
        def loglikelihood(self, pairs):
            seen.extend(pairs)
            return super().loglikelihood(pairs)

    table = {"a b c.": -3.0, "b a c.": -5.0, ("Q:", " x"): -1.0, ("Q:", " y"): -2.0}
    table.update({" x": -1.0, " y": -0.5})
    ex = [MCExample("", ["b a c.", "a b c."], gold=1), MCExample("Q:", [" x", " y"], gold=0)]
    r = score_examples(Counting(tiny_tokenizer, table), ex)
    assert sorted(seen) == sorted(
        [("", "b a c."), ("", "a b c."), ("Q:", " x"), ("Q:", " y")] + [("", " x"), ("", " y")]
    )
    assert r["acc"] == 1.0 and r["n"] == 2


def test_fewshot_context_excludes_the_example_itself():
    ex = [MCExample(f"Q{i}:", [" a", " b"], gold=i % 2) for i in range(6)]
    ctx = fewshot_context(ex, 2, k=3)
    assert ctx.endswith("Q2:") and ctx.count("Q2:") == 1 and ctx.count("\n\n") == 3
    assert fewshot_context(ex, 2, k=3) == ctx  # deterministic
    assert fewshot_context(ex, 2, k=0) == "Q2:"


def test_real_model_scoring_shared_and_batched_agree(eval_lm):
    ex = en_next_verse(limit=6)
    zero = score_examples(eval_lm, ex, num_fewshot=0)  # short contexts: padded batches
    few = score_examples(eval_lm, ex, num_fewshot=2)  # long contexts: the KV-cache path
    assert zero["n"] == few["n"] == 6
    assert 0 <= zero["acc"] <= 1 and 0 <= few["acc_norm"] <= 1


def test_next_sentence_examples_are_well_formed():
    docs = [[f"doc {d} sentence number {i} is here." for i in range(5)] for d in range(6)]
    ex = next_sentence_examples(docs, "en", limit=10, min_chars=5)
    assert len(ex) == 10
    for e in ex:
        d = int(e.context.split()[1])
        i = int(e.context.split()[4])
        assert e.choices[e.gold] == f" doc {d} sentence number {i + 1} is here."
        assert len(set(e.choices)) == 4
        others = [c for j, c in enumerate(e.choices) if j != e.gold]
        assert all(f"doc {d} " not in c for c in others)  # distractors come from other documents
    golds = {e.gold for e in ex}
    assert len(golds) > 1  # the answer position is shuffled


def test_builtin_tasks_read_the_heldout_corpus():
    en, zh = en_next_verse(limit=20), zh_news_cloze(limit=20)
    assert len(en) == 20 and len(zh) == 20
    assert all(len(e.choices) == 4 for e in en + zh)
    assert any("\u4e00" <= ch <= "\u9fff" for ch in zh[0].context)


def test_registry_and_errors(tmp_path):
    names = [t.name for t in parse_tasks("bpb, en_next_verse,zh_news_cloze")]
    assert names == ["bpb", "en_next_verse", "zh_news_cloze"]
    assert get_task("en_next_verse").chance == 0.25
    with pytest.raises(UserError, match="unknown task 'nope'"):
        get_task("nope")
    with pytest.raises(UserError, match="unknown file format 'xml'"):
        get_task("xml:foo")
    f = tmp_path / "mc.jsonl"
    f.write_text(json.dumps({"query": "Q", "choices": ["a", "b", "c"], "gold": 0}) + "\n")
    task = get_task(f"mc:{f}")
    assert len(task.load(None)) == 1 and math.isclose(task.chance, 1 / 3)


def test_every_task_has_a_unique_stable_name(tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "x.jsonl").write_text("")
    tasks = parse_tasks(
        f"bpb,mc:{tmp_path}/a/x.jsonl,mine=mc:{tmp_path}/b/x.jsonl,mmlu:{tmp_path}/a/"
    )
    assert [t.name for t in tasks] == ["bpb", "mc:x", "mine", "mmlu:a"]
    assert tasks[2].spec == f"mine=mc:{tmp_path}/b/x.jsonl"
    assert get_task("mc:dir/q.jsonl.gz").name == "mc:q"
    assert get_task("gsm8k:test.jsonl").name == "gsm8k:test"
    with pytest.raises(UserError, match=r"are both named 'mc:x'; name one of them, e\.g\. mc_x_2="):
        parse_tasks(f"mc:{tmp_path}/a/x.jsonl,mc:{tmp_path}/b/x.jsonl")
    with pytest.raises(UserError, match="'bpb' is given twice"):
        parse_tasks("bpb,bpb")
    with pytest.raises(UserError, match="both named 'bpb'"):
        parse_tasks(f"bpb,bpb=mc:{tmp_path}/a/x.jsonl")
    with pytest.raises(UserError, match="task name 'a b'"):
        get_task("a b=bpb")


def test_bpb_task_per_source_and_language(eval_lm):
    task = get_task("bpb")
    sources = task.load(1)  # one document per source
    r = task.run(
        eval_lm, sources, __import__("aquila.eval.tasks", fromlist=["RunOptions"]).RunOptions()
    )
    for key in (
        "bpb",
        "bpb_en",
        "bpb_zh",
        "bpb_code",
        "bpb_kjv",
        "bpb_peoples_daily",
        "bpb_python_code",
        "chance",
    ):
        assert key in r and math.isfinite(r[key]) and r[key] > 0, key
    # An untrained model is worse than a byte-unigram model.
    assert r["bpb"] > r["chance"]


def test_results_go_into_the_run_database(tmp_path):
    from aquila.engine.rundb import RunDB

    results = {"en_next_verse": {"acc": 0.5, "chance": 0.25}, "mine": {"acc": 1.0}}
    tasks = parse_tasks(f"en_next_verse,mine=mc:{tmp_path}/m.jsonl")
    path = record_results(tmp_path, 120, results, tasks, meta={"checkpoint": "step-00000120"})
    assert path == tmp_path / "run.sqlite"
    rows = RunDB(tmp_path).evals()
    assert [(r["step"], r["task"]) for r in rows] == [(120, "en_next_verse"), (120, "mine")]
    assert rows[1]["data"] == {
        "metrics": {"acc": 1.0},
        "spec": f"mine=mc:{tmp_path}/m.jsonl",
        "path": f"{tmp_path}/m.jsonl",
        "kind": "multiple_choice",
        "origin": "aquila eval",
        "checkpoint": "step-00000120",
    }
    assert not (tmp_path / "eval").exists()
    assert checkpoint_step(tmp_path / "checkpoints" / "step-00000120") == 120
    assert checkpoint_step(tmp_path / "model") is None


def _own_text(root):
    """Held-out text the model never saw, in the layouts `bpb:PATH` reads."""
    (root / "en").mkdir(parents=True)
    (root / "en" / "letter.txt").write_text(
        "Dear Anna, the harbour was quiet this morning and the ferry left on time.\n"
    )
    (root / "notes.jsonl").write_text(
        "".join(
            json.dumps({"text": t}, ensure_ascii=False) + "\n"
            for t in [
                "今天的天气很好，我们去公园散步。",
                "图书馆明天上午九点开门，欢迎大家来借书。",
            ]
        )
    )
    (root / ".hidden.txt").write_text("never read")
    (root / "README.md").write_text("ignored: not .txt or .jsonl")
    return root


def test_bpb_on_any_text_per_file_and_language(eval_lm, tmp_path):
    from aquila.eval.bpb import bits_per_byte, unigram_bpb
    from aquila.eval.tasks import RunOptions

    root = _own_text(tmp_path / "mine")
    task = get_task(f"bpb:{root}")
    assert task.name == "bpb:mine" and task.kind == "bpb"
    files = task.prepare(None)
    assert [(f.name, f.lang, len(f.documents)) for f in files] == [
        ("en/letter.txt", "en", 1),
        ("notes.jsonl", "zh", 2),
    ]
    r = task.run(eval_lm, files, RunOptions())
    letter = bits_per_byte(eval_lm.model, eval_lm.tokenizer, files[0].documents)
    assert r["bpb:en/letter.txt"] == pytest.approx(letter["bpb"])
    assert r["bpb_en"] == pytest.approx(letter["bpb"])  # the only English file
    assert r["unigram:notes.jsonl"] == pytest.approx(unigram_bpb(files[1].documents))
    assert r["bpb_zh"] == r["bpb:notes.jsonl"]
    zh_bytes = sum(len(d.encode()) for d in files[1].documents)
    pooled = (letter["bpb"] * letter["bytes"] + r["bpb_zh"] * zh_bytes) / (
        letter["bytes"] + zh_bytes
    )
    assert r["bpb"] == pytest.approx(pooled) and r["bytes"] == letter["bytes"] + zh_bytes
    assert r["chance"] == pytest.approx(unigram_bpb(files[0].documents + files[1].documents))
    assert r["files"] == 2
    # One file alone; --limit takes the first documents of each file.
    single = get_task(f"bpb:{root}/notes.jsonl")
    (f,) = single.prepare(1)
    assert f.name == "notes.jsonl" and len(f.documents) == 1


@pytest.mark.parametrize(
    "name,content,message",
    [
        ("a.jsonl", '{"text": 5}\n', "a.jsonl:1: field 'text' must be a string"),
        ("a.jsonl", '{"body": "x"}\n', "a.jsonl:1: missing field 'text'"),
        ("a.txt", "   \n", "a.txt: no text to score"),
        ("a.txt", b"caf\xe9", "a.txt:1: not valid UTF-8"),
    ],
)
def test_bpb_text_is_validated(tmp_path, name, content, message):
    f = tmp_path / name
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=re.escape(message)):
        get_task(f"bpb:{f}").prepare(None)


def test_bpb_of_a_dir_without_text_is_refused(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="holds no .txt/.jsonl"):
        get_task(f"bpb:{tmp_path}").prepare(None)
    with pytest.raises(UserError, match="does not exist"):
        get_task(f"bpb:{tmp_path}/nope").prepare(None)


def test_table_puts_each_bpb_beside_the_unigram_entropy_of_its_own_text():
    from rich.console import Console

    from aquila.eval.results import results_table

    res = {
        "bpb:mine": {
            "bpb": 2.5,
            "bpb_en": 2.0,
            "bpb:a.txt": 2.0,
            "unigram_en": 4.25,
            "unigram:a.txt": 4.25,
            "bytes": 10,
            "chance": 4.75,
        }
    }
    console = Console(width=200, record=True)
    console.print(results_table(res))
    rows = {ln.split("│")[2].strip(): ln for ln in console.export_text().splitlines() if "│" in ln}
    assert "4.7500" in rows["bpb"] and "4.2500" in rows["bpb_en"] and "4.2500" in rows["bpb:a.txt"]
    assert "unigram_en" not in rows and rows["bytes"].split("│")[4].strip() == ""
