"""GFSLT-VLP data: clip + sentence + masked sentence.

* Sentences: the example's text column when it has one (a real sign-language corpus: the spoken-language
  translation); otherwise one is generated for a labelled clip, describing the object and its motion as measured on
  the sampled frames themselves (intensity-weighted centroid of every frame): `"a three moving up and to the left"`,
  `", then bouncing down"` when the motion reverses. Only the class name comes from the label.
* Masking (official `utils.NoiseInjecting`, default `omit_last` with noise rate 0.15): whole words are replaced by
  the mask token; `omit_last` masks the last ceil(U(0, rate) * n) words, `omit` keeps a random int(n (1 - rate))
  words. Here the words' tokens are replaced one for one (same length as the sentence), so `masked_positions` aligns
  with `input_ids`.
* Tokenizer: the CLIP core's offline byte-level BPE (`training.text.build_tokenizer`) trained on its default corpus
  plus the motion sentences, with an added `<|mask|>` special token (id = its size)."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ...training.data import LABEL_KEYS, register_view_policy
from ...training.video import VideoViewPolicy, eval_clip_transform, sample_frame_indices
from ..clip.views_clip import TEXT_KEYS

MASK_TOKEN = "<|mask|>"
VERTICAL = ("up", "down")
HORIZONTAL = ("to the left", "to the right")


def direction_phrase(dx: float, dy: float, ratio: float = 0.4, min_move: float = 1.0) -> str:
    """Words for a displacement in image coordinates (y grows downwards): a component counts when it is at least
    `ratio` of the larger one and `min_move` px; `"standing still"` when neither does."""
    big = max(abs(dx), abs(dy))
    parts = []
    if abs(dy) >= max(min_move, ratio * big):
        parts.append(VERTICAL[0] if dy < 0 else VERTICAL[1])
    if abs(dx) >= max(min_move, ratio * big):
        parts.append(HORIZONTAL[0] if dx < 0 else HORIZONTAL[1])
    return " and ".join(parts) if parts else "standing still"


def frame_centroids(frames) -> np.ndarray:
    """`[T, 2]` (x, y) intensity-weighted centroids of PIL frames (or a `[T, H, W]` array); the frame centre for a
    blank frame."""
    if isinstance(frames, np.ndarray):
        arr = frames.astype(np.float64)
    else:
        arr = np.stack([np.asarray(f.convert("L"), dtype=np.float64) for f in frames])
    t, h, w = arr.shape
    ys, xs = np.mgrid[0:h, 0:w]
    mass = arr.sum(axis=(1, 2))
    cx = np.where(mass > 0, (arr * xs).sum(axis=(1, 2)) / np.maximum(mass, 1e-9), (w - 1) / 2)
    cy = np.where(mass > 0, (arr * ys).sum(axis=(1, 2)) / np.maximum(mass, 1e-9), (h - 1) / 2)
    return np.stack([cx, cy], axis=1)


def describe_motion(frames) -> str:
    """`"moving <direction>"` from the first quarter of the clip, plus `", then bouncing <direction>"` when the
    last quarter moves against it on some axis (a bounce)."""
    c = frame_centroids(frames)
    t = len(c)
    if t < 2:
        return "standing still"
    q = max(1, t // 4)
    first = c[q] - c[0]
    last = c[-1] - c[-1 - q]
    phrase = direction_phrase(*first)
    words = "standing still" if phrase == "standing still" else f"moving {phrase}"
    reversed_axis = any(first[d] * last[d] < 0 and abs(last[d]) >= 1.0 and abs(first[d]) >= 1.0 for d in range(2))
    if reversed_axis:
        words += f", then bouncing {direction_phrase(*last)}"
    return words


def motion_sentence(name: str, frames) -> str:
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name} {describe_motion(frames)}"


def motion_corpus(class_names: Sequence[str]) -> List[str]:
    """Every sentence the generator can write (for the tokenizer's BPE merges)."""
    dirs = ["up", "down", "to the left", "to the right"] + [f"{v} and {h}" for v in VERTICAL for h in HORIZONTAL]
    out = []
    for n in list(class_names) + ["object"]:
        article = "an" if n[:1].lower() in "aeiou" else "a"
        out.append(f"{article} {n} standing still")
        for d in dirs:
            out.append(f"{article} {n} moving {d}")
            out += [f"{article} {n} moving {d}, then bouncing {d2}" for d2 in dirs]
    return out


def load_gfslt_tokenizer(config):
    """The tokenizer of a GFSLT-VLP config with its `<|mask|>` token: `tokenizer_name_or_path` if given, else the
    CLIP core's offline BPE trained on the default corpus + the motion sentences. Raises if the mask token's id does
    not fit the text vocabulary."""
    from ...training.text import build_tokenizer, default_corpus, load_tokenizer

    if config.tokenizer_name_or_path:
        tokenizer = load_tokenizer(config.tokenizer_name_or_path, context_length=config.context_length)
    else:
        tokenizer = build_tokenizer(vocab_size=config.tokenizer_vocab_size, context_length=config.context_length,
                                    corpus=default_corpus() + motion_corpus(config.class_names))
    if tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    vocab = getattr(config.text_config, "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens with the mask token but text_config.vocab_size is "
                         f"{vocab}; lower tokenizer_vocab_size or raise the vocab size")
    return tokenizer


def masked_word_indices(num_words: int, rate: float, kind: str, rng: np.random.Generator) -> np.ndarray:
    """Indices of the words to mask (official `NoiseInjecting`): `omit_last`: the last ceil(n U(0, rate)) words;
    `omit`: all but a random int(n (1 - rate)) words."""
    if num_words == 0:
        return np.zeros(0, dtype=np.int64)
    if kind == "omit_last":
        k = int(math.ceil(num_words * rng.uniform(0.0, rate)))
        return np.arange(num_words - k, num_words)
    keep = set(rng.choice(num_words, size=int(num_words * (1.0 - rate)), replace=False).tolist())
    return np.array([i for i in range(num_words) if i not in keep], dtype=np.int64)


def tokenize_and_mask(tokenizer, sentence: str, context_length: int, rate: float, kind: str,
                      rng: Optional[np.random.Generator]) -> Dict[str, torch.Tensor]:
    """`input_ids` / `attention_mask` of the sentence padded to the context length, and (with `rng`)
    `masked_input_ids` (every token of the masked words replaced by the mask token) and `masked_positions`."""
    enc = tokenizer(sentence, padding="max_length", truncation=True, max_length=context_length)
    ids = torch.tensor(enc["input_ids"], dtype=torch.long)
    out = {"input_ids": ids, "attention_mask": torch.tensor(enc["attention_mask"], dtype=torch.long)}
    if rng is None:
        return out
    word_ids = enc.word_ids()
    # words = whitespace-separated words (the official split); a byte-level "word" with a leading space starts one
    starts, word_of_token, w = [], [], -1
    offsets = tokenizer(sentence, truncation=True, max_length=context_length, return_offsets_mapping=True)
    spans = offsets["offset_mapping"]
    for i, wid in enumerate(word_ids):
        if wid is None or i >= len(spans):
            word_of_token.append(None)
            continue
        begin = spans[i][0]
        if w < 0 or (begin > 0 and sentence[begin - 1:begin].isspace()) or (begin < len(sentence)
                                                                             and sentence[begin].isspace()):
            if not starts or starts[-1] != wid:
                w += 1
                starts.append(wid)
        word_of_token.append(max(w, 0))
    num_words = w + 1
    chosen = set(masked_word_indices(num_words, rate, kind, rng).tolist())
    positions = torch.tensor([wt is not None and wt in chosen for wt in word_of_token], dtype=torch.bool)
    masked = ids.clone()
    masked[positions] = tokenizer.mask_token_id
    out.update(masked_input_ids=masked, masked_positions=positions)
    return out


class _SentenceMixin:
    def _setup_text(self, config):
        self.tokenizer = load_gfslt_tokenizer(config)
        self.class_names = list(config.class_names)
        self.context_length = config.context_length
        self.text_column = config.text_column

    def sentence(self, example: Optional[Dict[str, Any]], frames, rng=None) -> str:
        if example:
            keys = TEXT_KEYS if self.text_column == "auto" else (self.text_column,)
            for key in keys:
                value = example.get(key)
                if isinstance(value, (list, tuple)):
                    value = value[int(rng.integers(len(value)))] if (value and rng is not None) else (
                        value[0] if value else None)
                if isinstance(value, bytes):
                    value = value.decode("utf-8", errors="replace")
                if isinstance(value, str) and value.strip():
                    return value
            for key in LABEL_KEYS:
                if example.get(key) is not None:
                    label = int(example[key])
                    name = self.class_names[label] if 0 <= label < len(self.class_names) else str(label)
                    return motion_sentence(name, frames)
        return motion_sentence("object", frames)


@register_view_policy("gfslt_vlp")
class GFSLTVLPPolicy(_SentenceMixin, VideoViewPolicy):
    """`{"pixel_values_videos": [T, C, H, W], "input_ids", "attention_mask", "masked_input_ids", "masked_positions",
    "synthetic_clip"}`: a clip of `num_frames` frames at `sampling_rate` (random window), augmented clip-consistently
    (random resized crop, colour), its sentence (measured on the sampled frames before augmentation) and the masked
    sentence."""

    wants_example = True

    def __init__(self, config):
        super().__init__(config)
        self.augment = self.clip_augment()
        self._setup_text(config)
        self.mask_ratio = float(config.mask_ratio)
        self.mask_type = config.mask_type

    def __call__(self, frames, rng, example: Optional[Dict[str, Any]] = None):
        clip, synthetic = self.sample(frames, rng)
        text = tokenize_and_mask(self.tokenizer, self.sentence(example, clip, rng), self.context_length,
                                 self.mask_ratio, self.mask_type, rng)
        return {"pixel_values_videos": self.augment(clip, rng), **text, "synthetic_clip": synthetic}


@register_view_policy("gfslt_vlp_eval")
class GFSLTVLPEvalPolicy(_SentenceMixin, VideoViewPolicy):
    """Deterministic clip (centred window, resize + centre crop, as `video_eval`) + its unmasked sentence
    (`input_ids`, `attention_mask`): retrieval evaluation."""

    wants_example = True

    def __init__(self, config):
        super().__init__(config)
        self._setup_text(config)

    def __call__(self, frames, rng=None, example: Optional[Dict[str, Any]] = None):
        if isinstance(frames, Image.Image):
            frames = [frames]
        idx = sample_frame_indices(len(frames), self.num_frames, self.sampling_rate, mode="center")
        clip = [frames[i] for i in idx]
        text = tokenize_and_mask(self.tokenizer, self.sentence(example, clip), self.context_length, 0.0, "omit", None)
        return {"pixel_values_videos": eval_clip_transform(clip, self.size, self.mean, self.std), **text}


__all__ = ["MASK_TOKEN", "direction_phrase", "frame_centroids", "describe_motion", "motion_sentence", "motion_corpus",
           "load_gfslt_tokenizer", "masked_word_indices", "tokenize_and_mask", "GFSLTVLPPolicy", "GFSLTVLPEvalPolicy"]
