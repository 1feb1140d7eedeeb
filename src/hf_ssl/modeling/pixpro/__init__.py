"""PixPro: pixel-level consistency with a pixel propagation module.

Paper: Zhenda Xie, Yutong Lin, Zheng Zhang, Yue Cao, Stephen Lin, Han Hu, "Propagate Yourself: Exploring
Pixel-Level Consistency for Unsupervised Visual Representation Learning", CVPR 2021, arXiv:2011.10043.
Official code: https://github.com/zdaxie/PixPro

Method as implemented: two augmented views of an image; each view's crop box (and flip) in the original image is
kept (`views_pixpro.py`), so every cell of the encoder's last feature map has a known centre in the original
image. Cells i (view 1) and j (view 2) are a positive pair when their centre distance divided by the larger cell
diagonal is < 0.7. The online branch is encoder -> 1x1-conv projector (conv-BN-ReLU-conv) -> pixel propagation
module (PPM: `z_i = sum_j max(cos(y_i, y_j), 0)^gamma g(y_j)`, gamma 2, g a 1x1 conv). The momentum branch is an
EMA copy of encoder + projector (momentum 0.99 -> 1, cosine). Loss: `-2 x` the mean cosine between PPM outputs
and momentum features over positive pairs (per image, averaged over the batch), symmetrised over the two views.
The dense representation is the encoder's last feature map (`get_dense_features`); `get_image_features`
mean-pools it.

Deviations from the paper / official code:
1. The instance-level branch (PixPro + BYOL-style instance loss, `--pixpro-ins-loss-weight`) and the PixContrast
   variant are not implemented; the default official recipe (`pixpro_base_r50_*ep.sh`) uses weight 0.
2. Augmentation is symmetric (blur p=0.5 on both views, no solarize) instead of BYOL's asymmetric blur
   (1.0 / 0.1) and solarize (0 / 0.2); crop scale 0.08-1 as official.
3. The EMA update also copies BN running statistics from the online to the momentum encoder (shared
   `ema_update_`); the official code leaves them to the momentum encoder's own forward passes. Both branches run in
   train mode, so training losses are unaffected.
4. The EMA update runs after each optimizer step (`on_step_end`) rather than at the start of the next forward;
   the momentum value for step k is the same.
5. No LARS optimizer / SyncBN: the shared SSLTrainer optimizer is used and BN is per-process.
"""

from ..registry import MethodSpec
from . import views_pixpro  # noqa: F401  (registers the "pixpro" view policy)
from .configuration_pixpro import PixProConfig
from .image_processing_pixpro import PixProImageProcessor
from .modeling_pixpro import PixProForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    # a 2-stage ResNet keeps an 8x stride: 32 px digits give a 4x4 feature map with useful correspondences
    "backbone_config": dict(model_type="resnet", layer_type="basic", depths=[1, 1], embedding_size=32,
                            hidden_sizes=[64, 128]),
    "image_size": 32,
    "projection_hidden_dim": 256,
    "projection_dim": 64,
    "base_momentum": 0.99,
    "augmentation": {"crop_scale": [0.3, 1.0], "gaussian_blur": 0.0, "color_jitter_strength": [0.4, 0.4, 0.2, 0.1]},
}

METHOD = MethodSpec(
    name="pixpro",
    config_class=PixProConfig,
    model_class=PixProForSelfSupervisedPretraining,
    image_processor_class=PixProImageProcessor,
    family="dense / pixel-level consistency",
    description=(
        "Pixel-to-propagation consistency: PPM-smoothed online feature maps match a momentum encoder's feature "
        "maps at spatially corresponding pixels of two crops (distance < 0.7 cell diagonals)."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 100, "learning_rate": 1e-3},
)

__all__ = ["PixProConfig", "PixProForSelfSupervisedPretraining", "PixProImageProcessor", "METHOD", "CPU_DEMO_PRESET"]
