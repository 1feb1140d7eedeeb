"""Streaming image data, training view policies, collation and the corrupt-sample policy.

Pipeline: `load_image_stream(source)` gives a `datasets.IterableDataset` (Hub id, local image folder,
parquet, webdataset shards, or a built-in real dataset), sharded per process under DDP and shuffled with a
buffer. `SSLViewDataset` decodes each image itself (undecodable / zero-byte images are skipped, logged and
counted, never crash the run) and applies the method's view policy, built from `config.augmentation` by
`build_view_generator`. `SSLDataCollator` batches views (lists of crops stay lists of batched tensors) and
carries the skip count to the trainer, which logs the running total.

All augmentation is PIL/numpy based (no torchvision).
"""

from __future__ import annotations

import contextlib
import glob
import io
import logging
import math
import os
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

logger = logging.getLogger(__name__)

IMAGE_KEYS = ("image", "img", "jpg", "jpeg", "png", "webp", "pixel_values")
LABEL_KEYS = ("label", "labels", "cls", "class", "fine_label", "target")
BUILTIN_DATASETS = ("digits",)
DEFAULT_DATASET = "builtin:digits"


# ----------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------
def builtin_cache_dir() -> str:
    return os.environ.get("HF_SSL_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hf_ssl"))


# built-in datasets provided by method folders (`@register_builtin_dataset("digits_gist")` on `fn(root) -> path`),
# e.g. the digits with a generated text column; `materialize_builtin` looks here first
BUILTIN_MATERIALIZERS: Dict[str, Callable[[str], str]] = {}


def register_builtin_dataset(name: str):
    """Decorator registering `fn(root) -> folder` as the built-in dataset `builtin:<name>`; the folder must be
    loadable by `load_image_stream` (an image folder with `train`/`test` splits, optionally `metadata.jsonl`)."""

    def wrap(fn):
        BUILTIN_MATERIALIZERS[name] = fn
        return fn

    return wrap


