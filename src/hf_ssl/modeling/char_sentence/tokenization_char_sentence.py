"""Offline character tokenizer for the character-level sentence encoder.

The shared offline tokenizer (`hf_ssl.training.text`) with a vocabulary of exactly the byte alphabet + 3 special
tokens has no merges left to learn, i.e. it is a character tokenizer: every (ASCII) character is one token, any
string is encodable (non-ASCII characters become their UTF-8 bytes), lower-cased, with `<|startoftext|>` /
`<|endoftext|>` around the caption and `<|pad|>` padding. Saved / loaded as a stock `PreTrainedTokenizerFast`."""

from __future__ import annotations

from typing import Optional

CHAR_VOCAB_SIZE = 259  # 256 byte-level characters + start / end / pad


def build_char_tokenizer(context_length: int = 160, save_directory: Optional[str] = None):
    """The character tokenizer (built offline, cached), optionally saved with `save_pretrained`."""
    from ...training.text import build_tokenizer

    tokenizer = build_tokenizer(save_directory=save_directory, vocab_size=CHAR_VOCAB_SIZE,
                                context_length=context_length)
    if len(tokenizer) != CHAR_VOCAB_SIZE:
        raise RuntimeError(f"character tokenizer has {len(tokenizer)} tokens, expected {CHAR_VOCAB_SIZE}")
    return tokenizer
