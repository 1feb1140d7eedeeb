"""GeneCIS: A Benchmark for General Conditional Image Similarity - evaluation core.

Sagar Vaze, Nicolas Carion, Ishan Misra, CVPR 2023 (arXiv:2306.07969). Official code and annotations:
https://github.com/facebookresearch/genecis (`eval/eval_functions.py: validate`, `utils/metric_utils.py:
get_recall`, `utils/model_utils.py: FeatureComb`, `datasets/{vaw,coco}_dataset.py`, `genecis/*.json`).

The benchmark: given a reference image and a condition text, rank a small gallery containing exactly one positive;
report Recall@{1, 2, 3}. Four tasks:

* focus attribute (condition = an attribute type, e.g. "color"; the positive shares the reference object's colour),
* change attribute (condition = a new attribute, e.g. "red"; the positive shows the object with it),
* focus object (condition = an object in the reference scene, e.g. "dog"; the positive contains it),
* change object (condition = an object to add, e.g. "wall"; the positive shows the scene with it).

Annotation format (official JSON, one list of dicts per task): `{"reference": ..., "target": ..., "condition":
str, "gallery": [...]}`; attribute tasks identify images as `{"image_id", "instance_bbox": [x, y, w, h]}` (Visual
Genome 1.2, the box is dilated by 0.7 and padded to a square, like the official loader), object tasks as
`{"val_image_id"}` (COCO 2017 val, `{id:012d}.jpg`). The target goes first in the gallery (index 0), as in the
official datasets. Official galleries: 10 images (focus attribute) and 15 (the other tasks), including the target.

Scorers (`genecis_scores` / `evaluate_genecis`) for any hf_ssl dual encoder (`encode_image` / `encode_text`):
the paper's baselines `"image_only"` (reference embedding), `"text_only"` (condition embedding), `"image_plus_text"`
(normalised 0.5 * image + 0.5 * text, `FeatureComb`), and `"model"`: a composed-retrieval model's own query
(`compose(pixel_values, input_ids, attention_mask)`, e.g. hf_ssl's `composed_retrieval`), falling back to
image + text for plain dual encoders. Gallery images are scored by cosine similarity with the query.

`make_digit_genecis(task)` builds a generated GeneCIS-format benchmark on the built-in digits (tinted digits for
the attribute tasks, two-digit canvases for the object tasks) for tests and smoke evaluation.

DEVIATIONS: no Combiner head is trained here (the paper's trained baseline / method); the generated digit tasks
are an analogue of the four tasks (attribute = ink colour, object = digit), not the VAW/COCO benchmark.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

TASKS = ("focus_attribute", "change_attribute", "focus_object", "change_object")
SCORERS = ("model", "image_only", "text_only", "image_plus_text")
DILATION = 0.7  # official VAW crop dilation


def genecis_recall(scores: Any, target_index: Any, k: Sequence[int] = (1, 2, 3)) -> Dict[str, float]:
    """Recall@k from per-sample gallery scores (a `[N, G]` array or a list of per-sample lists of any lengths) and
    the positive's gallery index per sample. A gallery image strictly better than the positive pushes it down."""
    rows = [np.asarray(r, dtype=np.float64).reshape(-1) for r in scores]
    targets = np.asarray(target_index, dtype=np.int64).reshape(-1)
    if not rows:
        raise ValueError("no samples to evaluate")
    if len(rows) != len(targets):
        raise ValueError(f"{len(rows)} score rows but {len(targets)} target indices")
    ks = [int(v) for v in ([k] if isinstance(k, int) else k)]
    if not ks or any(v < 1 for v in ks):
        raise ValueError(f"k must be positive integers, got {k}")
    ranks = []
    for row, t in zip(rows, targets):
        if not 0 <= t < len(row):
            raise ValueError(f"target index {t} outside a gallery of {len(row)} images")
        if not np.isfinite(row).all():
            raise ValueError("scores must be finite")
        ranks.append(int((row > row[t]).sum()))
    ranks = np.asarray(ranks)
    return {f"recall@{v}": float((ranks < v).mean()) for v in ks}


# ----------------------------------------------------------------------------------------------------
# samples and the official annotation format
# ----------------------------------------------------------------------------------------------------
@dataclass
class GeneCISSample:
    """One benchmark item: images are PIL images (or zero-argument callables returning one, for lazy loading)."""

    reference: Any
    condition: str
    gallery: List[Any]
    target_index: int = 0
    task: str = ""
    meta: Dict[str, Any] = field(default_factory=dict)


def _materialise(img) -> Image.Image:
    return img() if callable(img) else img


def _expand2square(img: Image.Image) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), (0, 0, 0) if img.mode == "RGB" else 0)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