@contextlib.contextmanager
def _exclusive(lock_path: str):
    """An inter-process lock (POSIX `flock`; a no-op where it is unavailable): concurrent test workers or DDP
    processes that materialise the same built-in dataset build it once, the others wait and reuse it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (Windows)
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def available_builtin_datasets() -> Tuple[str, ...]:
    _register_core_builtins()
    return tuple(sorted(BUILTIN_MATERIALIZERS))


def materialize_builtin(name: str, root: Optional[str] = None) -> str:
    """Write the built-in dataset `builtin:<name>` as a folder `load_image_stream` reads (`<root>/<name>/{train,test}/
    <label>/<files>`) and return its path; built once per cache root (an inter-process lock serialises concurrent
    callers), then reused. Built-ins register with `register_builtin_dataset`; see `available_builtin_datasets()`:
    `digits` (real scikit-learn digits), `moving_digits` (clips, training/video.py), `digits3d` (point clouds,
    training/points.py), `shapes3d` / `radiance_shapes3d` (synthetic volumes, training/volumes.py), and those of
    method folders."""
    _register_core_builtins()
    if name not in BUILTIN_MATERIALIZERS:
        raise ValueError(f"Unknown built-in dataset {name!r}; available: {available_builtin_datasets()}")
    root = root or builtin_cache_dir()
    os.makedirs(root, exist_ok=True)
    with _exclusive(os.path.join(root, f".{name}.lock")):
        return BUILTIN_MATERIALIZERS[name](root)


_CORE_REGISTERED = False


def _register_core_builtins() -> None:
    """The built-ins of the shared data modules (imported lazily: video / volume / point code loads only when used)."""
    global _CORE_REGISTERED
    if _CORE_REGISTERED:
        return
    _CORE_REGISTERED = True
    BUILTIN_MATERIALIZERS.setdefault("digits", _materialize_digits)

    def volumes(name):
        def build(root):
            from .volumes import materialize_volume_builtin

            return materialize_volume_builtin(name, root)

        return build

    from .volumes import BUILTIN_VOLUME_DATASETS

    for name in BUILTIN_VOLUME_DATASETS:  # synthetic labelled 3-D volumes, multi-page TIFF
        BUILTIN_MATERIALIZERS.setdefault(name, volumes(name))

    def digits3d(root):  # real digits lifted to labelled 3-D point clouds, one 16-bit PNG each
        from .points import materialize_digits3d

        return materialize_digits3d(root)

    def moving_digits(root):  # real digits moving on a canvas, one animated GIF per clip
        from .video import materialize_moving_digits

        return materialize_moving_digits(os.path.join(root, "moving_digits"))

    BUILTIN_MATERIALIZERS.setdefault("digits3d", digits3d)
    BUILTIN_MATERIALIZERS.setdefault("moving_digits", moving_digits)


def _materialize_digits(root: str) -> str:
    """`digits`: scikit-learn's 1,797 real 8x8 handwritten digits (UCI), 10 classes, upsampled to 32x32 RGB; a fixed
    stratified split of 1,497 train / 300 test images."""
    name = "digits"
    out = os.path.join(root, name)
    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        return out
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0 * 255.0).clip(0, 255).astype(np.uint8)
    labels = digits.target
    rng = np.random.default_rng(0)
    test_idx = set()
    for c in range(10):  # 30 test images per class
        idx = np.flatnonzero(labels == c)
        test_idx.update(rng.choice(idx, size=30, replace=False).tolist())
    tmp = out + f".tmp-{os.getpid()}"
    for i, (img, label) in enumerate(zip(images, labels)):
        split = "test" if i in test_idx else "train"
        d = os.path.join(tmp, split, str(int(label)))
        os.makedirs(d, exist_ok=True)
        pil = Image.fromarray(img, mode="L").resize((32, 32), Image.BICUBIC).convert("RGB")
        pil.save(os.path.join(d, f"{i:04d}.png"))
    if os.path.exists(out):
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    open(done, "w").close()
    return out


def _files(path: str, exts: Sequence[str]) -> List[str]:
    found = []
    for ext in exts:
        found += glob.glob(os.path.join(path, "**", f"*{ext}"), recursive=True)
    return sorted(found)


def _dist_info() -> Tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def load_image_stream(
    source: str = DEFAULT_DATASET,
    split: str = "train",
    streaming: bool = True,
    shuffle_buffer: int = 1000,
    seed: int = 0,
    shard_by_node: bool = True,
    name: Optional[str] = None,
    **load_kwargs,
):
    """Open an image dataset as a `datasets` (Iterable)Dataset with images left undecoded.

    `source` is `builtin:<name>`, a local image folder (class sub-folders become labels), a directory or
    glob of `.parquet` files or webdataset `.tar` shards, or a Hub dataset id. Under DDP each process reads
    its own part (`split_dataset_by_node`)."""
    from datasets import Image as ImageFeature
    from datasets import load_dataset
    from datasets.distributed import split_dataset_by_node

    if source.startswith("builtin:"):
        source = materialize_builtin(source.split(":", 1)[1])
    if os.path.isdir(source):
        parquet = _files(source, [".parquet"])
        tars = _files(source, [".tar"])
        if parquet:
            ds = load_dataset("parquet", data_files={split: _split_files(parquet, split)}, split=split,
                              streaming=streaming, **load_kwargs)
        elif tars:
            ds = load_dataset("webdataset", data_files={split: _split_files(tars, split)}, split=split,
                              streaming=streaming, **load_kwargs)
        else:
            data_dir = os.path.join(source, split) if os.path.isdir(os.path.join(source, split)) else source
            ds = load_dataset("imagefolder", data_dir=data_dir, split="train", streaming=streaming, **load_kwargs)
    elif any(ch in source for ch in "*?") or source.endswith((".parquet", ".tar")):
        files = sorted(glob.glob(source))
        if not files:
            raise FileNotFoundError(f"No files match {source!r}")
        builder = "parquet" if files[0].endswith(".parquet") else "webdataset"
        ds = load_dataset(builder, data_files={split: files}, split=split, streaming=streaming, **load_kwargs)
    elif os.path.exists(source):
        raise ValueError(f"{source!r} is a file but not .parquet/.tar; pass a folder of images instead.")
    else:
        ds = load_dataset(source, name, split=split, streaming=streaming, **load_kwargs)

    image_key = find_image_column(ds)
    if isinstance(ds.features.get(image_key) if ds.features else None, ImageFeature):
        ds = ds.cast_column(image_key, ImageFeature(decode=False))
    elif _is_frame_list_feature(ds.features.get(image_key) if ds.features else None):
        # a column of clips stored as lists of frames: left undecoded too, so corrupt frames are counted skips
        from datasets import List as ListFeature

        ds = ds.cast_column(image_key, ListFeature(ImageFeature(decode=False)))
    if streaming and shuffle_buffer and shuffle_buffer > 1 and split == "train":
        ds = ds.shuffle(seed=seed, buffer_size=shuffle_buffer)
    rank, world = _dist_info()
    if shard_by_node and world > 1:
        ds = split_dataset_by_node(ds, rank=rank, world_size=world)
    return ds


def _split_files(files: List[str], split: str) -> List[str]:
    """Files whose path mentions the split (e.g. `train-0000.parquet`), else all of them."""
    picked = [f for f in files if split in os.path.relpath(f)]
    return picked or files


def find_image_column(ds) -> str:
    features = getattr(ds, "features", None) or {}
    from datasets import Image as ImageFeature

    for key, feat in features.items():
        if isinstance(feat, ImageFeature):
            return key
    for key, feat in features.items():  # clips stored as a list of frames (`List(Image())` / `Sequence(Image())`)
        if _is_frame_list_feature(feat):
            return key
    for key in IMAGE_KEYS:
        if key in features:
            return key
    if not features:  # unknown until iterated (some webdataset streams)
        return "image"
    raise ValueError(f"No image column found in {list(features)}; expected one of {IMAGE_KEYS}")


def _is_frame_list_feature(feat) -> bool:
    """True for a `datasets` list-of-images feature (`List(Image())`, `Sequence(Image())`): a clip column."""
    from datasets import Image as ImageFeature

    return feat is not None and not isinstance(feat, ImageFeature) and isinstance(getattr(feat, "feature", None),
                                                                                 ImageFeature)


PAIR_IMAGE_KEYS = ("image2", "image_2", "second_image", "right", "img2", "view2")


def find_pair_column(ds, first: str) -> Optional[str]:
    """The second image column of a paired dataset (stereo / multi-view pairs), or None when there is none:
    the next `datasets.Image` feature after `first`, else a conventional name (`image2`, `right`, ...)."""
    features = getattr(ds, "features", None) or {}
    from datasets import Image as ImageFeature

    for key, feat in features.items():
        if key != first and isinstance(feat, ImageFeature):
            return key
    for key in PAIR_IMAGE_KEYS:
        if key in features and key != first:
            return key
    return None


def find_label_column(ds) -> Optional[str]:
    features = getattr(ds, "features", None) or {}
    for key in LABEL_KEYS:
        if key in features:
            return key
    return None


# ----------------------------------------------------------------------------------------------------
# decoding with the corrupt-sample policy
# ----------------------------------------------------------------------------------------------------
class UndecodableImage(ValueError):
    pass


def decode_image(value: Any, mode: Optional[str] = "RGB") -> Image.Image:
    """Decode an image given as PIL image, `{"bytes", "path"}` dict, raw bytes, numpy array or path.
    Raises `UndecodableImage` with the reason for anything that is not a readable, non-empty image."""
    try:
        if isinstance(value, Image.Image):
            img = value
        elif isinstance(value, dict):
            data = value.get("bytes")
            if data is None and value.get("path"):
                with open(value["path"], "rb") as f:
                    data = f.read()
            if not data:
                raise UndecodableImage("empty image bytes")
            img = Image.open(io.BytesIO(data))
        elif isinstance(value, (bytes, bytearray)):
            if not value:
                raise UndecodableImage("empty image bytes")
            img = Image.open(io.BytesIO(value))
        elif isinstance(value, np.ndarray):
            img = Image.fromarray(value)
        elif isinstance(value, str):
            img = Image.open(value)
        else:
            raise UndecodableImage(f"unsupported image value of type {type(value).__name__}")
        img.load()
        if img.width == 0 or img.height == 0:
            raise UndecodableImage("zero-sized image")
        return img.convert(mode) if mode and img.mode != mode else img
    except UndecodableImage:
        raise
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError) as err:
        raise UndecodableImage(f"{type(err).__name__}: {err}") from err


def decode_frames(value: Any, mode: Optional[str] = "RGB") -> List[Image.Image]:
    """All frames / pages of one multi-frame file (animated GIF / APNG, multi-page TIFF: clips, volumes) as a list
    of PIL images, in file order (`PIL.ImageSequence`); a single-frame image gives a one-element list. A list /
    tuple of images (a dataset column of slices) decodes each element. `mode=None` keeps each page's own mode
    (e.g. 16-bit `I;16` TIFF slices). Raises `UndecodableImage` for anything unreadable, empty or truncated."""
    from PIL import ImageSequence

    if isinstance(value, (list, tuple)):
        if not value:
            raise UndecodableImage("empty frame list")
        return [decode_image(v, mode) for v in value]
    img = decode_image(value, None)
    try:
        frames = []
        for frame in ImageSequence.Iterator(img):
            frame.load()
            frame = frame.copy()
            frames.append(frame.convert(mode) if mode and frame.mode != mode else frame)
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise UndecodableImage(f"{type(err).__name__} while reading frames: {err}") from err
    if not frames:
        raise UndecodableImage("no frames")
    if any(f.size != frames[0].size for f in frames):
        raise UndecodableImage("frames of different sizes")
    return frames


# ----------------------------------------------------------------------------------------------------
# augmentations (PIL / numpy)
# ----------------------------------------------------------------------------------------------------
def random_resized_crop_box(width: int, height: int, scale: Sequence[float], ratio=(3 / 4, 4 / 3),
                            rng: np.random.Generator = None) -> Tuple[int, int, int, int]:
    """(left, top, w, h) of a random crop with area fraction in `scale` and aspect ratio in `ratio`
    (the Inception-style crop; falls back to a central crop after 10 failed draws)."""
    rng = rng or np.random.default_rng()
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), w, h
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (width - w) // 2, (height - h) // 2, w, h


def _adjust_hue(img: Image.Image, shift: float) -> Image.Image:
    hsv = np.array(img.convert("HSV"), dtype=np.uint8)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(round(shift * 255))) % 256
    return Image.fromarray(hsv, "HSV").convert("RGB")


def color_jitter(img: Image.Image, strength: Sequence[float], rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast, saturation and hue jitter in random order (SimCLR/BYOL style)."""
    b, c, s, h = strength
    ops = []
    if b > 0:
        ops.append(lambda im: ImageEnhance.Brightness(im).enhance(rng.uniform(max(0, 1 - b), 1 + b)))
    if c > 0:
        ops.append(lambda im: ImageEnhance.Contrast(im).enhance(rng.uniform(max(0, 1 - c), 1 + c)))
    if s > 0 and img.mode == "RGB":
        ops.append(lambda im: ImageEnhance.Color(im).enhance(rng.uniform(max(0, 1 - s), 1 + s)))
    if h > 0 and img.mode == "RGB":
        ops.append(lambda im: _adjust_hue(im, rng.uniform(-h, h)))
    for i in rng.permutation(len(ops)):
        img = ops[i](img)
    return img


