"""The task registry: built-in tasks by name, benchmark files by ``FORMAT:PATH``.

A :class:`Task` loads its examples once (``load(limit)``), then ``run(lm, examples, opts)``
returns its metrics; ``chance`` is reported beside the score. For ``bpb`` the chance column is
the byte-unigram entropy of the same text: what a model that ignores context would score.

Every task of a run has a unique, stable name, the key of its results everywhere (the JSON
output, the run database, the dashboard): a built-in task's own name, ``FORMAT:STEM`` for a file
(``mc:a`` for ``mc:data/a.jsonl``; a directory's own name), or the ``NAME`` of
``NAME=FORMAT:PATH``. Two tasks of one run with the same name are refused.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aquila.errors import UserError
from aquila.eval.lm import ModelLM

# Bytes of held-out text per source for `bpb` unless --limit caps the documents instead.
BPB_BYTES_PER_SOURCE = 64_000


@dataclass
class RunOptions:
    num_fewshot: int = 0
    max_new_tokens: int = 256
    advance: Callable[[int], None] | None = None
    unsafe_exec: bool = False  # run generated code unconfined where no sandbox can be made


@dataclass
class Task:
    name: str
    lang: str  # "en", "zh", "code" or "mixed"
    kind: str  # "bpb", "multiple_choice" or "generation"
    chance: float | None
    load: Callable[[int | None], list[Any]]
    run: Callable[[ModelLM, list[Any], RunOptions], dict[str, float]]
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # The text it was given in (``--tasks`` or ``monitor.eval.tasks``), stored with its results.
    spec: str = ""
    # The file or directory a file task reads, made absolute (stored beside ``spec``).
    path: str | None = None
    # Examples loaded ahead of the model (``prepare``), with the limit they were loaded for.
    prepared: tuple[int | None, list[Any]] | None = None

    def prepare(self, limit: int | None) -> list[Any]:
        """Load (and so validate) the examples once; later calls return the same list."""
        if self.prepared is None or self.prepared[0] != limit:
            self.prepared = (limit, self.load(limit))
        return self.prepared[1]


# ---------------------------------------------------------------------------------------------
# bpb


def _bpb_load(limit: int | None) -> list[Any]:
    from aquila.data.samples import load_sample_corpus

    out = []
    for src in load_sample_corpus("heldout"):
        docs = src.documents[:limit] if limit else _byte_budget(src.documents, BPB_BYTES_PER_SOURCE)
        out.append((src.name, src.lang, docs))
    return out


def _byte_budget(docs: list[str], budget: int) -> list[str]:
    out, used = [], 0
    for d in docs:
        if used >= budget:
            break
        n = len(d.encode("utf-8"))
        # Cut the last document at a character boundary rather than overshoot the budget.
        out.append(
            d
            if used + n <= budget
            else d.encode("utf-8")[: budget - used].decode("utf-8", "ignore")
        )
        used += n
    return out


def _bpb_run(lm: ModelLM, sources: list[Any], opts: RunOptions) -> dict[str, float]:
    from aquila.eval.bpb import unigram_bpb
    from aquila.eval.heldout import HeldoutSet, evaluate_heldout, pooled_bpb

    sets = [HeldoutSet(name, lang, docs) for name, lang, docs in sources]
    res = evaluate_heldout(
        lm.model, lm.tokenizer, sets, batch_size=lm.batch_size, advance=opts.advance
    )
    metrics = {f"bpb_{name}": r["bpb"] for name, r in res["sources"].items()}
    metrics["bpb"] = pooled_bpb(res)[0]
    metrics.update({f"bpb_{lang}": r["bpb"] for lang, r in res["languages"].items()})
    metrics["chance"] = unigram_bpb([t for s in sets for t in s.texts])
    return dict(sorted(metrics.items(), key=lambda kv: (kv[0].count("_") > 0, len(kv[0]), kv[0])))


def _bpb_files_task(path: str) -> Task:
    """Bits per byte on a user's own text: per file, per language and overall, each beside the
    byte-unigram entropy of the same text (``unigram...``; ``chance`` is the overall one)."""

    def load(limit: int | None) -> list[Any]:
        from aquila.eval.readers import read_texts

        files = read_texts(path)
        for f in files:
            f.documents = f.documents[:limit] if limit else f.documents
        return files

    def run(lm: ModelLM, files: list[Any], opts: RunOptions) -> dict[str, float]:
        from aquila.eval.bpb import unigram_bpb
        from aquila.eval.heldout import HeldoutSet, evaluate_heldout, pooled_bpb

        sets = [HeldoutSet(f.name, f.lang, f.documents) for f in files]
        res = evaluate_heldout(
            lm.model, lm.tokenizer, sets, batch_size=lm.batch_size, advance=opts.advance
        )
        langs = sorted(res["languages"].items())
        total_bpb, total_bytes = pooled_bpb(res)
        metrics: dict[str, float] = {"bpb": total_bpb}
        metrics.update({f"bpb_{k}": r["bpb"] for k, r in langs})
        metrics.update({f"bpb:{n}": r["bpb"] for n, r in res["sources"].items()})
        metrics.update({f"unigram_{k}": r["unigram_bpb"] for k, r in langs})
        metrics.update({f"unigram:{n}": r["unigram_bpb"] for n, r in res["sources"].items()})
        metrics["bytes"] = total_bytes
        metrics["files"] = len(files)
        metrics["chance"] = unigram_bpb([t for s in sets for t in s.texts])
        return metrics

    return Task("bpb", "mixed", "bpb", None, load, run, f"bits per byte on {path}")


# ---------------------------------------------------------------------------------------------
# multiple choice and generation


def _mc_run(lm: ModelLM, examples: list[Any], opts: RunOptions) -> dict[str, float]:
    from aquila.eval.multiple_choice import score_examples

    return score_examples(lm, examples, opts.num_fewshot, opts.advance)


def _mc_chance(examples: list[Any]) -> float:
    return sum(1 / len(e.choices) for e in examples) / max(1, len(examples))


def _builtin_mc(name: str, lang: str, loader_name: str, description: str) -> Task:
    def load(limit: int | None) -> list[Any]:
        from aquila.eval import builtin

        return getattr(builtin, loader_name)(limit or 500)

    return Task(name, lang, "multiple_choice", 0.25, load, _mc_run, description)


def _humaneval_task(path: str | None) -> Task:
    def load(limit: int | None) -> list[Any]:
        from aquila.eval.readers import read_humaneval

        problems = read_humaneval(path)
        return problems[:limit] if limit else problems

    def run(lm: ModelLM, problems: list[Any], opts: RunOptions) -> dict[str, float]:
        from aquila.eval.generation import run_humaneval

        return run_humaneval(
            lm, problems, opts.max_new_tokens, advance=opts.advance, unsafe_exec=opts.unsafe_exec
        )

    return Task(
        "humaneval",
        "code",
        "generation",
        0.0,
        load,
        run,
        "HumanEval pass@1 (sandboxed)",
        extra={"runs_code": True},
    )


def _gsm8k_task(path: str) -> Task:
    def load(limit: int | None) -> list[Any]:
        from aquila.eval.readers import read_gsm8k

        problems = read_gsm8k(path)
        return problems[:limit] if limit else problems

    def run(lm: ModelLM, problems: list[Any], opts: RunOptions) -> dict[str, float]:
        from aquila.eval.generation import run_gsm8k

        return run_gsm8k(lm, problems, opts.num_fewshot, opts.max_new_tokens, opts.advance)

    return Task(
        "gsm8k", "en", "generation", 0.0, load, run, "GSM8K exact match on the final number"
    )


def _file_mc_task(fmt: str, path: str) -> Task:
    lang = "zh" if fmt in ("ceval", "cmmlu", *CLUE_FORMATS) else "en"
    task = Task(fmt, lang, "multiple_choice", 0.25, lambda limit: [], _mc_run, f"{fmt} from {path}")

    def load(limit: int | None) -> list[Any]:
        from aquila.eval.clue import CLUE_READERS
        from aquila.eval.readers import MC_READERS, read_letter_split

        if fmt in LETTER_FORMATS:
            examples, pool, source = read_letter_split(fmt, path, task.extra.get("fewshot_from"))
            task.extra.update(fewshot_pool=pool, fewshot_source=source)
        else:
            examples = {**MC_READERS, **CLUE_READERS}[fmt](path)
        examples = examples[:limit] if limit else examples
        task.chance = _mc_chance(examples)
        return examples

    def run(lm: ModelLM, examples: list[Any], opts: RunOptions) -> dict[str, float]:
        from aquila.eval.multiple_choice import score_examples

        pool = task.extra.get("fewshot_pool")
        return score_examples(lm, examples, opts.num_fewshot, opts.advance, pool=pool)

    task.load, task.run = load, run
    return task


LETTER_FORMATS = ("mmlu", "ceval", "cmmlu")


def set_fewshot_from(tasks: list[Task], path: str | None) -> None:
    """``--fewshot-from PATH``: the few-shot pool of the run's one MMLU/C-Eval/CMMLU task."""
    if path is None:
        return
    letter = [t for t in tasks if t.kind == "multiple_choice" and "fewshot_from" in t.extra]
    if len(letter) != 1:
        names = ", ".join(t.name for t in letter) or "none"
        raise UserError(
            f"--fewshot-from applies to one mmlu/ceval/cmmlu task, the run has {len(letter)} "
            f"({names}); give each task its dev split beside it (a dev/ directory) instead"
        )
    letter[0].extra["fewshot_from"] = path


