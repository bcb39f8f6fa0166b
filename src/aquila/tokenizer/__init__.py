"""The bilingual byte-level BPE tokenizer (Hugging Face `tokenizers`)."""

from aquila.tokenizer.tokenizer import SPECIAL_TOKENS, Tokenizer, train_bpe

__all__ = ["SPECIAL_TOKENS", "Tokenizer", "train_bpe"]
