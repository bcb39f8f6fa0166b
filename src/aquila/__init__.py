"""aquila: pretrain bilingual Aquila2-style language models."""

__version__ = "0.1.0"
