"""`builtin:moving_digit_pairs`: clips with TWO object instances of one semantic class (multi-object video data for
object-centric / instance-association methods such as SMTC and ISR). PIL / numpy / scikit-learn only.

Each clip: two different real scikit-learn digits of the SAME class (the clip's own digit and another digit of that
class drawn from the same split), each upsampled to 16 px and moving independently in a straight line at 1.5-3 px /
frame, bouncing off the borders of a 48 x 48 canvas, for 16 frames (the Moving MNIST generator of
`training.video.moving_digit_clip`, composited with a per-pixel maximum). Saved as ONE animated GIF per clip under
`{train,test}/<digit>/<index>.gif`; label = the digit. The split is the one of `builtin:digits` /
`builtin:moving_digits` (30 test clips per class: 1,497 train / 300 test); everything is seeded by the clip index.

Two same-class instances per clip give a semantic class with several instances (what SMTC's semantic / instance slots
separate) and several "identities" per frame (what ISR associates across frames).

Ground-truth instance masks (object-discovery evaluation, e.g. SMTC's FG-ARI): next to the clips, under
`masks/{train,test}/<digit>/<index>.tif`, one multi-page uint8 TIFF per clip (one page per frame, same size as the
frames): 0 = background, 1 = the clip's own digit, 2 = its partner; a pixel belongs to an instance when that
digit's ink there exceeds `MASK_INK_THRESHOLD` and, where both overlap, to the brighter one (the compositing rule of
the clip). The masks live OUTSIDE the split folders, so image-folder streams of `train` / `test` never see them;
`instance_mask_path(clip_path)` gives the mask file of a clip. They are written from the same seeded draws as the
clips when the data is materialised (a cache made before the masks existed gets them added on the next call)."""

from __future__ import annotations

import os

import numpy as np

from .data import register_builtin_dataset
from .object_discovery import _load_masks as load_instance_masks
from .object_discovery import clip_mask_path as instance_mask_path
from .video import MOVING_DIGITS_FRAMES, MOVING_DIGITS_SPRITE, moving_digit_clip, save_clip_gif

PAIR_CANVAS = 48
MASK_INK_THRESHOLD = 40  # uint8 ink level above which a pixel belongs to a digit in the ground-truth masks


def moving_digit_pair_layers(first: np.ndarray, second: np.ndarray, rng: np.random.Generator,
                             num_frames: int = MOVING_DIGITS_FRAMES, canvas: int = PAIR_CANVAS,
                             sprite: int = MOVING_DIGITS_SPRITE):
    """The two digits' own `[T, canvas, canvas]` uint8 layers (before compositing), drawn in a fixed order."""
    a = moving_digit_clip(first, rng, num_frames, canvas, sprite)
    b = moving_digit_clip(second, rng, num_frames, canvas, sprite)
    return a, b


def moving_digit_pair_clip(first: np.ndarray, second: np.ndarray, rng: np.random.Generator,
                           num_frames: int = MOVING_DIGITS_FRAMES, canvas: int = PAIR_CANVAS,
                           sprite: int = MOVING_DIGITS_SPRITE) -> np.ndarray:
    """`[T, canvas, canvas]` uint8 frames of two digits moving independently (pixel-wise maximum where they overlap)."""
    a, b = moving_digit_pair_layers(first, second, rng, num_frames, canvas, sprite)
    return np.maximum(a, b)


def pair_instance_masks(a: np.ndarray, b: np.ndarray, threshold: int = MASK_INK_THRESHOLD) -> np.ndarray:
    """`[T, H, W]` uint8 instance ids of two layers: 0 background, 1 = `a`, 2 = `b` (the brighter one where both
    have ink, as the maximum compositing shows it)."""
    ink = np.maximum(a, b) > threshold
    return np.where(ink, np.where(a >= b, 1, 2), 0).astype(np.uint8)


def save_mask_tiff(masks: np.ndarray, path: str) -> None:
    """`[T, H, W]` uint8 ids as a lossless multi-page TIFF (one page per frame)."""
    from PIL import Image

    pages = [Image.fromarray(m, mode="L") for m in masks]
    pages[0].save(path, format="TIFF", save_all=True, append_images=pages[1:])


def _pair_plan():
    """(images, labels, split_of) of the built-in: the real digits and the split shared by all digit built-ins."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    labels = digits.target
    rng = np.random.default_rng(0)
    test_idx = set()
    for c in range(10):  # the same draws as builtin:digits, so all digit built-ins share one split
        idx = np.flatnonzero(labels == c)
        test_idx.update(rng.choice(idx, size=30, replace=False).tolist())
    split_of = np.array(["test" if i in test_idx else "train" for i in range(len(labels))])
    return images, labels, split_of


def _clip_draw(i: int, images, labels, split_of):
    """The seeded draw of clip `i`: (layer of its own digit, layer of its partner)."""
    r = np.random.default_rng([11, i])
    label, split = labels[i], split_of[i]
    partners = np.flatnonzero((labels == label) & (split_of == split) & (np.arange(len(labels)) != i))
    partner = int(partners[r.integers(len(partners))])
    return moving_digit_pair_layers(images[i], images[partner], r)


def _write_masks(out: str, images, labels, split_of) -> None:
    masks_dir = os.path.join(out, "masks")
    if os.path.exists(os.path.join(masks_dir, ".complete")):
        return
    tmp = masks_dir + f".tmp-{os.getpid()}"
    for i, label in enumerate(labels):
        d = os.path.join(tmp, split_of[i], str(int(label)))
        os.makedirs(d, exist_ok=True)
        a, b = _clip_draw(i, images, labels, split_of)
        save_mask_tiff(pair_instance_masks(a, b), os.path.join(d, f"{i:04d}.tif"))
    open(os.path.join(tmp, ".complete"), "w").close()
    if os.path.exists(masks_dir):
        import shutil

        shutil.rmtree(masks_dir, ignore_errors=True)
    try:
        os.replace(tmp, masks_dir)
    except OSError:  # another process finished first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


@register_builtin_dataset("moving_digit_pairs")
def materialize_moving_digit_pairs(root: str) -> str:
    """Write `builtin:moving_digit_pairs` (clips + ground-truth instance masks) under `<root>/moving_digit_pairs`
    and return that folder."""
    out = os.path.join(root, "moving_digit_pairs")
    done = os.path.join(out, ".complete")
    images, labels, split_of = _pair_plan()
    if os.path.exists(done):
        _write_masks(out, images, labels, split_of)  # caches made before the masks existed
        return out
    tmp = out + f".tmp-{os.getpid()}"
    for i, label in enumerate(labels):
        split = split_of[i]
        d = os.path.join(tmp, split, str(int(label)))
        os.makedirs(d, exist_ok=True)
        a, b = _clip_draw(i, images, labels, split_of)
        save_clip_gif(np.maximum(a, b), os.path.join(d, f"{i:04d}.gif"))
    _write_masks(tmp, images, labels, split_of)
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    open(done, "w").close()
    return out


__all__ = ["moving_digit_pair_clip", "moving_digit_pair_layers", "pair_instance_masks", "instance_mask_path",
           "save_mask_tiff", "load_instance_masks", "materialize_moving_digit_pairs", "PAIR_CANVAS",
           "MASK_INK_THRESHOLD"]
