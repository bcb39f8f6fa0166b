"""Multiple-choice scoring by log-likelihood: acc (sum of log-probs), acc_norm (per byte) and
acc_pmi (log P(choice | context) - log P(choice): how much the context raised the choice, which
removes the bias toward choices that are likely on their own).

Few-shot prompts put ``k`` solved examples before the question, each as its context followed by
its gold choice. From a separate pool (a benchmark's dev split) they are the first ``k`` of the
question's own subject (as MMLU's harness does), else drawn with a fixed seed from the whole
pool; without a pool they are drawn with a fixed seed from the other examples of the task.
Never the question itself: no shot has the question's own prompt.

Batching: zero-shot, every (context, choice) pair of a chunk of examples goes through the model
in padded batches. Once the shared context is long compared to the choices (few-shot prompts),
it is run once per example into the KV cache and the cache is copied across the choices
(:meth:`ModelLM.loglikelihood_shared`): that saves (choices - 1) x context tokens of compute.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from aquila.eval.lm import ModelLM
from aquila.eval.readers import MCExample

FEWSHOT_SEP = "\n\n"
# Use the KV cache for an example whose context has at least this many times the tokens of
# its longest choice: below that, one padded batch over all pairs is cheaper in Python overhead.
SHARED_PREFIX_RATIO = 4


def fewshot_shots(
    examples: list[MCExample],
    index: int,
    k: int,
    pool: list[MCExample] | None = None,
    seed: int = 1234,
) -> list[MCExample]:
    """The ``k`` solved examples put before ``examples[index]`` (see the module doc)."""
    ex = examples[index]
    if k <= 0:
        return []
    if pool is not None:
        candidates = [s for s in pool if s.context != ex.context]
        same = [s for s in candidates if ex.group and s.group == ex.group]
        if same:
            return same[:k]
        rng = random.Random(seed + index)
        return rng.sample(candidates, min(k, len(candidates)))
    rng = random.Random(seed + index)
    others = [i for i, s in enumerate(examples) if i != index and s.context != ex.context]
    return [examples[i] for i in rng.sample(others, min(k, len(others)))]


def fewshot_context(
    examples: list[MCExample],
    index: int,
    k: int,
    seed: int = 1234,
    pool: list[MCExample] | None = None,
) -> str:
    """The prompt of ``examples[index]`` preceded by ``k`` solved examples."""
    ex = examples[index]
    shots = fewshot_shots(examples, index, k, pool, seed)
    if not shots:
        return ex.context
    prefix = FEWSHOT_SEP.join(s.context + s.choices[s.gold] for s in shots)
    return prefix + FEWSHOT_SEP + ex.context


def score_examples(
    lm: ModelLM,
    examples: list[MCExample],
    num_fewshot: int = 0,
    advance: Callable[[int], None] | None = None,
    pool: list[MCExample] | None = None,
) -> dict[str, float]:
    """acc, acc_norm and the count of examples; ``advance(n)`` reports progress; few-shot
    examples come from ``pool`` when given (a dev split)."""
    correct = correct_norm = correct_pmi = 0
    chunk = max(1, lm.batch_size)
    for start in range(0, len(examples), chunk):
        idx = list(range(start, min(start + chunk, len(examples))))
        contexts = {i: fewshot_context(examples, i, num_fewshot, pool=pool) for i in idx}
        shared, batched = [], []
        for i in idx:
            ctx_len = len(lm.tokenizer.encode(contexts[i]))
            cont_len = max(len(lm.tokenizer.encode(c)) for c in examples[i].choices)
            (shared if ctx_len >= SHARED_PREFIX_RATIO * cont_len else batched).append(i)
        scores = {i: lm.loglikelihood_shared(contexts[i], examples[i].choices) for i in shared}
        pairs = [(contexts[i], c) for i in batched for c in examples[i].choices]
        flat = lm.loglikelihood(pairs)
        pos = 0
        for i in batched:
            n = len(examples[i].choices)
            scores[i], pos = flat[pos : pos + n], pos + n
        # Each choice once more with no context: its prior log-probability. A context-free
        # task (the sentence orders) has its priors scored already.
        with_context = [i for i in idx if contexts[i]]
        flat = lm.loglikelihood([("", c) for i in with_context for c in examples[i].choices])
        priors, pos = {i: scores[i] for i in idx if not contexts[i]}, 0
        for i in with_context:
            n = len(examples[i].choices)
            priors[i], pos = flat[pos : pos + n], pos + n
        for i in idx:
            ex = examples[i]
            logps = [r.logprob for r in scores[i]]
            pmi = [lp - p.logprob for lp, p in zip(logps, priors[i])]
            correct_pmi += int(max(range(len(pmi)), key=pmi.__getitem__) == ex.gold)
            norm = [lp / max(1, len(c.encode("utf-8"))) for lp, c in zip(logps, ex.choices)]
            correct += int(max(range(len(logps)), key=logps.__getitem__) == ex.gold)
            correct_norm += int(max(range(len(norm)), key=norm.__getitem__) == ex.gold)
        if advance:
            advance(len(idx))
    n = max(1, len(examples))
    return {
        "acc": correct / n,
        "acc_norm": correct_norm / n,
        "acc_pmi": correct_pmi / n,
        "n": len(examples),
    }
