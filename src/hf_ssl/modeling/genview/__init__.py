"""GenView: adaptive view generation and a quality-driven contrastive loss.

Xiaojie Li, Yibo Yang, Xiangtai Li, Jianlong Wu, Yue Yu, Bernard Ghanem, Min Zhang. "GenView: Enhancing View Quality
with Pretrained Generative Model for Self-Supervised Learning", ECCV 2024 (arXiv:2403.12003). Official code:
https://github.com/xiaojieli0903/genview (`mmpretrain/models/selfsup/mocov3.py`, `configs_genview/mocov3/*clipmask*`,
`tools/toolbox_genview/`).

Method (as in the official MoCo v3 variant):

* Views: one view of each positive pair is made from the original image, the other from a generated variation
  (Stable unCLIP conditioned on the image embedding). Adaptive generation: the generator's noise level grows with the
  image's foreground proportion, so images dominated by their object get stronger variations while small objects are
  preserved. The generator is pluggable: any `fn(image, noise_level, rng) -> image`, named by import path in
  `augmentation["generator"]` (see `generators.py`; nothing is downloaded).
* Quality-driven contrastive loss: a frozen encoder gives patch tokens of both views; their projection on a
  foreground direction, min-max normalised, gives soft foreground / background maps (each normalised to sum 1);
  foreground- and background-pooled features are compared across the two views, and each pair is weighted by
  `exp(gamma * (sim_fg - sim_bg))`, normalised to mean 1 over the batch: pairs that share their object but not their
  background count more, pairs whose similarity comes from the background count less.
* Base method MoCo v3 (ResNet-50): projector 2048-4096-256 with BN and an affine-free last BN, predictor 256-4096-256,
  momentum encoder with momentum 0.99 -> 1 (half-cosine), loss `2 tau CE(q k^T / tau)` over the keys of all
  processes, tau = 1 (ResNet), symmetrised; LARS lr 9.6, weight decay 1e-6, batch 4096, 100 epochs.

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on the 32 px built-in digits (`vit-micro` so the
token grid is 8 x 8, 512-128 heads, tau 0.2 as for ViTs, the model-free `diffusion_like_variation` generator). Not a
paper setting.

Deviations from the paper / official code:

1. The paper scores views with a frozen CLIP ConvNeXt and a PCA foreground vector computed offline; neither can be
   shipped or downloaded here. The default `quality_scorer="momentum"` uses the momentum encoder's own last feature
   map (stop-gradient) and tracks the foreground direction online: the first principal direction of the global
   batch's tokens (power iteration on the all-reduced covariance), signed so that central tokens project higher
   (a centre prior), smoothed by an EMA. `quality_scorer="external"` with `set_quality_scorer` /
   `set_foreground_direction` reproduces the paper's setting with any frozen encoder.
2. The quality weights are normalised over the GLOBAL batch (all-reduced sum) so that training on N processes equals
   one process on the concatenated batch; the official code normalises per GPU.
3. The foreground proportion that selects the noise level is estimated without a model (`views_genview.
   foreground_ratio`: distance to the border's median colour, Otsu threshold); thresholds (0.1, 0.2, 0.3, 0.4) ->
   noise levels (0, 100, 200, 300, 400) are hf_ssl's defaults (the paper's levels, a monotone rule). Pass another
   generator or policy to change them.
4. Generation runs in the data pipeline on the fly (the official pipeline pre-generates variations offline); the
   momentum update runs after the optimizer step (`on_step_end`) rather than at the start of the next forward (the
   same sequence of weights). Per-process BatchNorm (the official configs use SyncBN).
"""

from ..registry import MethodSpec
from . import views_genview  # noqa: F401  (registers the "genview" view policy)
from .configuration_genview import GenViewConfig
from .image_processing_genview import GenViewImageProcessor
from .modeling_genview import GenViewForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "vit-micro",
    "image_size": 32,
    "projection_hidden_dim": 512,
    "projection_dim": 128,
    "predictor_hidden_dim": 512,
    "contrastive_temperature": 0.2,
    "augmentation": {"crop_scale": [0.4, 1.0], "view_gaussian_blur": [0.0, 0.0], "view_solarize": [0.0, 0.0],
                     "horizontal_flip": 0.0, "generator": "hf_ssl.modeling.genview.generators:diffusion_like_variation"},
}

METHOD = MethodSpec(
    name="genview",
    config_class=GenViewConfig,
    model_class=GenViewForSelfSupervisedPretraining,
    image_processor_class=GenViewImageProcessor,
    family="contrastive (generated views)",
    description=(
        "MoCo v3 with adaptively generated second views (pluggable image-to-image generator, noise level from the "
        "foreground proportion) and a quality-driven loss weighting pairs by foreground vs background similarity."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 400, "learning_rate": 3e-4},
)

__all__ = ["GenViewConfig", "GenViewForSelfSupervisedPretraining", "GenViewImageProcessor", "METHOD",
           "CPU_DEMO_PRESET"]