class ImageAugment:
    """One random view: random resized crop to `size`, flip, colour jitter, grayscale, blur, solarize,
    then tensor + normalize. Probabilities and strengths come from the augmentation dict."""

    def __init__(self, size: int, scale: Sequence[float], mean: Sequence[float], std: Sequence[float],
                 horizontal_flip: float = 0.5, color_jitter: float = 0.0, color_jitter_strength=(0.4, 0.4, 0.4, 0.1),
                 grayscale: float = 0.0, gaussian_blur: float = 0.0, blur_sigma=(0.1, 2.0), solarize: float = 0.0,
                 random_field: float = 0.0, random_field_affine_strength: float = 1.0,
                 random_field_color_strength: float = 1.0, random_field_length_scale: float = 0.25,
                 defer_photometric: bool = False):
        self.size = size
        # True: leave colour jitter / grayscale / blur / solarize to `device_augment.DevicePhotometricAugment`
        # (batched on the training device); the crop, random fields and flip still happen here
        self.defer_photometric = bool(defer_photometric)
        self.scale = tuple(scale)
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
        self.horizontal_flip = horizontal_flip
        self.color_jitter = color_jitter
        self.color_jitter_strength = tuple(color_jitter_strength)
        self.grayscale = grayscale
        self.gaussian_blur = gaussian_blur
        self.blur_sigma = tuple(blur_sigma)
        self.solarize = solarize
        # Gaussian-random-field local affine + colour transforms (training/random_fields.py), after the crop
        from .random_fields import validate_random_field_params

        validate_random_field_params(random_field, random_field_affine_strength, random_field_color_strength,
                                     random_field_length_scale)
        self.random_field = float(random_field)
        self.random_field_params = dict(affine_strength=float(random_field_affine_strength),
                                        color_strength=float(random_field_color_strength),
                                        length_scale=float(random_field_length_scale))

    def __call__(self, img: Image.Image, rng: np.random.Generator, return_box: bool = False):
        left, top, w, h = random_resized_crop_box(img.width, img.height, self.scale, rng=rng)
        out = img.resize((self.size, self.size), Image.BICUBIC, box=(left, top, left + w, top + h))
        if self.random_field and rng.random() < self.random_field:
            from .random_fields import random_field_augment

            out = random_field_augment(out, rng, **self.random_field_params)
        flipped = rng.random() < self.horizontal_flip
        if flipped:
            out = ImageOps.mirror(out)
        if not self.defer_photometric:
            if self.color_jitter and rng.random() < self.color_jitter:
                out = color_jitter(out, self.color_jitter_strength, rng)
            if self.grayscale and out.mode == "RGB" and rng.random() < self.grayscale:
                out = out.convert("L").convert("RGB")
            if self.gaussian_blur and rng.random() < self.gaussian_blur:
                out = out.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*self.blur_sigma)))
            if self.solarize and rng.random() < self.solarize:
                out = ImageOps.solarize(out, threshold=128)
        tensor = to_normalized_tensor(out, self.mean, self.std)
        if return_box:
            return tensor, {"box": (left, top, w, h), "flipped": flipped, "image_size": (img.width, img.height)}
        return tensor


