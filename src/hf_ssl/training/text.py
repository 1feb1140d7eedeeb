"""Offline text side for vision-language methods: a byte-level BPE tokenizer trained with `tokenizers` on text
generated locally (caption templates x class names), wrapped as a transformers `PreTrainedTokenizerFast`.

Nothing is downloaded. The corpus is deterministic (same tokenizer everywhere for the same arguments), and the
built tokenizer is cached under the hf_ssl cache dir (`HF_SSL_CACHE`, default `~/.cache/hf_ssl`).
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterable, List, Optional, Sequence

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]  # ids 0, 1, 2 (eos != 2: see CLIPTextTransformer pooling)

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
# a subset of the CLIP paper's ImageNet prompt ensemble, adapted to digits
DIGIT_TEMPLATES = [
    "a photo of the digit {}.",
    "a photo of the number {}.",
    "a handwritten {}.",
    "a blurry photo of the digit {}.",
    "a low resolution photo of the number {}.",
    "a drawing of the digit {}.",
    "a black and white photo of a {}.",
    "a pixelated image of the digit {}.",
]
# extra vocabulary so the tokenizer is not limited to digits: CIFAR-10 classes and scikit-image sample images
EXTRA_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
               "astronaut", "camera", "coins", "coffee", "chelsea the cat", "rocket", "moon", "page of text",
               "horse silhouette", "brick wall", "grass", "gravel", "cells", "hubble deep field", "retina", "clock"]
EXTRA_TEMPLATES = ["a photo of a {}.", "a picture of the {}.", "an image of a {}.", "a close-up photo of the {}.",
                   "a bright photo of a {}.", "a dark photo of the {}.", "a cropped photo of a {}.",
                   "a good photo of the {}.", "a bad photo of a {}.", "a photo of a small {}.",
                   "a photo of a large {}.", "a sketch of the {}.", "art of the {}.", "a rendering of a {}."]


def default_corpus() -> List[str]:
    """The built-in training text: every template filled with every name (deterministic order), also the
    digits 0-9 written as numerals."""
    lines = [t.format(n) for t in DIGIT_TEMPLATES for n in DIGIT_NAMES]
    lines += [t.format(str(i)) for t in DIGIT_TEMPLATES for i in range(10)]
    lines += [t.format(n) for t in EXTRA_TEMPLATES for n in EXTRA_NAMES]
    return lines


def train_bpe_tokenizer(corpus: Optional[Iterable[str]] = None, vocab_size: int = 1024, context_length: int = 32,
                        lowercase: bool = True):
    """Train a byte-level BPE tokenizer (GPT-2/CLIP style byte alphabet, so any string is encodable) and wrap it
    as a `PreTrainedTokenizerFast` that adds `<|startoftext|>` / `<|endoftext|>` and pads with `<|pad|>` to
    `context_length`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {256 + len(SPECIAL_TOKENS)} (byte alphabet + special tokens)")
    if context_length < 3:
        raise ValueError(f"context_length must be >= 3, got {context_length}")
    corpus = list(corpus) if corpus is not None else default_corpus()
    tok = Tokenizer(models.BPE())
    norms = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norms)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer=trainer)
    bos, eos = tok.token_to_id(BOS_TOKEN), tok.token_to_id(EOS_TOKEN)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A {EOS_TOKEN}", special_tokens=[(BOS_TOKEN, bos), (EOS_TOKEN, eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                                   pad_token=PAD_TOKEN, model_max_length=context_length)


def build_tokenizer(save_directory: Optional[str] = None, vocab_size: int = 1024, context_length: int = 32,
                    corpus: Optional[Sequence[str]] = None):
    """Build (or load from the cache) the offline tokenizer; with `save_directory` also save it there with
    `save_pretrained` (loadable by `AutoTokenizer.from_pretrained`)."""
    from transformers import PreTrainedTokenizerFast

    from .data import builtin_cache_dir

    corpus = list(corpus) if corpus is not None else default_corpus()
    key = hashlib.sha1(json.dumps([vocab_size, context_length, corpus]).encode()).hexdigest()[:12]
    cache = os.path.join(builtin_cache_dir(), f"tokenizer-bpe-{key}")
    if os.path.exists(os.path.join(cache, ".complete")):
        tokenizer = PreTrainedTokenizerFast.from_pretrained(cache)
    else:
        tokenizer = train_bpe_tokenizer(corpus, vocab_size=vocab_size, context_length=context_length)
        tmp = f"{cache}.tmp-{os.getpid()}"
        tokenizer.save_pretrained(tmp)
        open(os.path.join(tmp, ".complete"), "w").close()
        try:
            os.replace(tmp, cache)
        except OSError:  # another process won the race
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    if save_directory:
        tokenizer.save_pretrained(save_directory)
    return tokenizer


def load_tokenizer(name_or_path: Optional[str] = None, vocab_size: int = 1024, context_length: int = 32):
    """`AutoTokenizer.from_pretrained(name_or_path)` (local path) or, with None, the built-in offline tokenizer."""
    if name_or_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        tokenizer.model_max_length = context_length
        return tokenizer
    return build_tokenizer(vocab_size=vocab_size, context_length=context_length)


__all__ = ["DIGIT_NAMES", "DIGIT_TEMPLATES", "default_corpus", "train_bpe_tokenizer", "build_tokenizer",
           "load_tokenizer"]
