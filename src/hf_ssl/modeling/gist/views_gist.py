"""GIST data: the `"gist_text"` view policy and the built-in `builtin:digits_gist` image-text dataset.

View policy: one augmented image and ONE caption, drawn uniformly from the best `num_captions` of the image's
matched texts (the dataset's text column, best match first: what GIST's matching step writes), formatted as
`caption_format` = "{class_name}: {text}" (official `row['species'] + ': ' + caption`). The class name comes from a
class-name column or the label (`config.class_names`). Data without a text column falls back to the CLIP core's
caption rules (templated class captions), unformatted.

Built-in data: `builtin:digits_gist` = the built-in digits (same images and split) as an image folder with a
`metadata.jsonl` carrying `label` and `gist_texts` per image, so the texts reach the model as a dataset column, as a
user's would. Its texts are generated the GIST way with two stand-ins: the per-class candidate pool (GPT-4 in the
paper) enumerates descriptions of stroke thickness, slant, position and size for each digit class, and the matching
(a pretrained CLIP in the paper) ranks a class's candidates by how many of those properties agree with the ones
measured on the image (`digit_properties`), keeping the top `match_top_k` = 5.
"""

from __future__ import annotations

import itertools
import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from ...training.data import LABEL_KEYS, register_builtin_dataset, register_view_policy
from ..clip.views_clip import ImageTextPolicy
from ..dreamlip.views_dreamlip import digit_properties

GIST_TEXT_KEYS = ("gist_texts", "matched_texts", "texts", "captions", "text", "caption")
CLASS_NAME_KEYS = ("class_name", "species", "category")

# the attribute vocabulary of the generated digit descriptions (one phrase per value)
THICKNESS = {"thick": "thick strokes", "thin": "thin strokes", "medium": "medium strokes"}
SLANT = {"left": "slanted left", "right": "slanted right", "upright": "upright"}
POSITION_V = ("top", "middle", "bottom")
POSITION_H = ("left", "center", "right")
SIZE = {"tall": "tall and narrow", "wide": "wide", "balanced": "balanced"}


# attribute thresholds on the measured properties: about the tertiles of the built-in digits (so each value is
# common and the texts tell images apart)
THRESHOLDS = {"thin": 5.5, "thick": 6.2, "left": 0.09, "right": -0.02, "x_left": 0.49, "x_right": 0.53,
              "y_top": 0.48, "y_bottom": 0.52, "wide": 1.45, "tall": 1.6}


def digit_attributes(img) -> Dict[str, str]:
    """Discrete thickness / slant / position / size attributes of a bright-on-dark digit image."""
    p, t = digit_properties(img), THRESHOLDS
    thickness = "thick" if p["thickness"] > t["thick"] else "thin" if p["thickness"] < t["thin"] else "medium"
    slant = "left" if p["slant"] > t["left"] else "right" if p["slant"] < t["right"] else "upright"
    h = "left" if p["cx"] < t["x_left"] else "right" if p["cx"] > t["x_right"] else "center"
    v = "top" if p["cy"] < t["y_top"] else "bottom" if p["cy"] > t["y_bottom"] else "middle"
    size = "tall" if p["aspect"] > t["tall"] else "wide" if p["aspect"] < t["wide"] else "balanced"
    return {"thickness": thickness, "slant": slant, "position": f"{v} {h}", "size": size}


def describe(name: str, attrs: Dict[str, str]) -> str:
    v, h = attrs["position"].split()
    where = "centered" if (v, h) == ("middle", "center") else f"at the {v} {h}"
    return f"a {name} with {THICKNESS[attrs['thickness']]}, {SLANT[attrs['slant']]}, {where}, {SIZE[attrs['size']]}"


def class_candidate_pool(name: str) -> List[Dict[str, str]]:
    """All attribute combinations of one class (the stand-in for GIST's LLM-generated per-class descriptions)."""
    positions = [f"{v} {h}" for v in POSITION_V for h in POSITION_H]
    return [dict(thickness=t, slant=s, position=p, size=z)
            for t, s, p, z in itertools.product(THICKNESS, SLANT, positions, SIZE)]


