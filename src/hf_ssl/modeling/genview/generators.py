"""Image-to-image generators for GenView's view generation.

GenView (Li et al., ECCV 2024) generates variations of each training image offline or on the fly with Stable
unCLIP (`diffusers.StableUnCLIPImg2ImgPipeline`, image-embedding conditioned, `noise_level` = the amount of noise
added to the conditioning embedding). hf_ssl does not depend on diffusers and downloads nothing; any callable
`fn(image: PIL.Image, noise_level: int, rng: np.random.Generator) -> PIL.Image` can be named in
`GenViewConfig.augmentation["generator"]` as `"package.module:function"`, e.g. a thin wrapper around a diffusers
pipeline loaded from a local directory:

    pipe = StableUnCLIPImg2ImgPipeline.from_pretrained("/models/stable-diffusion-2-1-unclip")
    def unclip_variation(image, noise_level, rng):
        g = torch.Generator().manual_seed(int(rng.integers(2**31)))
        return pipe(image, noise_level=noise_level, num_inference_steps=20, generator=g).images[0]

`diffusion_like_variation` below is a small, model-free stand-in used by the tests and the CPU demo: it is NOT
a generative model and adds no new content; it perturbs the image the way a forward diffusion step at the given
noise level would (mixing with Gaussian noise) and smooths the result back, so stronger levels give stronger,
content-preserving variations.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def diffusion_like_variation(image: Image.Image, noise_level: int, rng: np.random.Generator) -> Image.Image:
    """`x' = blur(sqrt(1 - t) x + sqrt(t) eps)` with `t = noise_level / 1000` (unCLIP's levels run 0..1000)."""
    t = float(np.clip(noise_level / 1000.0, 0.0, 1.0))
    if t == 0.0:
        return image.copy()
    arr = np.asarray(image, dtype=np.float32) / 255.0
    noisy = np.sqrt(1.0 - t) * arr + np.sqrt(t) * rng.normal(0.5, 0.25, size=arr.shape).astype(np.float32)
    out = Image.fromarray((np.clip(noisy, 0, 1) * 255).round().astype(np.uint8), mode=image.mode)
    return out.filter(ImageFilter.GaussianBlur(radius=0.5 + 2.0 * t * min(image.size) / 64))


__all__ = ["diffusion_like_variation"]
