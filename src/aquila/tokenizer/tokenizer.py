"""A thin wrapper over a Hugging Face ``tokenizers`` byte-level BPE with Aquila2's special tokens."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from aquila.errors import UserError

# Appended after the BPE vocabulary, in this order, as Aquila2 does: with 100,000 BPE tokens,
# [CLS] is id 100006 (BOS) and </s> is id 100007 (EOS, the document separator).
SPECIAL_TOKENS = [
    "<|startofpiece|>",
    "<|endofpiece|>",
    "<|LDWANG|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "[CLS]",
    "</s>",
]
BOS_TOKEN = "[CLS]"
EOS_TOKEN = "</s>"
TOKENIZER_FILE = "tokenizer.json"


class Tokenizer:
    """Encode and decode text; ``decode(encode(s)) == s`` for every valid Unicode string."""

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        # Raw text is text: a "</s>" or "[MASK]" typed inside a document must not become a
        # document boundary or a mask id. Special ids are only ever inserted by code (e.g. the
        # EOS between documents). This runtime flag is not saved in tokenizer.json, so
        # transformers keeps its usual behaviour of matching special tokens in input text.
        self.hf.encode_special_tokens = True
        self.eos_id = self._required_id(EOS_TOKEN)
        self.bos_id = self._required_id(BOS_TOKEN)

    def _required_id(self, token: str) -> int:
        idx = self.hf.token_to_id(token)
        if idx is None:
            raise UserError(f"tokenizer has no {token!r} special token")
        return idx

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def hash(self) -> str:
        """A short content hash: token shards record it so a mismatched tokenizer is caught."""
        return hashlib.sha256(self.hf.to_str().encode()).hexdigest()[:16]

    @staticmethod
    def _check_text(text: str) -> None:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise UserError(
                f"text is not valid Unicode: lone surrogate {text[exc.start]!r} at offset {exc.start}"
            ) from None

    def encode(self, text: str) -> list[int]:
        self._check_text(text)
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Parallel encoding in the library's Rust thread pool."""
        for t in texts:
            self._check_text(t)
        return [e.ids for e in self.hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def save(self, directory: str | Path) -> Path:
        """Write ``tokenizer.json`` plus the config files ``transformers`` reads."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        self.hf.save(str(d / TOKENIZER_FILE))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS_TOKEN,
            "eos_token": EOS_TOKEN,
            "unk_token": None,
            "pad_token": EOS_TOKEN,
            "add_bos_token": False,
            "add_eos_token": False,
            "clean_up_tokenization_spaces": False,
            "model_max_length": 1_000_000,
        }
        (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN}
        (d / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Tokenizer:
        d = Path(directory)
        path = d / TOKENIZER_FILE if d.is_dir() else d
        if not path.is_file():
            raise UserError(f"no tokenizer at {path}: expected a directory with {TOKENIZER_FILE}")
        try:
            return cls(HFTokenizer.from_file(str(path)))
        except Exception as exc:  # the Rust side raises a plain Exception for a corrupt file
            raise UserError(f"cannot read tokenizer {path}: {exc}") from None


def train_bpe(
    texts: Iterable[str] | Iterator[str],
    vocab_size: int,
    min_frequency: int = 2,
    show_progress: bool = False,
) -> Tokenizer:
    """Train a GPT-2 style byte-level BPE of ``vocab_size`` merges+bytes, then append the specials.

    The returned vocabulary has ``vocab_size + len(SPECIAL_TOKENS)`` entries (100,008 for 100k).
    """
    if vocab_size < 256 + 1:
        raise UserError(
            f"--vocab-size {vocab_size} is too small: byte-level BPE needs at least 257 "
            f"(256 bytes + 1 merge); {len(SPECIAL_TOKENS)} special tokens are added on top"
        )
    tok = HFTokenizer(models.BPE())
    # No normalizer: byte-level BPE must see the exact bytes to stay lossless.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_special_tokens(SPECIAL_TOKENS)
    return Tokenizer(tok)