def load_annotation_image(entry: Dict[str, Any], image_root: str) -> Image.Image:
    """An annotation entry -> PIL image: COCO (`val_image_id`) as is, VAW (`image_id` + `instance_bbox`) cropped
    around the dilated box and padded to a square (official `load_cropped_image`)."""
    if "val_image_id" in entry:
        return Image.open(os.path.join(image_root, f"{int(entry['val_image_id']):012d}.jpg")).convert("RGB")
    if "image_id" in entry:
        img = Image.open(os.path.join(image_root, f"{entry['image_id']}.jpg")).convert("RGB")
        if "instance_bbox" in entry:
            x, y, w, h = entry["instance_bbox"]
            left, top = max(0, x - DILATION * w), max(0, y - DILATION * h)
            right, bottom = min(img.width, left + (1 + DILATION) * w), min(img.height, top + (1 + DILATION) * h)
            img = _expand2square(img.crop((left, top, right, bottom)))
        return img
    raise ValueError(f"annotation entry has neither 'val_image_id' nor 'image_id': {sorted(entry)}")


def load_genecis_annotations(path_or_list: Union[str, List[dict]], image_root: str, task: str = "",
                             loader: Optional[Callable[[dict, str], Image.Image]] = None) -> List[GeneCISSample]:
    """Samples from an official GeneCIS JSON file (or its parsed list); images load lazily from `image_root`. The
    target is put first in the gallery (target_index 0), as the official datasets do."""
    items = json.load(open(path_or_list)) if isinstance(path_or_list, str) else list(path_or_list)
    task = task or (os.path.splitext(os.path.basename(path_or_list))[0] if isinstance(path_or_list, str) else "")
    load = loader or load_annotation_image
    out = []
    for item in items:
        for key in ("reference", "target", "condition", "gallery"):
            if key not in item:
                raise ValueError(f"GeneCIS annotation lacks {key!r}: {sorted(item)}")

        def lazy(entry):
            return lambda: load(entry, image_root)

        gallery = [lazy(item["target"])] + [lazy(g) for g in item["gallery"]]
        out.append(GeneCISSample(lazy(item["reference"]), str(item["condition"]), gallery, 0, task))
    return out


# ----------------------------------------------------------------------------------------------------
# scoring a dual encoder
# ----------------------------------------------------------------------------------------------------
def _preprocess(model, images: List[Image.Image]) -> torch.Tensor:
    from ...training.data import build_view_generator

    policy = build_view_generator(model.config, "eval")
    mode = {1: "L", 3: "RGB"}[model.config.num_channels]
    return torch.stack([policy(_materialise(im).convert(mode))["pixel_values"] for im in images])


@torch.no_grad()
def genecis_scores(model, samples: Sequence[GeneCISSample], scorer: str = "model", tokenizer=None,
                   image_weight: float = 0.5, batch_size: int = 64) -> List[np.ndarray]:
    """Per-sample gallery scores (cosine of the query with every gallery image) for an hf_ssl dual encoder.
    `scorer`: "model" (the model's `compose` if it has one, else image + text), "image_only", "text_only" or
    "image_plus_text" (normalised `image_weight * image + (1 - image_weight) * text`, official FeatureComb)."""
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")
    for name in ("encode_image", "encode_text"):
        if not hasattr(model, name):
            raise ValueError(f"{type(model).__name__} is not a dual encoder (no {name})")
    from ...training.text import load_tokenizer

    cfg = model.config
    length = int(getattr(cfg, "caption_length", cfg.context_length))
    tokenizer = tokenizer or load_tokenizer(cfg.tokenizer_name_or_path, vocab_size=cfg.tokenizer_vocab_size,
                                            context_length=cfg.context_length)
    device = model.logit_scale.device
    was_training = model.training
    model.eval()
    out = []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = list(samples[start:start + batch_size])
            ref = _preprocess(model, [s.reference for s in chunk]).to(device)
            enc = tokenizer([s.condition for s in chunk], padding="max_length", truncation=True, max_length=length,
                            return_tensors="pt")
            ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
            if scorer == "model" and hasattr(model, "compose"):
                query = model.compose(ref, ids, mask)
            else:
                img = model.encode_image(ref)
                txt = model.encode_text(ids, mask)
                query = {"image_only": img, "text_only": txt}.get(
                    scorer, image_weight * img + (1 - image_weight) * txt)
            query = F.normalize(query.float(), dim=-1)
            for s, q in zip(chunk, query):
                gallery = model.encode_image(_preprocess(model, s.gallery).to(device)).float()
                out.append((F.normalize(gallery, dim=-1) @ q).cpu().numpy())
    finally:
        model.train(was_training)
    return out


def evaluate_genecis(model, tasks: Dict[str, Sequence[GeneCISSample]],
                     scorers: Sequence[str] = ("model", "image_only", "text_only", "image_plus_text"),
                     k: Sequence[int] = (1, 2, 3), tokenizer=None) -> Dict[str, float]:
    """`{f"{task}/{scorer}/recall@{k}": ...}` plus `f"average/{scorer}/recall@{k}"` over the tasks (the paper's
    summary number is the average Recall@1)."""
    results: Dict[str, float] = {}
    for scorer in scorers:
        per_task = []
        for task, samples in tasks.items():
            scores = genecis_scores(model, samples, scorer, tokenizer=tokenizer)
            rec = genecis_recall(scores, [s.target_index for s in samples], k)
            per_task.append(rec)
            results.update({f"{task}/{scorer}/{key}": v for key, v in rec.items()})
        for key in per_task[0]:
            results[f"average/{scorer}/{key}"] = float(np.mean([r[key] for r in per_task]))
    return results