BUILTIN = {
    "bpb": lambda: Task(
        "bpb",
        "mixed",
        "bpb",
        None,
        _bpb_load,
        _bpb_run,
        "bits per byte on held-out sample text, per source and per language",
    ),
    "en_next_verse": lambda: _builtin_mc(
        "en_next_verse", "en", "en_next_verse", "pick the true next Bible sentence among 4"
    ),
    "zh_news_cloze": lambda: _builtin_mc(
        "zh_news_cloze", "zh", "zh_news_cloze", "pick the true next People's Daily sentence among 4"
    ),
    "en_word_cloze": lambda: _builtin_mc(
        "en_word_cloze",
        "en",
        "en_word_cloze",
        "pick the word that fills a blank in a Bible sentence among 4 of its length and frequency",
    ),
    "zh_word_cloze": lambda: _builtin_mc(
        "zh_word_cloze",
        "zh",
        "zh_word_cloze",
        "pick the two-character word that fills a blank in a People's Daily sentence among 4",
    ),
    "en_word_order": lambda: _builtin_mc(
        "en_word_order",
        "en",
        "en_word_order",
        "pick the Bible sentence in its true word order among 4 (3 with adjacent words swapped)",
    ),
    "zh_word_order": lambda: _builtin_mc(
        "zh_word_order",
        "zh",
        "zh_word_order",
        "pick the People's Daily sentence in its true word order among 4",
    ),
    "zh_char_order": lambda: _builtin_mc(
        "zh_char_order",
        "zh",
        "zh_char_order",
        "pick the People's Daily sentence among 4 (3 with a two-character word reversed)",
    ),
    "zh_word_shuffle": lambda: _builtin_mc(
        "zh_word_shuffle",
        "zh",
        "zh_word_shuffle",
        "pick the People's Daily sentence among 4 (3 with its words shuffled)",
    ),
    "humaneval": lambda: _humaneval_task(None),
}
FILE_FORMATS = (
    "bpb",
    "mmlu",
    "ceval",
    "cmmlu",
    "hellaswag",
    "arc",
    "mc",
    "tnews",
    "ocnli",
    "bustm",
    "eprstmt",
    "cluewsc",
    "gsm8k",
    "humaneval",
)
CLUE_FORMATS = ("tnews", "ocnli", "bustm", "eprstmt", "cluewsc")


