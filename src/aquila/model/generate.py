"""Autoregressive decoding with the KV cache: greedy, temperature, top-k and top-p sampling."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import torch

from aquila.errors import UserError
from aquila.model.transformer import AquilaModel


def _check(
    temperature: float, top_k: int | None, top_p: float | None, max_new: int, penalty: float = 1.0
) -> None:
    if not penalty > 0:
        raise UserError(f"--repetition-penalty must be > 0, got {penalty} (1.0: none)")
    if max_new < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {max_new}")
    if not temperature > 0:
        raise UserError(f"--temperature must be > 0, got {temperature} (use --greedy for argmax)")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise UserError(f"--top-p must be in (0, 1], got {top_p}")


def document_start_id(cfg, tokenizer) -> int:
    """The token put before a prompt: the one every training document followed. Aquila's is
    ``</s>`` (the EOS between documents); an imported checkpoint may name its own BOS in
    ``cfg.extra["doc_start_token"]``."""
    token = cfg.extra.get("doc_start_token")
    if token is None:
        return tokenizer.eos_id
    idx = tokenizer.hf.token_to_id(token)
    if idx is None:
        raise UserError(f"the model starts documents with {token!r}, which its tokenizer lacks")
    return idx


def filter_logits(
    logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None
) -> torch.Tensor:
    """Set the logits outside the top-k / the top-p nucleus to -inf (last dim is the vocab)."""
    if top_k is not None and top_k < logits.shape[-1]:
        values, idx = torch.topk(logits, top_k, dim=-1)
        # Scatter rather than threshold: exactly k survive even when logits tie.
        logits = torch.full_like(logits, float("-inf")).scatter(-1, idx, values)
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the mass before it already reaches top_p; the top token always stays.
        drop = (probs.cumsum(-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.empty_like(logits).scatter(-1, order, sorted_logits)
    return logits


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al., 2019; transformers' ``repetition_penalty``):
    the logit of every token already in the context is divided by ``penalty`` where positive
    and multiplied where negative, so a seen token always loses probability for penalty > 1."""
    if penalty == 1.0 or seen.numel() == 0:
        return logits
    picked = logits.gather(-1, seen)
    picked = torch.where(picked > 0, picked / penalty, picked * penalty)
    return logits.scatter(-1, seen, picked)


def sample_next(
    logits: torch.Tensor,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> int:
    """Pick the next token from a 1-D logits vector."""
    if greedy:
        return int(torch.argmax(logits))
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def generate(
    model: AquilaModel,
    prompt_ids: list[int],
    max_new_tokens: int,
    *,
    greedy: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | None = None,
    seed: int | None = None,
    repetition_penalty: float = 1.0,
) -> Iterator[int]:
    """Yield up to ``max_new_tokens`` new token ids, one per step, as they are decoded.

    The prompt is prefilled into the KV cache in one forward pass, then each step feeds only the
    newest token. Stops after ``eos_id`` (which is yielded) or when prompt + output fill the
    model's context. With ``seed`` the sampled sequence is reproducible. ``repetition_penalty``
    > 1 discourages every token already in the prompt or the output (greedy or sampled).
    Arguments are checked here, before the first token is asked for.
    """
    _check(temperature, top_k, top_p, max_new_tokens, repetition_penalty)
    if not prompt_ids:
        raise UserError("the prompt is empty: generation needs at least one token")
    ctx = model.cfg.max_seq_len
    if len(prompt_ids) > ctx:
        raise UserError(f"the prompt has {len(prompt_ids)} tokens, more than the context of {ctx}")
    # The last new token is never fed back, so the output may end exactly at the context length.
    n_new = min(max_new_tokens, ctx - len(prompt_ids))
    sampling = {"greedy": greedy, "temperature": temperature, "top_k": top_k, "top_p": top_p}
    return _decode(model, list(prompt_ids), n_new, sampling, eos_id, seed, repetition_penalty)


@torch.no_grad()
def _decode(
    model: AquilaModel,
    prompt_ids: list[int],
    n_new: int,
    sampling: dict,
    eos_id: int | None,
    seed: int | None,
    penalty: float = 1.0,
) -> Iterator[int]:
    if n_new == 0:
        return
    device = model.embed_tokens.weight.device
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
    cache = model.new_cache(1, max_len=len(prompt_ids) + n_new - 1)
    tokens = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    logits = model(tokens, cache)[0, -1]
    seen = torch.unique(tokens[0])
    for i in range(n_new):
        logits = penalize_repeats(logits, seen, penalty)
        token = sample_next(logits, generator=generator, **sampling)
        if penalty != 1.0:
            seen = torch.unique(torch.cat([seen, seen.new_tensor([token])]))
        yield token
        if token == eos_id or i == n_new - 1:
            return
        logits = model(torch.tensor([[token]], device=device), cache)[0, -1]


def decode_stream(
    decode: Callable[[list[int]], str], ids: Iterable[int], max_pending: int = 8
) -> Iterator[str]:
    """Turn a stream of token ids into a stream of text pieces without split characters.

    Byte-level BPE can cut a multi-byte UTF-8 character across tokens; the partial bytes decode
    to U+FFFD. Tokens are held back until their text ends on a complete character (or, for bytes
    that never complete, until ``max_pending`` tokens wait), so the pieces join to the full text.
    """
    pending: list[int] = []
    for token in ids:
        pending.append(token)
        text = decode(pending)
        if not text.endswith("\ufffd") or len(pending) >= max_pending:
            pending = []
            if text:
                yield text
    if pending:
        yield decode(pending)