# ----------------------------------------------------------------------------------------------------
# a generated GeneCIS-format benchmark on the built-in digits
# ----------------------------------------------------------------------------------------------------
COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240), "yellow": (235, 215, 40)}


def _digits(split: str, per_class: int = 30):
    from ...training.data import decode_image, load_image_stream

    by_class: Dict[int, List[Image.Image]] = {}
    for ex in load_image_stream("builtin:digits", split=split, shuffle_buffer=0, shard_by_node=False):
        bucket = by_class.setdefault(int(ex["label"]), [])
        if len(bucket) < per_class:
            bucket.append(decode_image(ex["image"], "L"))
    return by_class


def _tint(img: Image.Image, colour) -> Image.Image:
    a = np.asarray(img, dtype=np.float32)[..., None] / 255.0
    return Image.fromarray((a * np.asarray(colour, dtype=np.float32)).clip(0, 255).astype(np.uint8), "RGB")


def _canvas(digits: List[Image.Image], size: int = 32) -> Image.Image:
    """Digits side by side (left to right), resized to share the canvas."""
    out = Image.new("L", (size, size))
    w = size // len(digits)
    for i, d in enumerate(digits):
        out.paste(d.resize((w, size // 2 + w // 2)), (i * w, (size - (size // 2 + w // 2)) // 2))
    return out.convert("RGB")


def make_digit_genecis(task: str, num_samples: int = 40, gallery_size: int = 10, split: str = "test",
                       seed: int = 0, class_names: Optional[Sequence[str]] = None) -> List[GeneCISSample]:
    """Generated samples of one GeneCIS task on the digits; the target is gallery index 0.

    * focus_attribute ("color"): positive = another digit with the reference's ink colour; distractors: the
      reference's digit class in the other colours, and other digits in other colours.
    * change_attribute (a colour name): positive = the reference's digit class in that colour; distractors: that
      class in other colours and other digits in that colour.
    * focus_object (a digit name in the two-digit reference): positive = a canvas with that digit and another one;
      distractors: canvases with the reference's other digit but not the named one.
    * change_object (a digit name to add): positive = the reference's digit next to the named digit; distractors:
      the reference digit with other digits, and the named digit with other digits.
    """
    from ...training.text import DIGIT_NAMES

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if gallery_size < 2:
        raise ValueError("gallery_size must be >= 2 (the positive and at least one distractor)")
    names = list(class_names or DIGIT_NAMES)
    rng = np.random.default_rng(seed)
    pool = _digits(split)
    colours = list(COLOURS)

    def digit(c):
        return pool[c][int(rng.integers(len(pool[c])))]

    def other(excl, n=10):
        choices = [c for c in range(n) if c not in excl]
        return int(choices[int(rng.integers(len(choices)))])

    samples = []
    for _ in range(num_samples):
        d = int(rng.integers(10))
        if task in ("focus_attribute", "change_attribute"):
            col = colours[int(rng.integers(len(colours)))]
            ref = _tint(digit(d), COLOURS[col])
            if task == "focus_attribute":
                cond, target = "color", _tint(digit(other({d})), COLOURS[col])
                distract = []
                for i in range(gallery_size - 1):
                    oc = colours[int(rng.choice([j for j in range(len(colours)) if colours[j] != col]))]
                    cls = d if i % 2 == 0 else other({d})
                    distract.append(_tint(digit(cls), COLOURS[oc]))
            else:
                new = colours[int(rng.choice([j for j in range(len(colours)) if colours[j] != col]))]
                cond, target = new, _tint(digit(d), COLOURS[new])
                distract = []
                for i in range(gallery_size - 1):
                    if i % 2 == 0:
                        oc = colours[int(rng.choice([j for j in range(len(colours)) if colours[j] != new]))]
                        distract.append(_tint(digit(d), COLOURS[oc]))
                    else:
                        distract.append(_tint(digit(other({d})), COLOURS[new]))
        elif task == "focus_object":
            e = other({d})
            ref = _canvas([digit(d), digit(e)])
            cond = names[d]
            target = _canvas([digit(d), digit(other({d, e}))] if rng.random() < 0.5 else
                             [digit(other({d, e})), digit(d)])
            distract = [_canvas([digit(e), digit(other({d, e}))]) for _ in range(gallery_size - 1)]
        else:
            e = other({d})
            ref = _canvas([digit(d)])
            cond = names[e]
            target = _canvas([digit(d), digit(e)])
            distract = []
            for i in range(gallery_size - 1):
                distract.append(_canvas([digit(d), digit(other({d, e}))]) if i % 2 == 0 else
                                _canvas([digit(other({d, e})), digit(e)]))
        samples.append(GeneCISSample(ref, cond, [target] + distract, 0, task, {"digit": d}))
    return samples


__all__ = ["TASKS", "SCORERS", "GeneCISSample", "genecis_recall", "load_annotation_image",
           "load_genecis_annotations", "genecis_scores", "evaluate_genecis", "make_digit_genecis"]
