"""Generation tasks: GSM8K-style exact match on the final number, HumanEval pass@1."""

from __future__ import annotations

import re
from collections.abc import Callable

from aquila.eval.lm import ModelLM
from aquila.eval.sandbox import SandboxLimits, humaneval_program, require_jail, run_program

_NUMBER = re.compile(r"-?[\d,]*\.?\d+")
GSM8K_STOP = ["\n\n", "Question:"]
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]


def extract_answer(text: str) -> str | None:
    """The answer of a GSM8K-style solution: after ``####`` if present, else the last number."""
    if "####" in text:
        text = text.split("####", 1)[1]
        m = _NUMBER.search(text)
    else:
        found = _NUMBER.findall(text)
        m = None
        if found:
            return _normalise(found[-1])
    return _normalise(m.group(0)) if m else None


def _normalise(number: str) -> str:
    number = number.replace(",", "").rstrip(".")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number or "0"


def gsm8k_prompt(question: str, shots: list[dict]) -> str:
    prefix = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    return f"{prefix}Question: {question}\nAnswer:"


def run_gsm8k(
    lm: ModelLM,
    problems: list[dict],
    num_fewshot: int = 0,
    max_new_tokens: int = 256,
    advance: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Exact match of the extracted final number; shots are the first ``num_fewshot`` others."""
    correct = 0
    for i, p in enumerate(problems):
        shots = [q for j, q in enumerate(problems) if j != i][:num_fewshot]
        out = lm.generate_until(gsm8k_prompt(p["question"], shots), GSM8K_STOP, max_new_tokens)
        gold = extract_answer(p["answer"])
        correct += int(gold is not None and extract_answer(out) == gold)
        if advance:
            advance(1)
    return {"exact_match": correct / max(1, len(problems)), "n": len(problems)}


def run_humaneval(
    lm: ModelLM,
    problems: list[dict],
    max_new_tokens: int = 256,
    limits: SandboxLimits | None = None,
    advance: Callable[[int], None] | None = None,
    complete: Callable[[dict], str] | None = None,
    unsafe_exec: bool = False,
) -> dict[str, float]:
    """pass@1 with greedy completions, each checked in the sandbox (``aquila.eval.sandbox``).

    ``complete`` replaces the model's completion (used to check the harness itself). Where no
    sandbox can be made this refuses before generating anything, unless ``unsafe_exec``.
    """
    require_jail(unsafe_exec)
    passed = 0
    for p in problems:
        completion = (
            complete(p)
            if complete
            else lm.generate_until(p["prompt"], HUMANEVAL_STOP, max_new_tokens)
        )
        program = humaneval_program(p, completion)
        passed += int(run_program(program, limits, unsafe_exec=unsafe_exec).passed)
        if advance:
            advance(1)
    return {"pass@1": passed / max(1, len(problems)), "n": len(problems)}