# An explicit task name: letters (any script), digits and ``_ . - /``; no ``:`` (the names
# the registry gives files have one), ``=`` or ``,``.
_NAME = re.compile(r"^[\w./-]+$")
_EXPLICIT = re.compile(r"^([^=:,]+)=(.+)$")


def file_stem(path: str) -> str:
    """``a`` for ``dir/a.jsonl`` or ``a.jsonl.gz``; a directory's own name."""
    p = Path(path.rstrip("/\\") or path)
    name = p.name or str(p)
    for suffix in (".gz", ".jsonl", ".json", ".csv", ".txt"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def get_task(spec: str, option: str = "--tasks") -> Task:
    """A built-in task name, ``FORMAT:PATH`` for a local benchmark file or directory, either
    one as ``NAME=...`` to name it; ``option`` is where the spec came from (for errors)."""
    spec = spec.strip()
    name = None
    m = _EXPLICIT.match(spec)
    if m:
        name, body = m.group(1).strip(), m.group(2).strip()
        if not _NAME.match(name):
            raise UserError(
                f"{option}: task name {name!r} in {spec!r} may hold only letters, digits and "
                "_ . - /"
            )
    else:
        body = spec
    task = _task_of(body, option)
    task.name = name or task.name
    task.spec = spec
    return task


def _task_of(spec: str, option: str) -> Task:
    fmt, sep, path = spec.partition(":")
    if not sep:
        if spec not in BUILTIN:
            raise UserError(
                f"{option}: unknown task {spec!r}; built-in tasks: {', '.join(BUILTIN)}; "
                f"files: FORMAT:PATH with FORMAT one of {', '.join(FILE_FORMATS)}"
            )
        return BUILTIN[spec]()
    if fmt not in FILE_FORMATS:
        raise UserError(
            f"{option}: unknown file format {fmt!r} in {spec!r}; use one of "
            f"{', '.join(FILE_FORMATS)}"
        )
    if not path:
        raise UserError(f"{option}: {spec!r} names no file after the colon")
    if fmt == "bpb":
        task = _bpb_files_task(path)
    elif fmt == "gsm8k":
        task = _gsm8k_task(path)
    elif fmt == "humaneval":
        task = _humaneval_task(path)
    else:
        task = _file_mc_task(fmt, path)
        if fmt in LETTER_FORMATS:
            task.extra["fewshot_from"] = None
    task.name = f"{fmt}:{file_stem(path)}"
    task.path = str(Path(path).absolute())
    return task


def parse_tasks(specs: str | list[str], option: str = "--tasks") -> list[Task]:
    """The tasks of a comma-separated list (or a list of specs), each under a unique name."""
    items = specs.split(",") if isinstance(specs, str) else list(specs)
    tasks = [get_task(s, option) for s in items if s.strip()]
    if not tasks:
        raise UserError(f"{option} is empty")
    seen: dict[str, Task] = {}
    for t in tasks:
        first = seen.get(t.name)
        if first is None:
            seen[t.name] = t
        elif first.spec == t.spec:
            raise UserError(f"{option}: task {t.spec!r} is given twice")
        else:
            raise UserError(
                f"{option}: {first.spec!r} and {t.spec!r} are both named {t.name!r}; name one "
                f"of them, e.g. {t.name.replace(':', '_')}_2={t.spec}"
            )
    return tasks