def to_normalized_tensor(img: Image.Image, mean: np.ndarray, std: np.ndarray) -> torch.Tensor:
    arr = np.asarray(img, dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy((arr - mean) / std)


# ----------------------------------------------------------------------------------------------------
# view policies
# ----------------------------------------------------------------------------------------------------
VIEW_POLICIES: Dict[str, Callable] = {}


def register_view_policy(name: str):
    """Decorator: `@register_view_policy("pair")` on a class `(config) -> callable(image, rng) -> dict`.
    Method folders can register their own policy this way."""

    def wrap(cls):
        VIEW_POLICIES[name] = cls
        return cls

    return wrap


def _augment_kwargs(aug: Dict[str, Any]) -> Dict[str, Any]:
    keys = ("horizontal_flip", "color_jitter", "color_jitter_strength", "grayscale", "gaussian_blur", "solarize",
            "random_field", "random_field_affine_strength", "random_field_color_strength", "random_field_length_scale")
    return {k: aug[k] for k in keys if k in aug}


class ViewPolicy:
    """Base: holds the config's normalization, image mode and augmentation dict.

    A policy whose outputs are all `augment(...)` views may set `supports_device_photometric = True` in its own class
    body (not inherited: a subclass that post-processes its parent's views must opt in itself): built with
    `device_photometric=True` it then leaves the photometric operations to the training device (see
    `training/device_augment.py`) and marks its examples with `photometric_on_device`."""

    supports_device_photometric = False

    def __init__(self, config, device_photometric: bool = False):
        self.config = config
        self.device_photometric = bool(device_photometric)
        self.aug = dict(config.augmentation)
        self.mean, self.std = config.image_mean, config.image_std
        self.mode = {1: "L", 3: "RGB"}.get(config.num_channels)
        if self.mode is None:
            raise ValueError(f"The built-in view policies handle 1 or 3 channels, got {config.num_channels}.")

    def augment(self, size: int, scale) -> ImageAugment:
        return ImageAugment(size, scale, self.mean, self.std, defer_photometric=self.device_photometric,
                            **_augment_kwargs(self.aug))

    def mark(self, out: Dict[str, Any]) -> Dict[str, Any]:
        """Flag an example whose photometric augmentation is left to the device."""
        if self.device_photometric:
            out["photometric_on_device"] = True
        return out


@register_view_policy("two_view")
class TwoViewPolicy(ViewPolicy):
    """Two independently augmented views (SimCLR / MoCo / BYOL)."""

    supports_device_photometric = True

    def __init__(self, config, device_photometric: bool = False):
        super().__init__(config, device_photometric)
        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.2, 1.0)))

    def __call__(self, img, rng):
        return self.mark({"pixel_values": [self.view(img, rng), self.view(img, rng)]})


