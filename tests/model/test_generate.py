"""Decoding: the KV-cache path equals recomputation, sampling is seeded, streams are clean."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from aquila.cli import main
from aquila.errors import UserError
from aquila.model.generate import decode_stream, filter_logits, generate, sample_next

PROMPT = [5, 77, 300, 12, 9, 401, 250]


def _uncached_greedy(model, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt) :]


def test_cached_greedy_equals_recomputation(make_model) -> None:
    model = make_model(n_heads=8, n_kv_heads=2, rope_scaling=2.0)
    cached = list(generate(model, PROMPT, 40, greedy=True))
    assert len(set(cached)) > 4, cached
    assert cached == _uncached_greedy(model, PROMPT, 40)


def test_seeded_sampling_is_reproducible(tiny_model) -> None:
    kwargs = {"temperature": 0.9, "top_k": 50, "top_p": 0.95}
    a = list(generate(tiny_model, PROMPT, 30, seed=7, **kwargs))
    b = list(generate(tiny_model, PROMPT, 30, seed=7, **kwargs))
    c = list(generate(tiny_model, PROMPT, 30, seed=8, **kwargs))
    assert a == b
    assert a != c


def test_top_k_one_and_tiny_top_p_are_greedy(tiny_model) -> None:
    greedy = list(generate(tiny_model, PROMPT, 25, greedy=True))
    assert list(generate(tiny_model, PROMPT, 25, top_k=1, temperature=5.0, seed=1)) == greedy
    assert list(generate(tiny_model, PROMPT, 25, top_p=1e-6, temperature=5.0, seed=2)) == greedy


def test_filter_logits_keeps_the_right_tokens() -> None:
    logits = torch.tensor([2.0, 0.0, 1.0, -1.0, 1.0])
    kept = filter_logits(logits, top_k=3).isfinite()
    assert kept.sum() == 3 and kept[0] and kept[2] and kept[4]
    # Probabilities 0.5, 0.3, 0.2: top-p 0.6 keeps the first two, 0.5 only the first.
    logits = torch.tensor([0.5, 0.2, 0.3]).log()
    assert filter_logits(logits, top_p=0.6).isfinite().tolist() == [True, False, True]
    assert filter_logits(logits, top_p=0.5).isfinite().tolist() == [True, False, False]
    # Sampling never picks a filtered token.
    g = torch.Generator().manual_seed(0)
    picks = {sample_next(logits, top_p=0.6, generator=g) for _ in range(200)}
    assert picks == {0, 2}


def test_stops_at_eos_and_at_context(tiny_model) -> None:
    first = next(iter(generate(tiny_model, PROMPT, 10, greedy=True)))
    assert list(generate(tiny_model, PROMPT, 10, greedy=True, eos_id=first)) == [first]
    ctx = tiny_model.cfg.max_seq_len
    prompt = (PROMPT * 20)[: ctx - 3]
    out = list(generate(tiny_model, prompt, 50, greedy=True))
    assert len(out) == 3
    assert out == _uncached_greedy(tiny_model, prompt, 3)
    assert list(generate(tiny_model, [1] * ctx, 5, greedy=True)) == []
    with pytest.raises(UserError, match="more than the context"):
        list(generate(tiny_model, [1] * (ctx + 1), 5, greedy=True))


def test_argument_errors(tiny_model) -> None:
    for kwargs, match in [
        ({"temperature": 0.0}, "--temperature"),
        ({"top_k": 0}, "--top-k"),
        ({"top_p": 1.5}, "--top-p"),
    ]:
        with pytest.raises(UserError, match=match):
            generate(tiny_model, PROMPT, 3, **kwargs)  # raised at the call, not on first next()
    with pytest.raises(UserError, match="empty"):
        list(generate(tiny_model, [], 3))


def test_decode_stream_never_splits_a_character(tiny_tokenizer) -> None:
    text = "中华人民共和国 and the 经济 growth of 1998年。"
    ids = tiny_tokenizer.encode(text)
    # The tiny vocabulary splits Chinese characters across byte tokens.
    assert any("\ufffd" in tiny_tokenizer.decode([i]) for i in ids)
    pieces = list(decode_stream(tiny_tokenizer.decode, ids))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 5  # it streams, not one piece at the end


def test_cli_generate_streams_and_reports(
    memorised_model_dir: Path, memorised_text: str, tiny_tokenizer, capsys
) -> None:
    MEMORISED = memorised_text
    prompt = "In the beginning"
    n = len(tiny_tokenizer.encode(prompt))
    assert tiny_tokenizer.encode(MEMORISED)[:n] == tiny_tokenizer.encode(prompt)
    rest = MEMORISED[len(prompt) :]
    d = str(memorised_model_dir)
    assert (
        main(["generate", d, "--prompt", prompt, "--greedy", "--max-new-tokens", "100", "--json"])
        == 0
    )
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["prompt"] == prompt
    assert report["text"] == rest
    assert report["stopped_at_eos"] and report["token_ids"][-1] == tiny_tokenizer.eos_id
    assert report["tokens"] == len(report["token_ids"]) and report["tokens_per_s"] > 0

    assert main(["generate", d, "--prompt", prompt, "--greedy", "--max-new-tokens", "100"]) == 0
    assert capsys.readouterr().out == MEMORISED + "\n"
    # --max-new-tokens bounds the output.
    assert (
        main(["generate", d, "--prompt", prompt, "--greedy", "--max-new-tokens", "4", "--json"])
        == 0
    )
    short = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert short["tokens"] == 4 and rest.startswith(short["text"])


def test_cli_generate_sampling_is_seeded(model_dir: Path, capsys) -> None:
    args = [
        "generate",
        str(model_dir),
        "--prompt",
        "天",
        "--top-k",
        "20",
        "--seed",
        "3",
        "--max-new-tokens",
        "15",
        "--json",
    ]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(args) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["token_ids"] == second["token_ids"] and first["text"] == second["text"]
    assert first["tokens"] == len(first["token_ids"]) > 0


def test_cli_generate_errors(model_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["generate", str(model_dir), "--prompt", "x", "--greedy", "--top-k", "5"]) == 2
    assert "--greedy cannot be combined with --top-k" in capsys.readouterr().err
    assert main(["generate", str(tmp_path / "missing"), "--prompt", "x"]) == 2
    assert "missing" in capsys.readouterr().err


def test_repetition_penalty_follows_transformers() -> None:
    """Same logits as transformers' RepetitionPenaltyLogitsProcessor, on signed logits."""
    transformers = pytest.importorskip("transformers")
    from aquila.model.generate import penalize_repeats

    logits = torch.tensor([2.0, -1.0, 0.5, -3.0, 4.0])
    seen = torch.tensor([0, 1, 3])
    ours = penalize_repeats(logits, seen, 1.5)
    theirs = transformers.RepetitionPenaltyLogitsProcessor(1.5)(seen[None], logits[None].clone())
    torch.testing.assert_close(ours, theirs[0])
    assert ours[0] == 2.0 / 1.5 and ours[1] == -1.5 and ours[4] == 4.0


