"""ALIGN's noisy alt-text recipe as a data step (paper Sec. 3, "A Large-Scale Noisy Image-Text Dataset").

ALIGN keeps the raw alt-text of 1.8B images and applies only simple frequency-based filters:

Image-based:
  * keep images whose shorter side is larger than 200 pixels and whose aspect ratio is smaller than 3
    (`min_image_side`, `max_aspect_ratio`);
  * discard images with more than 1000 associated alt-texts (`max_texts_per_image`; images are identified by
    an id column or the hash of their bytes);
  (the pornography classifier and the removal of near-duplicates of downstream test images need external models
  and test sets: a user-supplied `extra_image_filter` callable takes their place.)
Text-based:
  * exclude alt-texts shared by more than 10 images (`max_images_per_text`; e.g. "1920x1080", "alt img");
  * discard alt-texts that contain any rare token, i.e. a unigram or bigram outside the 100 million most frequent
    unigrams and bigrams of the raw dataset (`vocabulary_size`);
  * remove alt-texts that are too short (< 3 unigrams) or too long (> 20 unigrams) (`min_unigrams`,
    `max_unigrams`).

`AltTextFilter.fit(examples)` makes the statistics pass (text frequencies, unigram/bigram counts, alt-texts per
image) over an iterable of examples (dicts with the text column and optionally the image / an image id);
`keep(example)` applies the rules and `reasons(example)` says which rules an example fails. `filter_dataset`
does both passes over a `datasets` (Iterable)Dataset and returns it filtered (streaming-friendly: two passes).
"""

from __future__ import annotations

import hashlib
import io
import re
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

_TOKEN = re.compile(r"[\w']+", re.UNICODE)


def unigrams(text: str) -> List[str]:
    """Lower-cased word tokens (letters, digits, apostrophes)."""
    return _TOKEN.findall(text.lower())


def ngrams(text: str) -> List[str]:
    """Unigrams and bigrams (joined by a space) of `text`."""
    toks = unigrams(text)
    return toks + [f"{a} {b}" for a, b in zip(toks, toks[1:])]


def normalize_text(text: str) -> str:
    return " ".join(text.lower().split())