@register_view_policy("multi_crop")
class MultiCropPolicy(ViewPolicy):
    """`num_global` crops at `config.image_size` and `num_local` small crops (SwAV / DINO multi-crop)."""

    supports_device_photometric = True

    def __init__(self, config, device_photometric: bool = False):
        super().__init__(config, device_photometric)
        a = self.aug
        self.num_global = int(a.get("num_global", 2))
        self.num_local = int(a.get("num_local", 0))
        self.global_view = self.augment(config.image_size, a.get("global_scale", (0.14, 1.0)))
        self.local_view = self.augment(int(a.get("local_size", 96)), a.get("local_scale", (0.05, 0.14)))

    def __call__(self, img, rng):
        views = [self.global_view(img, rng) for _ in range(self.num_global)]
        views += [self.local_view(img, rng) for _ in range(self.num_local)]
        return self.mark({"pixel_values": views})


@register_view_policy("masked")
class MaskedImagePolicy(ViewPolicy):
    """One augmented view plus a patch mask `bool_masked_pos` (random or block-wise, exact count)."""

    def __init__(self, config):
        super().__init__(config)
        from ..modeling.backbones import vit_grid

        self.view = self.augment(config.image_size, self.aug.get("crop_scale", (0.08, 1.0)))
        self.grid = vit_grid(config.backbone_config, (config.image_size, config.image_size))
        self.kind = self.aug.get("mask", "random")
        self.ratio = float(self.aug.get("mask_ratio", getattr(config, "mask_ratio", 0.75)))
        if self.kind not in ("random", "block"):
            raise ValueError(f"augmentation['mask'] must be 'random' or 'block', got {self.kind!r}")

    def __call__(self, img, rng):
        from ..modeling import masking

        n = self.grid[0] * self.grid[1]
        if self.kind == "block":
            mask = masking.block_mask(self.grid, self.ratio, rng=rng,
                                      min_block_patches=int(self.aug.get("min_block_patches", 16)))
        else:
            mask = masking.random_mask(n, self.ratio, rng=rng)
        return {"pixel_values": self.view(img, rng), "bool_masked_pos": torch.from_numpy(mask)}


