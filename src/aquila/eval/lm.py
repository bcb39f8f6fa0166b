"""Scoring text with a model: log-likelihoods of continuations, rolling log-likelihoods, generation.

:class:`ModelLM` is what every task talks to; it hides tokenization, truncation to the context
window, padding and the KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aquila.model.generate import document_start_id
from aquila.model.transformer import AquilaModel
from aquila.tokenizer import Tokenizer


@dataclass
class LogLikelihood:
    logprob: float  # sum over the continuation's tokens, in nats
    greedy: bool  # every continuation token was the argmax
    n_tokens: int


def split_whitespace(context: str, continuation: str) -> tuple[str, str]:
    """Move the context's trailing spaces onto the continuation (BPE attaches spaces to the next word)."""
    stripped = context.rstrip(" ")
    return stripped, context[len(stripped) :] + continuation


class ModelLM:
    """A model and its tokenizer, scored in batches on the model's device."""

    def __init__(self, model: AquilaModel, tokenizer: Tokenizer, batch_size: int = 8):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.max_len = model.cfg.max_seq_len
        self.device = model.embed_tokens.weight.device
        # The token every training document followed (</s> unless an import said otherwise).
        self.start_id = document_start_id(model.cfg, tokenizer)

    # -- tokenization -------------------------------------------------------------------------

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        context, continuation = split_whitespace(context, continuation)
        # An empty context is conditioned on EOS, the token every document follows.
        ctx = self.tokenizer.encode(context) if context else []
        return [self.start_id, *ctx], self.tokenizer.encode(continuation)

    def _truncate(self, ctx: list[int], cont: list[int]) -> tuple[list[int], list[int]]:
        # Keep the continuation whole (if it fits) and as much recent context as fits.
        cont = cont[-self.max_len :]
        ctx = (
            ctx[-(self.max_len + 1 - len(cont)) :]
            if len(ctx) + len(cont) > self.max_len + 1
            else ctx
        )
        return ctx, cont

    # -- log-likelihood -----------------------------------------------------------------------

    @torch.no_grad()
    def loglikelihood(self, requests: list[tuple[str, str]]) -> list[LogLikelihood]:
        """log P(continuation | context) per (context, continuation), in padded batches.

        Requests are sorted by length so that each batch pads little; results keep input order.
        """
        pairs = [self._truncate(*self.encode_pair(c, x)) for c, x in requests]
        return self.score_tokens(pairs)

    @torch.no_grad()
    def score_tokens(self, pairs: list[tuple[list[int], list[int]]]) -> list[LogLikelihood]:
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        out: list[LogLikelihood | None] = [None] * len(pairs)
        for b in range(0, len(order), self.batch_size):
            idx = order[b : b + self.batch_size]
            seqs = [(pairs[i][0] + pairs[i][1])[:-1] for i in idx]
            width = max(len(s) for s in seqs)
            tokens = torch.zeros(len(idx), width, dtype=torch.long)
            for row, s in enumerate(seqs):
                tokens[row, : len(s)] = torch.tensor(s)
            logp = torch.log_softmax(self.model(tokens.to(self.device)).float(), dim=-1)
            for row, i in enumerate(idx):
                ctx, cont = pairs[i]
                start = len(ctx) - 1
                out[i] = _score(logp[row, start : start + len(cont)], cont)
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def loglikelihood_shared(self, context: str, continuations: list[str]) -> list[LogLikelihood]:
        """Like :meth:`loglikelihood` for one context and several continuations.

        The context is run once into the KV cache, which is then copied for each continuation,
        so a long (few-shot) context costs one forward instead of one per choice. Whitespace is
        moved as in :meth:`encode_pair`, so the scores are the same as the batched path's.
        """
        encoded = [self.encode_pair(context, c) for c in continuations]
        ctx = encoded[0][0]
        if (
            any(e[0] != ctx for e in encoded)
            or len(ctx) + max(len(e[1]) for e in encoded) > self.max_len + 1
        ):
            return self.loglikelihood([(context, c) for c in continuations])
        conts = [e[1] for e in encoded]
        n, width = len(conts), max(len(c) for c in conts)
        cache = self.model.new_cache(1, max_len=len(ctx) - 1 + width)
        last = self.model(torch.tensor([ctx], device=self.device), cache)[0, -1].float()
        # Every continuation starts from the same cached context: expand the batch dimension.
        cache.k = [k.expand(n, -1, -1, -1).clone() for k in cache.k]
        cache.v = [v.expand(n, -1, -1, -1).clone() for v in cache.v]
        tokens = torch.zeros(n, max(width - 1, 1), dtype=torch.long)
        for row, c in enumerate(conts):
            tokens[row, : len(c) - 1] = torch.tensor(c[:-1], dtype=torch.long)
        if width > 1:
            rest = self.model(tokens.to(self.device), cache).float()
        out = []
        for row, c in enumerate(conts):
            logits = last[None] if width == 1 else torch.cat([last[None], rest[row, : len(c) - 1]])
            out.append(_score(torch.log_softmax(logits, dim=-1), c))
        return out

    @torch.no_grad()
    def loglikelihood_rolling(self, texts: list[str]) -> list[float]:
        """log P(text) of whole texts, cut into windows of the context length after an EOS."""
        out = []
        for text in texts:
            ids = [self.start_id, *self.tokenizer.encode(text)]
            pairs = [
                (ids[s - 1 : s], ids[s : s + self.max_len])
                for s in range(1, len(ids), self.max_len)
            ]
            out.append(sum(r.logprob for r in self.score_tokens(pairs)))
        return out

    # -- generation ---------------------------------------------------------------------------

    @torch.no_grad()
    def generate_until(self, prompt: str, until: list[str], max_new_tokens: int = 256) -> str:
        """Greedy continuation of ``prompt``, cut before the first stop string (or EOS)."""
        from aquila.model.generate import generate

        ids = [self.start_id, *self.tokenizer.encode(prompt)]
        ids = ids[-max(1, self.max_len - max_new_tokens) :]
        new: list[int] = []
        text = ""
        for token in generate(
            self.model, ids, max_new_tokens, greedy=True, eos_id=self.tokenizer.eos_id
        ):
            if token == self.tokenizer.eos_id:
                break
            new.append(token)
            text = self.tokenizer.decode(new)
            if any(s in text for s in until):
                break
        for s in until:
            if s in text:
                text = text[: text.index(s)]
        return text


def _score(logp: torch.Tensor, cont: list[int]) -> LogLikelihood:
    target = torch.tensor(cont, device=logp.device)
    token_logp = logp.gather(-1, target[:, None])[:, 0]
    greedy = bool((logp.argmax(-1) == target).all())
    return LogLikelihood(float(token_logp.sum()), greedy, len(cont))
