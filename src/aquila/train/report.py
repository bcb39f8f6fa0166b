"""The end-of-run report's samples: two continuations in each language, greedy and a seeded
nucleus sample (its held-out bits per byte come from :mod:`aquila.eval.heldout`).

A small model's greedy continuation falls into a loop within a few words (the argmax of a
repeated context is the repetition), so the report also shows what sampling gives: temperature
0.8 with top-p 0.95, a common default, seeded so that the same checkpoint reports the same text.
"""

from __future__ import annotations

import torch

from aquila.model.generate import document_start_id, generate
from aquila.model.transformer import AquilaModel
from aquila.tokenizer import Tokenizer

SAMPLE_PROMPTS = {"en": "And God said,", "zh": "中国人民"}
NUCLEUS = {"temperature": 0.8, "top_p": 0.95, "seed": 0}


@torch.no_grad()
def report_samples(
    model: AquilaModel, tokenizer: Tokenizer, max_new_tokens: int = 48, nucleus: bool = False
) -> dict[str, str]:
    """A continuation of each language's prompt, which follows the start-of-document token as
    in ``aquila generate``: greedy, or with ``nucleus`` the seeded ``NUCLEUS`` sample."""
    sampling = {"greedy": True} if not nucleus else NUCLEUS
    start = document_start_id(model.cfg, tokenizer)
    out = {}
    for lang, prompt in SAMPLE_PROMPTS.items():
        ids = [
            t
            for t in generate(
                model,
                [start, *tokenizer.encode(prompt)],
                max_new_tokens,
                eos_id=tokenizer.eos_id,
                **sampling,
            )
            if t != tokenizer.eos_id
        ]
        out[lang] = prompt + tokenizer.decode(ids)
    return out


def greedy_samples(
    model: AquilaModel, tokenizer: Tokenizer, max_new_tokens: int = 48
) -> dict[str, str]:
    return report_samples(model, tokenizer, max_new_tokens)