@register_view_policy("eval")
class EvalPolicy(ViewPolicy):
    """Deterministic inference preprocessing (resize shorter side to size/0.875, center crop, normalize)."""

    def __init__(self, config):
        super().__init__(config)
        self.size = config.image_size
        self.resize = int(round(self.size / 0.875))
        self._mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        self._std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)

    def __call__(self, img, rng=None):
        w, h = img.size
        s = self.resize / min(w, h)
        img = img.resize((max(self.size, round(w * s)), max(self.size, round(h * s))), Image.BICUBIC)
        left = (img.width - self.size) // 2
        top = (img.height - self.size) // 2
        img = img.crop((left, top, left + self.size, top + self.size))
        return {"pixel_values": to_normalized_tensor(img, self._mean, self._std)}


def build_view_generator(config, policy: Optional[str] = None, device_photometric: bool = False):
    """The training view policy named by `config.augmentation["policy"]` (or `policy`).

    `device_photometric=True` leaves colour jitter / grayscale / blur / solarize to the training device
    (`SSLTrainer` applies `device_augment.DevicePhotometricAugment` to flagged batches); policies that do not
    support it (masked, paired, method-specific views) keep the full CPU pipeline, with a warning."""
    name = policy or config.augmentation.get("policy", "two_view")
    if name not in VIEW_POLICIES:
        raise ValueError(f"Unknown view policy {name!r}; registered: {sorted(VIEW_POLICIES)}")
    cls = VIEW_POLICIES[name]
    if device_photometric:
        # declared on the class itself: a subclass that post-processes its parent's views opts in explicitly
        if cls.__dict__.get("supports_device_photometric", False):
            return cls(config, device_photometric=True)
        logger.warning("View policy %r does not support device photometric augmentation; it stays on the CPU.",
                       name)
    return cls(config)