def match_by_attributes(img, name: str, k: int = 5) -> List[str]:
    """Top-k candidate texts of the class for this image, ranked by attribute agreement (ties: pool order)."""
    measured = digit_attributes(img)
    pool = class_candidate_pool(name)
    scores = np.array([sum(c[key] == measured[key] for key in measured) for c in pool])
    order = np.argsort(-scores, kind="stable")[:k]
    return [describe(name, pool[int(i)]) for i in order]


@register_builtin_dataset("digits_gist")
def materialize_digits_gist(root: str) -> str:
    """`<root>/digits_gist/{train,test}/<label>/*.png` (the built-in digits) + `{train,test}/metadata.jsonl` with
    `file_name`, `label` and `gist_texts` (5 matched texts, best first)."""
    from PIL import Image

    from ...training.data import materialize_builtin
    from ...training.text import DIGIT_NAMES

    out = os.path.join(root, "digits_gist")
    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        return out
    src = materialize_builtin("digits", root)
    tmp = out + f".tmp-{os.getpid()}"
    for split in ("train", "test"):
        rows = []
        for label in sorted(os.listdir(os.path.join(src, split))):
            d = os.path.join(src, split, label)
            if not os.path.isdir(d):
                continue
            os.makedirs(os.path.join(tmp, split, label), exist_ok=True)
            for fname in sorted(os.listdir(d)):
                with open(os.path.join(d, fname), "rb") as f:
                    data = f.read()
                with open(os.path.join(tmp, split, label, fname), "wb") as f:
                    f.write(data)
                img = Image.open(os.path.join(d, fname)).convert("RGB")
                rows.append({"file_name": f"{label}/{fname}", "label": int(label),
                             "gist_texts": match_by_attributes(img, DIGIT_NAMES[int(label)], k=5)})
        with open(os.path.join(tmp, split, "metadata.jsonl"), "w") as f:
            f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    open(done, "w").close()
    return out


def format_caption(fmt: str, class_name: Optional[str], text: str) -> str:
    """`fmt.format(class_name=..., text=...)`; without a class name, or when the text already starts with
    "<class_name>:", the text itself."""
    text = text.strip()
    if not class_name or text.lower().startswith(f"{class_name.lower()}:"):
        return text
    return fmt.format(class_name=class_name, text=text)


@register_view_policy("gist_text")
class GISTTextPolicy(ImageTextPolicy):
    wants_example = True

    def __init__(self, config):
        super().__init__(config)
        self.num_captions = int(config.num_captions)
        self.caption_format = config.caption_format
        self.class_name_column = config.class_name_column

    def matched_texts(self, example: Optional[Dict[str, Any]]) -> List[str]:
        """The example's texts (best match first), or [] when it has none."""
        if not example:
            return []
        keys = GIST_TEXT_KEYS if self.text_column == "auto" else (self.text_column,)
        for key in keys:
            value = example.get(key)
            if isinstance(value, bytes):
                value = value.decode("utf-8", errors="replace")
            if isinstance(value, str):
                value = [value]
            if isinstance(value, (list, tuple)):
                texts = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else v for v in value]
                texts = [t for t in texts if isinstance(t, str) and t.strip()]
                if texts:
                    return texts
        return []

    def class_name(self, example: Optional[Dict[str, Any]]) -> Optional[str]:
        if not example:
            return None
        keys = CLASS_NAME_KEYS if self.class_name_column == "auto" else (self.class_name_column,)
        for key in keys:
            if isinstance(example.get(key), str) and example[key].strip():
                return example[key].strip()
        for key in LABEL_KEYS:
            if example.get(key) is not None:
                label = int(example[key])
                return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)
        return None

    def sample_caption(self, example: Optional[Dict[str, Any]], rng: np.random.Generator) -> str:
        texts = self.matched_texts(example)
        if not texts:
            return self.caption(example, rng)  # CLIP core fallback (templated class caption / text column)
        pool = texts[: self.num_captions]
        return format_caption(self.caption_format, self.class_name(example), pool[int(rng.integers(len(pool)))])

    def __call__(self, img, rng, example: Optional[Dict[str, Any]] = None):
        ids, mask = self.tokenize([self.sample_caption(example, rng)])
        return {"pixel_values": self.view(img, rng), "input_ids": ids[0], "attention_mask": mask[0]}


__all__ = ["GISTTextPolicy", "materialize_digits_gist", "match_by_attributes", "digit_attributes", "describe",
           "format_caption", "class_candidate_pool"]
