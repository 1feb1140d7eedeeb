"""TokenCut: unsupervised object discovery with a Normalized Cut on self-supervised ViT patch features.

Paper: Yangtao Wang, Xi Shen, Shell Xu Hu, Yuan Yuan, James L. Crowley, Dominique Vaufreydaz, "Self-Supervised
Transformers for Unsupervised Object Discovery using Normalized Cut", CVPR 2022, arXiv:2202.11539.
Official code: https://github.com/YangtaoWANG95/TokenCut

As implemented (`tokencut`): patch features are L2-normalised; the graph has edge weight 1 where the cosine
similarity exceeds `tau` (0.2) and `eps` (1e-5) elsewhere; the generalized eigenproblem `(D - W) x = lambda D x` is
solved (as the symmetric problem `D^-1/2 (D - W) D^-1/2 y = lambda y`, `x = D^-1/2 y`) and its second smallest
eigenvector is split at its mean; the foreground is the side holding the patch with the largest |eigenvector|
value; the object is the 4-connected component of the foreground containing that patch, and its bounding box.
`vit_patch_features` runs any ViT (an hf_ssl model's encoder or a stock `ViTModel`) and returns the keys of its
last attention layer (as the official code does with DINO), falling back to the last hidden states.
TokenCut is an inference-time procedure, not a training method (no registry entry).

Deviations from the paper / official code:
1. Eigenvectors come from `torch.linalg.eigh` on the normalized Laplacian (float64) instead of
   `scipy.linalg.eigh(D - W, D)`; the solution is the same.
2. The CLI resizes the image to the encoder's configured resolution (the official demo keeps the image size,
   cropping it to a multiple of the patch size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class TokenCutResult:
    """mask: `[h, w]` bool patch mask of the discovered object (the connected component); bipartition: `[h, w]`
    bool foreground side of the cut; eigenvector: `[h, w]` second smallest generalized eigenvector (sign flipped
    so the foreground is the larger side at the seed); seed: (row, col) of the max-|eigenvector| patch;
    box: (x0, y0, x1, y1) in patch units (x1, y1 exclusive), or in pixels when `patch_size` was given."""

    mask: np.ndarray
    bipartition: np.ndarray
    eigenvector: np.ndarray
    seed: Tuple[int, int]
    box: Tuple[int, int, int, int]


def _connected_component(mask: np.ndarray, seed: Tuple[int, int]) -> np.ndarray:
    """4-connected component of `mask` containing `seed` (flood fill)."""
    h, w = mask.shape
    out = np.zeros_like(mask, dtype=bool)
    if not mask[seed]:
        return out
    stack = [seed]
    out[seed] = True
    while stack:
        r, c = stack.pop()
        for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not out[rr, cc]:
                out[rr, cc] = True
                stack.append((rr, cc))
    return out


def tokencut(features: torch.Tensor, grid: Sequence[int], tau: float = 0.2, eps: float = 1e-5,
             patch_size: Optional[int] = None) -> TokenCutResult:
    """Normalized-cut foreground of `features` (`[N, D]` patch features laid out row-major on `grid` = (h, w))."""
    if features.dim() != 2:
        raise ValueError(f"features must be [num_patches, dim], got shape {tuple(features.shape)}")
    h, w = int(grid[0]), int(grid[1])
    if h * w != features.shape[0]:
        raise ValueError(f"grid {h}x{w} does not match {features.shape[0]} patches")
    if h * w < 3:
        raise ValueError("TokenCut needs at least 3 patches")
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    f = F.normalize(features.detach().double(), dim=1)
    sim = f @ f.T
    weights = torch.where(sim > tau, torch.ones_like(sim), torch.full_like(sim, eps))
    degree = weights.sum(dim=1)
    d_inv_sqrt = degree.rsqrt()
    laplacian = torch.diag(degree) - weights
    sym = d_inv_sqrt[:, None] * laplacian * d_inv_sqrt[None, :]
    _, vecs = torch.linalg.eigh((sym + sym.T) / 2)
    vec = (d_inv_sqrt * vecs[:, 1]).numpy()
    part = vec > vec.mean()
    seed_index = int(np.argmax(np.abs(vec)))
    if not part[seed_index]:
        vec, part = -vec, ~part
    part = part.reshape(h, w)
    seed = (seed_index // w, seed_index % w)
    comp = _connected_component(part, seed)
    rows, cols = np.nonzero(comp)
    box = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)
    if patch_size:
        box = tuple(int(v * patch_size) for v in box)
    return TokenCutResult(mask=comp, bipartition=part, eigenvector=vec.reshape(h, w), seed=seed, box=box)


def _vit_key_module(vit):
    layers = vit.layers if hasattr(vit, "layers") else vit.encoder.layer
    attn = layers[-1].attention
    return getattr(attn, "k_proj", None) or getattr(getattr(attn, "attention", None), "key", None)


@torch.no_grad()
def vit_patch_features(vit, pixel_values: torch.Tensor, use_keys: bool = True) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Patch features `[N, D]` of the first image and the patch grid: the last attention layer's keys (official
    TokenCut / DINO "k" features) or, with `use_keys=False` or no key projection found, the last hidden states."""
    if getattr(vit.config, "model_type", None) != "vit":
        raise ValueError(f"TokenCut needs a ViT encoder, got model_type {getattr(vit.config, 'model_type', None)!r}")
    grid = (pixel_values.shape[-2] // vit.config.patch_size, pixel_values.shape[-1] // vit.config.patch_size)
    captured = {}
    module = _vit_key_module(vit) if use_keys else None
    handle = module.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o)) if module is not None else None
    try:
        out = vit(pixel_values=pixel_values[:1], interpolate_pos_encoding=True)
    finally:
        if handle is not None:
            handle.remove()
    tokens = captured["k"] if "k" in captured else out.last_hidden_state
    return tokens[0, 1:].reshape(grid[0] * grid[1], -1), grid