# ----------------------------------------------------------------------------------------------------
# torch dataset + collator
# ----------------------------------------------------------------------------------------------------
class SSLViewDataset(torch.utils.data.IterableDataset):
    """Decodes a (streaming) `datasets` dataset and applies a view generator.

    Each yielded example carries `num_skipped`: how many undecodable images were skipped since the previous
    yielded example of this worker, so the collated batch reports exactly how many were lost. With
    `with_labels=True` the dataset's label column is passed through as `labels`.

    A view policy with `wants_frames = True` (clips, volumes) receives the list of ALL frames / pages of each file
    (:func:`decode_frames`) instead of one image; its optional `frame_mode` attribute overrides the decode mode
    (`None` keeps each page's own mode, e.g. 16-bit TIFF slices)."""

    def __init__(self, dataset, view_generator: Callable, seed: int = 0, with_labels: bool = False,
                 image_key: Optional[str] = None, label_key: Optional[str] = None, image_mode: Optional[str] = "RGB"):
        super().__init__()
        self.dataset = dataset
        self.view_generator = view_generator
        self.seed = seed
        self.epoch = 0
        self.with_labels = with_labels
        self.image_key = image_key or find_image_column(dataset)
        self.label_key = label_key or (find_label_column(dataset) if with_labels else None)
        if with_labels and self.label_key is None:
            raise ValueError("with_labels=True but the dataset has no label column")
        self.image_mode = image_mode
        self.skipped_total = 0  # in this process (main-process iteration only)
        # view policies that consume image pairs (CroCo) declare `pair_image_key`: "auto" or a column name
        self.pair_key = None
        wanted = getattr(view_generator, "pair_image_key", None)
        if wanted:
            self.pair_key = find_pair_column(dataset, self.image_key) if wanted == "auto" else wanted
            if hasattr(view_generator, "set_pair_column"):
                view_generator.set_pair_column(self.pair_key)  # lets the policy refuse or fall back

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rank, _ = _dist_info()
        rng = np.random.default_rng([self.seed, self.epoch, rank, worker])
        pending_skips = 0
        for index, example in enumerate(self.dataset):
            raw = example.get(self.image_key)
            try:
                if raw is None:
                    raise UndecodableImage(f"missing image column {self.image_key!r}")
                if getattr(self.view_generator, "wants_frames", False):
                    # a policy may bring its own decoder (`frame_decoder`, e.g. video.decode_clip: PyAV, arrays)
                    decoder = getattr(self.view_generator, "frame_decoder", None) or decode_frames
                    img = decoder(raw, getattr(self.view_generator, "frame_mode", self.image_mode))
                else:
                    img = decode_image(raw, self.image_mode)
                pair = None
                if self.pair_key is not None:
                    raw2 = example.get(self.pair_key)
                    if raw2 is None:
                        raise UndecodableImage(f"missing pair image column {self.pair_key!r}")
                    pair = decode_image(raw2, self.image_mode)
            except UndecodableImage as err:
                pending_skips += 1
                self.skipped_total += 1
                where = raw.get("path") if isinstance(raw, dict) else None
                logger.warning("Skipping undecodable image #%d%s: %s", index, f" ({where})" if where else "", err)
                continue
            # policies that read other columns (captions, labels: image-text methods) set `wants_example = True`
            extra = {"example": example} if getattr(self.view_generator, "wants_example", False) else {}
            out = (self.view_generator(img, rng, **extra) if pair is None
                   else self.view_generator(img, rng, pair=pair, **extra))
            if self.with_labels:
                out["labels"] = int(example[self.label_key])
            out["num_skipped"] = pending_skips
            pending_skips = 0
            yield out
        if pending_skips:  # trailing bad images: report them with an empty marker example
            yield {"num_skipped": pending_skips, "_empty": True}