def test_repetition_penalty_breaks_a_greedy_loop(make_model) -> None:
    model = make_model()
    plain = list(generate(model, PROMPT, 40, greedy=True))
    penalized = list(generate(model, PROMPT, 40, greedy=True, repetition_penalty=1.3))
    assert penalized != plain
    assert len(set(penalized)) > len(set(plain)), (plain, penalized)
    # Penalty 1.0 is exactly no penalty.
    assert list(generate(model, PROMPT, 40, greedy=True, repetition_penalty=1.0)) == plain
    with pytest.raises(UserError, match="--repetition-penalty"):
        generate(model, PROMPT, 4, repetition_penalty=0.0)


def test_cli_generate_repetition_penalty(model_dir: Path, capsys) -> None:
    args = ["generate", str(model_dir), "--prompt", "天", "--greedy", "--max-new-tokens", "30"]
    assert main([*args, "--json"]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"]
    assert main([*args, "--repetition-penalty", "1.5", "--json"]) == 0
    penalized = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["token_ids"]
    assert penalized != plain
    assert main([*args, "--repetition-penalty", "-1"]) == 2
    assert "--repetition-penalty must be > 0" in capsys.readouterr().err


def test_report_samples_greedy_and_seeded_nucleus(make_model, tiny_tokenizer) -> None:
    from aquila.train.report import SAMPLE_PROMPTS, report_samples

    model = make_model()
    greedy = report_samples(model, tiny_tokenizer, 24)
    nucleus = report_samples(model, tiny_tokenizer, 24, nucleus=True)
    assert nucleus == report_samples(model, tiny_tokenizer, 24, nucleus=True)  # seeded
    for lang, prompt in SAMPLE_PROMPTS.items():
        assert greedy[lang].startswith(prompt) and nucleus[lang].startswith(prompt)
        assert nucleus[lang] != greedy[lang]
        # Like `aquila generate`, the prompt follows the start-of-document token.
        ids = [tiny_tokenizer.eos_id, *tiny_tokenizer.encode(prompt)]
        new = [t for t in generate(model, ids, 24, greedy=True, eos_id=tiny_tokenizer.eos_id)]
        new = [t for t in new if t != tiny_tokenizer.eos_id]
        assert greedy[lang] == prompt + tiny_tokenizer.decode(new)
