"""MFM: Masked Frequency Modeling for Self-Supervised Visual Pre-Training.

Jiahao Xie, Wei Li, Xiaohang Zhan, Ziwei Liu, Yew Soon Ong, Chen Change Loy. ICLR 2023 (arXiv:2206.07706).
Official code: https://github.com/Jiahao000/MFM.

Method (as in the official `models/mfm.py`, `models/frequency_loss.py`, `data/data_mfm.py`):

* Each image (random resized crop, scale (0.2, 1), flip; no colour augmentation) is filtered in the frequency
  domain: 2-D FFT of the [0, 1] image, `fftshift`, a circular mask of radius 16 (224 px) keeps either the low
  frequencies (distance < 16, low-pass) or the rest (high-pass), chosen per image (low-pass with probability 0.5
  for ViT, 0.3 in the ResNet-50 recipe), inverse FFT (real part), clamp to [0, 1], normalize.
* The encoder sees the whole corrupted image (no mask token, no dropped patches).
* A linear head predicts the original image: 1x1 conv to `stride**2 * C` channels + pixel shuffle on the encoder's
  last feature map (ViT: patch tokens without CLS, stride 16; Swin/ResNet-50: last stage, stride 32).
* Loss: orthonormal FFT of prediction and (normalized) original, per-frequency distance
  `sqrt(dRe^2 + dIm^2) ** loss_gamma` (gamma 1; the focal-frequency weight matrix exists but is off in the released
  recipe), averaged over the removed frequencies only and the channels.

Deviations from the paper / official code:

1. Encoders are stock transformers models (ViT with learned absolute positions as the official `USE_APE: True`; no
   drop path, LayerNorm eps of the transformers config). The official ViT-B is a BEiT-style ViT.
2. The filtering runs inside the model on the normalized `pixel_values` (un-normalized with `config.image_mean/std`,
   filtered, clamped, re-normalized), which equals the official data-side filtering of [0, 1] images.
3. `embeddings` in the output are the spatially pooled last feature map of the corrupted image (no extra forward).
4. The optional focal weighting normalises by the per-(image, channel) maximum only (official `batch_matrix` and
   `log_matrix` variants are not offered); the official `MASK_RADIUS2` outer radius (999, i.e. unused) is not
   exposed. The SR/deblur/denoise corruption baselines of the official repository are not implemented.
"""

from ..registry import MethodSpec
from . import views_mfm  # noqa: F401  (registers the "frequency_masked" view policy)
from .configuration_mfm import MFMConfig
from .image_processing_mfm import MFMImageProcessor
from .modeling_mfm import MFMForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="mfm",
    config_class=MFMConfig,
    model_class=MFMForSelfSupervisedPretraining,
    image_processor_class=MFMImageProcessor,
    family="masked image modeling",
    description=(
        "Masked Frequency Modeling: a random low- or high-pass filter removes part of the image spectrum, the "
        "encoder sees the whole corrupted image and a linear head predicts the image; the loss is the frequency "
        "distance on the removed frequencies. ViT and ConvNet encoders."
    ),
    presets={
        # ViT: 400 steps at AdamW 1e-3 give k-NN 0.573 -> 0.677 on the digits; the same budget on resnet-tiny
        # (random-init k-NN 0.907) loses accuracy (0.753 at best, lr 1e-4), so the short demo uses the ViT
        "cpu-demo": dict(backbone_config="vit-micro", image_size=32, mask_radius=4, feature_pooling="mean",
                         augmentation={"crop_scale": [0.5, 1.0], "horizontal_flip": 0.0}),
    },
)

__all__ = ["MFMConfig", "MFMForSelfSupervisedPretraining", "MFMImageProcessor", "METHOD"]