class SSLDataCollator:
    """Stacks per-example views into batch tensors.

    A list-valued field (multi-crop) becomes a list of `[B, ...]` tensors, one per view position; tensors
    are stacked; `labels` become a LongTensor; `num_skipped` is summed into a 0-d tensor."""

    def __call__(self, examples: List[Dict[str, Any]]) -> Dict[str, Any]:
        skipped = sum(int(e.get("num_skipped", 0)) for e in examples)
        examples = [e for e in examples if not e.get("_empty")]
        batch: Dict[str, Any] = {}
        if examples:
            for key in examples[0]:
                if key == "num_skipped":
                    continue
                values = [e[key] for e in examples]
                first = values[0]
                if isinstance(first, (list, tuple)):
                    batch[key] = [torch.stack([v[i] for v in values]) for i in range(len(first))]
                elif isinstance(first, torch.Tensor):
                    batch[key] = torch.stack(values)
                elif key == "labels" or isinstance(first, (int, np.integer)):
                    batch[key] = torch.tensor(values, dtype=torch.long)
                elif isinstance(first, float):
                    batch[key] = torch.tensor(values, dtype=torch.float32)
                else:
                    batch[key] = values
        batch["num_skipped"] = torch.tensor(skipped, dtype=torch.long)
        return batch


def labeled_eval_dataset(source: str, split: str, config, max_samples: Optional[int] = None):
    """A labeled stream preprocessed for feature extraction (no augmentation, no shuffling)."""
    ds = load_image_stream(source, split=split, shuffle_buffer=0, shard_by_node=False)
    if max_samples:
        ds = ds.take(max_samples)
    mode = {1: "L", 3: "RGB"}.get(config.num_channels)
    # methods whose inputs are not single images (clips, volumes) name their deterministic policy
    policy = (getattr(config, "augmentation", None) or {}).get("eval_policy", "eval")
    return SSLViewDataset(ds, build_view_generator(config, policy), with_labels=True, image_mode=mode)


__all__ = [
    "DEFAULT_DATASET", "materialize_builtin", "available_builtin_datasets", "register_builtin_dataset",
    "load_image_stream", "find_image_column", "find_label_column", "decode_image", "decode_frames",
    "UndecodableImage", "ImageAugment", "random_resized_crop_box", "color_jitter", "VIEW_POLICIES",
    "register_view_policy", "build_view_generator", "SSLViewDataset", "SSLDataCollator", "labeled_eval_dataset",
]
