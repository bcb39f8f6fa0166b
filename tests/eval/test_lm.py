"""ModelLM: batched and cached scoring agree with a direct computation of the loss."""

from __future__ import annotations

import math

import torch

from aquila.eval.lm import ModelLM, split_whitespace

PAIRS = [
    ("In the beginning God created", " the heaven and the earth."),
    ("And God said, Let there be light:", " and there was light."),
    ("中华人民共和国", "成立了"),
    ("", "Blessed are the meek"),
    (
        "And the evening and the morning were the first day. And God said, Let there be a firmament",
        " in the midst of the waters",
    ),
]


@torch.no_grad()
def _direct(lm: ModelLM, context: str, continuation: str) -> float:
    ctx, cont = lm.encode_pair(context, continuation)
    ids = torch.tensor([ctx + cont])
    losses = lm.model.token_losses(ids[:, :-1], ids[:, 1:])
    return -float(losses[0, len(ctx) - 1 :].sum())


def test_split_whitespace_moves_trailing_space():
    assert split_whitespace("Answer: ", "B") == ("Answer:", " B")
    assert split_whitespace("Answer:", " B") == ("Answer:", " B")


def test_loglikelihood_matches_token_losses(eval_lm):
    got = eval_lm.loglikelihood(PAIRS)
    for (c, x), r in zip(PAIRS, got):
        assert math.isclose(r.logprob, _direct(eval_lm, c, x), rel_tol=1e-4, abs_tol=1e-4)
        assert r.logprob < 0 and r.n_tokens == len(eval_lm.encode_pair(c, x)[1])


def test_batch_size_does_not_change_scores(eval_model, tiny_tokenizer):
    a = ModelLM(eval_model, tiny_tokenizer, batch_size=1).loglikelihood(PAIRS)
    b = ModelLM(eval_model, tiny_tokenizer, batch_size=5).loglikelihood(PAIRS)
    for x, y in zip(a, b):
        assert math.isclose(x.logprob, y.logprob, rel_tol=1e-4, abs_tol=1e-4)


def test_shared_prefix_cache_matches_batched(eval_lm):
    context = (
        "And God saw the light, that it was good: and God divided the light from the darkness."
    )
    choices = [
        " And God called the light Day",
        " 人民日报",
        " x",
        " and the darkness he called Night.",
    ]
    cached = eval_lm.loglikelihood_shared(context, choices)
    batched = eval_lm.loglikelihood([(context, c) for c in choices])
    for x, y in zip(cached, batched):
        assert math.isclose(x.logprob, y.logprob, rel_tol=1e-4, abs_tol=1e-4)
        assert x.greedy == y.greedy


def test_truncation_keeps_the_continuation(eval_lm):
    long_context = "And the LORD spake unto Moses, saying, " * 40
    (r,) = eval_lm.loglikelihood([(long_context, " Speak unto the children of Israel")])
    assert math.isfinite(r.logprob) and r.n_tokens > 3


def test_rolling_loglikelihood_sums_windows(eval_lm):
    text = "In the beginning God created the heaven and the earth. " * 30
    (total,) = eval_lm.loglikelihood_rolling([text])
    n_tokens = len(eval_lm.tokenizer.encode(text))
    assert n_tokens > eval_lm.max_len  # more than one window
    # A random model is near-uniform over 512 tokens: about log(512) nats per token.
    assert -total / n_tokens > 0.5 * math.log(512)


def test_generate_until_stops_at_stop_string(eval_lm):
    free = eval_lm.generate_until("In the beginning", [], max_new_tokens=12)
    assert free
    stop = free[len(free) // 2 : len(free) // 2 + 1]
    cut = eval_lm.generate_until("In the beginning", [stop], max_new_tokens=12)
    assert stop not in cut and free.startswith(cut)