def load_vit(path: str):
    """A ViT from an hf_ssl checkpoint (its exported encoder attribute) or a stock ViTModel folder, plus the
    normalization (mean, std) and input size to use."""
    import json
    import os

    import hf_ssl  # noqa: F401  (registers the Auto classes)
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()
    if config.model_type.startswith("hf_ssl_"):
        vit = getattr(model, model.export_attribute)
        mean, std, size = config.image_mean, config.image_std, config.image_size
    else:
        vit = model
        pp_file = os.path.join(path, "preprocessor_config.json")
        pp = json.load(open(pp_file)) if os.path.exists(pp_file) else {}
        mean = pp.get("image_mean", [0.485, 0.456, 0.406])
        std = pp.get("image_std", [0.229, 0.224, 0.225])
        size = vit.config.image_size
    size = size[0] if isinstance(size, (list, tuple)) else size
    return vit.eval(), list(mean), list(std), int(size)


def run_tokencut(model_dir: str, image_path: str, output_path: Optional[str] = None, tau: float = 0.2,
                 eps: float = 1e-5, size: Optional[int] = None) -> dict:
    """Discover the main object of an image with a ViT; optionally save a picture with the mask and box drawn.
    Returns {"box": (x0, y0, x1, y1) in original-image pixels, "mask": [h, w] bool patch mask, "grid": (h, w)}."""
    from PIL import Image, ImageDraw

    vit, mean, std, default_size = load_vit(model_dir)
    size = size or default_size
    patch = vit.config.patch_size
    size = max(patch, size // patch * patch)
    channels = getattr(vit.config, "num_channels", 3)
    img = Image.open(image_path).convert("RGB" if channels == 3 else "L")
    arr = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    x = (arr - np.asarray(mean, dtype=np.float32)[:, None, None]) / np.asarray(std, dtype=np.float32)[:, None, None]
    feats, grid = vit_patch_features(vit, torch.from_numpy(x)[None])
    result = tokencut(feats.float(), grid, tau=tau, eps=eps, patch_size=patch)
    sx, sy = img.width / size, img.height / size
    x0, y0, x1, y1 = result.box
    box = (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
    if output_path:
        canvas = img.convert("RGB")
        mask_img = Image.fromarray(result.mask.astype(np.uint8) * 255).resize(canvas.size, Image.NEAREST)
        overlay = Image.new("RGB", canvas.size, (255, 0, 0))
        canvas = Image.composite(Image.blend(canvas, overlay, 0.45), canvas, mask_img)
        ImageDraw.Draw(canvas).rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=(0, 255, 0), width=2)
        canvas.save(output_path)
    return {"box": box, "mask": result.mask, "grid": grid}


__all__ = ["tokencut", "TokenCutResult", "vit_patch_features", "load_vit", "run_tokencut"]
