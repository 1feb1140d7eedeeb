"""SatVision-TOA: SimMIM pretraining of a SwinV2 on multi-band (14-band MODIS top-of-atmosphere) imagery.

Caleb S. Spradlin, Jordan A. Caraballo-Vega, Jian Li, Mark L. Carroll, Jie Gong, Paul M. Montesano. "SatVision-TOA:
A Geospatial Foundation Model for Coarse-Resolution All-Sky Remote Sensing Imagery", NASA, arXiv:2411.17000 (2024).
Official code: https://github.com/nasa-nccs-hpda/satvision-toa. The objective is SimMIM: Zhenda Xie et al., "SimMIM: A
Simple Framework for Masked Image Modeling", CVPR 2022 (https://github.com/microsoft/SimMIM).

Method (official `satvision_toa/models/mim.py`, `transforms/mim_modis_toa.py`, pretraining configs):

* Input: 128 x 128 chips with 14 bands; random resized crop (scale (0.67, 1), ratio (3/4, 4/3)), resize; per-band
  scaling/normalization.
* Mask: random masking of `ceil(n * 0.6)` cells of a coarse grid of `mask_patch_size` (8 px in SatVision-TOA; 32 px
  in SimMIM's ImageNet recipe) upsampled to the encoder's patch grid (patch 4).
* Encoder: SwinV2 (SatVision-TOA giant: embed 512, depths [2, 2, 42, 2], heads [16, 32, 64, 128], window 8) whose
  masked patch embeddings are replaced by a learned mask token (trunc-normal 0.02) before the transformer; ViTs are
  supported the same way (SimMIM's ViT variant).
* Head: one linear layer: 1x1 conv to `stride**2 * C` channels + pixel shuffle (stride 32 for SwinV2, patch size for
  ViT) on the final feature map.
* Loss: L1 between reconstruction and input over the masked pixels only, divided by the channel count.

Deviations from the paper / official code:

1. Encoders are stock transformers `Swinv2Model` / `ViTModel` (built with `use_mask_token=True`); the official
   SwinV2-giant has extra LayerNorms every 6 blocks (`NORM_PERIOD: 6`) that transformers' SwinV2 lacks; no drop
   path (official 0.1) and no gradient checkpointing by default.
2. The official MODIS-specific `MinMaxEmissiveScaleReflectance` scaling is data preparation and is not reproduced;
   inputs are normalized per band with `image_mean` / `image_std` (defaults 0 / 1 for multi-band configs, i.e. the
   chips are expected to be scaled already).
3. Crops are resized with antialiased bilinear interpolation on tensors (official: torchvision `Resize`); an optional
   horizontal flip exists (off by default, as in the official transform).
4. `embeddings` in the output are the spatial mean of the masked-input feature map; `get_image_features` pools the
   unmasked image.
5. The exported encoder keeps its `embeddings.mask_token` parameter; plain `AutoModel.from_pretrained` ignores it
   (a load-time notice) and gives identical features.
6. The built-in streaming dataset decodes images with PIL; multi-band training data must reach the
   `multiband_masked` view policy as numpy arrays / tensors (the policy and the image processor accept them).
"""

from ..registry import MethodSpec
from . import views_satvision  # noqa: F401  (registers the "multiband_masked" view policy)
from .configuration_satvision import SatVisionConfig
from .image_processing_satvision import SatVisionImageProcessor
from .modeling_satvision import SatVisionForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="satvision",
    config_class=SatVisionConfig,
    model_class=SatVisionForSelfSupervisedPretraining,
    image_processor_class=SatVisionImageProcessor,
    family="masked image modeling",
    description=(
        "SatVision-TOA: SimMIM on multi-band (14-band MODIS TOA) chips with a SwinV2 encoder: a learned mask token "
        "replaces 60% of coarse mask patches, a linear pixel-shuffle head reconstructs the image and an L1 loss covers "
        "the masked pixels only."
    ),
    presets={
        "cpu-demo": dict(backbone_config="vit-micro", image_size=32, num_channels=3, mask_patch_size=8,
                         mask_ratio=0.6, feature_pooling="mean",
                         augmentation={"crop_scale": [0.5, 1.0], "horizontal_flip": 0.0, "rescale_factor": 1.0}),
        "satvision-toa-giant": dict(),
    },
    # 400 steps of batch 64 at AdamW 3e-4: k-NN 0.573 -> 0.627 on the digits (1e-3: 0.570, no gain)
    demo_training={"max_steps": 400, "learning_rate": 3e-4},
)

__all__ = ["SatVisionConfig", "SatVisionForSelfSupervisedPretraining", "SatVisionImageProcessor", "METHOD"]
