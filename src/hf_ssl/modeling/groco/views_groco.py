"""The `"groco"` view policy: DINO-style asymmetric global views plus optional local crops.

Official (`learning_by_sorting/dataloader/transforms.py`): global views are RandomResizedCrop(224, scale 0.14-1,
bicubic), flip 0.5, ColorJitter(0.4, 0.4, 0.2, 0.1) w.p. 0.8, grayscale 0.2, then view 1 Gaussian blur p=1.0 and
view 2 blur p=0.1 + solarize p=0.2; a third/fourth global view repeats the transforms of views 1/2. The multi-crop
recipe adds 6 local crops (96 px, scale 0.05-0.14) with blur p=0.5 and no solarize. The per-view probabilities are
`augmentation["global_gaussian_blur"]` / `["global_solarize"]` (lists, cycled over the global views) and
`["local_gaussian_blur"]`.
"""

from __future__ import annotations

from ...training.data import ImageAugment, ViewPolicy, register_view_policy


def _cycled(value, index: int) -> float:
    if isinstance(value, (list, tuple)):
        return float(value[index % len(value)])
    return float(value)


@register_view_policy("groco")
class GroCoViewPolicy(ViewPolicy):
    def __init__(self, config):
        super().__init__(config)
        a = self.aug
        common = {k: a[k] for k in ("horizontal_flip", "color_jitter", "color_jitter_strength", "grayscale") if k in a}
        self.num_global = int(a.get("num_global", 2))
        self.num_local = int(a.get("num_local", 0))
        global_scale = a.get("global_scale", (0.14, 1.0))
        blur, solarize = a.get("global_gaussian_blur", [1.0, 0.1]), a.get("global_solarize", [0.0, 0.2])
        self.global_views = [
            ImageAugment(config.image_size, global_scale, self.mean, self.std, gaussian_blur=_cycled(blur, i),
                         solarize=_cycled(solarize, i), **common)
            for i in range(self.num_global)
        ]
        self.local_view = ImageAugment(int(a.get("local_size", 96)), a.get("local_scale", (0.05, 0.14)), self.mean,
                                       self.std, gaussian_blur=float(a.get("local_gaussian_blur", 0.5)), **common)

    def __call__(self, img, rng):
        views = [view(img, rng) for view in self.global_views]
        views += [self.local_view(img, rng) for _ in range(self.num_local)]
        return {"pixel_values": views}


__all__ = ["GroCoViewPolicy"]