class AltTextFilter:
    """The paper's frequency-based image and alt-text filters (see the module docstring). Paper defaults."""

    def __init__(self, min_unigrams: int = 3, max_unigrams: int = 20, max_images_per_text: int = 10,
                 vocabulary_size: int = 100_000_000, min_image_side: int = 200, max_aspect_ratio: float = 3.0,
                 max_texts_per_image: int = 1000, text_column: str = "text", image_column: Optional[str] = "image",
                 image_id_column: Optional[str] = None,
                 extra_image_filter: Optional[Callable[[Dict[str, Any]], bool]] = None):
        if min_unigrams < 0 or max_unigrams < min_unigrams:
            raise ValueError(f"need 0 <= min_unigrams <= max_unigrams, got {min_unigrams}, {max_unigrams}")
        if max_images_per_text < 1 or max_texts_per_image < 1 or vocabulary_size < 1:
            raise ValueError("max_images_per_text, max_texts_per_image and vocabulary_size must be >= 1")
        if min_image_side < 0 or max_aspect_ratio < 1:
            raise ValueError("min_image_side must be >= 0 and max_aspect_ratio >= 1")
        self.min_unigrams, self.max_unigrams = min_unigrams, max_unigrams
        self.max_images_per_text = max_images_per_text
        self.vocabulary_size = vocabulary_size
        self.min_image_side, self.max_aspect_ratio = min_image_side, max_aspect_ratio
        self.max_texts_per_image = max_texts_per_image
        self.text_column, self.image_column, self.image_id_column = text_column, image_column, image_id_column
        self.extra_image_filter = extra_image_filter
        self.text_images: Dict[str, set] = {}
        self.image_texts: Counter = Counter()
        self.vocabulary: Optional[set] = None
        self._fitted = False

    # -- per-example keys --------------------------------------------------------------------------------
    def _text(self, example: Dict[str, Any]) -> str:
        value = example.get(self.text_column)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        return value if isinstance(value, str) else ""

    def _image_id(self, example: Dict[str, Any]) -> Optional[str]:
        if self.image_id_column and example.get(self.image_id_column) is not None:
            return str(example[self.image_id_column])
        raw = example.get(self.image_column) if self.image_column else None
        data = None
        if isinstance(raw, dict):
            data = raw.get("bytes") or (raw.get("path") or "").encode()
        elif isinstance(raw, (bytes, bytearray)):
            data = bytes(raw)
        elif isinstance(raw, str):
            data = raw.encode()
        elif raw is not None and hasattr(raw, "tobytes"):
            data = raw.tobytes()
        return hashlib.sha1(data).hexdigest() if data else None

    def _image_size(self, example: Dict[str, Any]) -> Optional[Tuple[int, int]]:
        if "width" in example and "height" in example:
            return int(example["width"]), int(example["height"])
        raw = example.get(self.image_column) if self.image_column else None
        if raw is None:
            return None
        from PIL import Image

        if isinstance(raw, Image.Image):
            return raw.size
        try:
            if isinstance(raw, dict):
                src = io.BytesIO(raw["bytes"]) if raw.get("bytes") else raw.get("path")
            elif isinstance(raw, (bytes, bytearray)):
                src = io.BytesIO(raw)
            else:
                src = raw
            with Image.open(src) as img:  # reads the header only
                return img.size
        except Exception:  # undecodable: left to the corrupt-sample policy of the training stream
            return None

    # -- statistics pass ---------------------------------------------------------------------------------
    def fit(self, examples: Iterable[Dict[str, Any]]) -> "AltTextFilter":
        counts: Counter = Counter()
        for i, example in enumerate(examples):
            text = normalize_text(self._text(example))
            image_id = self._image_id(example) or f"#{i}"
            self.text_images.setdefault(text, set()).add(image_id)
            self.image_texts[image_id] += 1
            counts.update(set(ngrams(text)))
        self.vocabulary = {g for g, _ in counts.most_common(self.vocabulary_size)}
        self._fitted = True
        return self

    # -- rules ---------------------------------------------------------------------------------------------
    def reasons(self, example: Dict[str, Any]) -> List[str]:
        """The names of the rules `example` fails (empty: keep it)."""
        if not self._fitted:
            raise RuntimeError("call fit() on the raw data first (the filters are frequency based)")
        out = []
        size = self._image_size(example)
        if size is not None:
            w, h = size
            if min(w, h) <= self.min_image_side:
                out.append("image_too_small")
            if max(w, h) / max(1, min(w, h)) >= self.max_aspect_ratio:
                out.append("aspect_ratio")
        image_id = self._image_id(example)
        if image_id is not None and self.image_texts.get(image_id, 0) > self.max_texts_per_image:
            out.append("too_many_texts_for_image")
        if self.extra_image_filter is not None and not self.extra_image_filter(example):
            out.append("extra_image_filter")
        text = normalize_text(self._text(example))
        n = len(unigrams(text))
        if n < self.min_unigrams:
            out.append("text_too_short")
        if n > self.max_unigrams:
            out.append("text_too_long")
        if len(self.text_images.get(text, ())) > self.max_images_per_text:
            out.append("text_shared_by_too_many_images")
        if any(g not in self.vocabulary for g in ngrams(text)):
            out.append("rare_token")
        return out

    def keep(self, example: Dict[str, Any]) -> bool:
        return not self.reasons(example)

    __call__ = keep


def filter_dataset(dataset, text_column: str = "text", **filter_kwargs):
    """Fit an :class:`AltTextFilter` on `dataset` (one pass) and return `(dataset.filter(keep), filter)`; works for
    streaming `datasets.IterableDataset`s (the filter is applied lazily on the second pass)."""
    image_column = filter_kwargs.pop("image_column", None)
    if image_column is None:
        from ...training.data import find_image_column

        try:
            image_column = find_image_column(dataset)
        except ValueError:
            image_column = None
    flt = AltTextFilter(text_column=text_column, image_column=image_column, **filter_kwargs).fit(iter(dataset))
    return dataset.filter(flt.keep), flt


__all__ = ["AltTextFilter", "filter_dataset", "unigrams", "ngrams", "normalize_text"]
