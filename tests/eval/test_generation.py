"""GSM8K answer extraction and exact match (HumanEval execution: test_sandbox.py)."""

from __future__ import annotations

import pytest

from aquila.eval.generation import extract_answer, run_gsm8k


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
