"""CropMAE: Efficient Image Pre-Training with Siamese Cropped Masked Autoencoders.

Alexandre Eymael, Renaud Vandeghen, Anthony Cioppa, Silvio Giancola, Bernard Ghanem, Marc Van Droogenbroeck. ECCV 2024
(arXiv:2403.17823). Official code: https://github.com/alexandre-eymael/CropMAE.

Method (official `models/SiamMAE.py`, `models/components/DecoderBlock.py`, `data/util/CropMAEStrategies.py`,
`scripts/train_cropmae_in.sh`):

* Views (`GlobalToLocal`): a random resized crop of the image (area (0.1, 1), ratio (3/4, 4/3), 224 px) is the first
  view; a random resized crop of the first view (area (0.3, 0.6)) resized to 224 px is the second; each view is
  flipped independently (p 0.5) and ImageNet-normalized; no colour augmentation.
* A siamese ViT (shared weights) encodes the whole first view and only the visible patches of the second view
  (mask ratio 98.5%: `int(196 * 0.015) = 2` visible patches), both with CLS.
* Decoder (256 wide, 4 blocks, 8 heads for ViT-S/16): both token sets are embedded by one linear map; the second
  view's sequence gets mask tokens and fixed sin-cos positions; each post-norm block does cross-attention to the
  first view's tokens, then a GELU MLP (2048 hidden), then self-attention (dropout 0.1); final LayerNorm, linear
  pixel head.
* Loss: MSE to per-patch normalized pixels (`--norm_pix_loss`) averaged over the masked patches of the second view.

Deviations from the paper / official code:

1. Stock transformers `ViTModel` encoder; its position table is filled with MAE's fixed 2-D sin-cos values and frozen
   (`encoder_sincos_pos_embed=True`, as the official encoder; set False for learned positions); LayerNorm eps from the
   transformers config.
2. Decoder attention uses `heads.Attention` (fused key/value projection) instead of `nn.MultiheadAttention`; the
   block order and post-norm placement follow the official `DecoderBlock`. It is not built from
   `heads.TransformerDecoder`, whose pre-norm single-attention blocks cannot express that order.
3. Crops are produced with PIL bicubic resizing from box coordinates (official: torchvision v2 RandomResizedCrop with
   antialiasing); the second crop is cut from the *resized* first crop, as in the official code.
"""

from ..registry import MethodSpec
from . import views_cropmae  # noqa: F401  (registers the "cropmae" view policy)
from .configuration_cropmae import CropMAEConfig
from .image_processing_cropmae import CropMAEImageProcessor
from .modeling_cropmae import CropMAEForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="cropmae",
    config_class=CropMAEConfig,
    model_class=CropMAEForSelfSupervisedPretraining,
    image_processor_class=CropMAEImageProcessor,
    family="masked image modeling",
    description=(
        "Siamese cropped MAE: the second view is a crop of the first; a ViT encodes the whole first crop and 1.5% of "
        "the second crop's patches, and a cross-attention decoder reconstructs the second crop (norm-pix MSE on "
        "masked patches)."
    ),
    presets={
        # 32 px digits (8 x 8 patches): 75% masking, raw-pixel targets (per-patch normalisation of bilinearly
        # upsampled 8 px digits amplifies interpolation noise) and mean pooling; k-NN 0.580 -> 0.713 in 400 steps.
        # With learned instead of fixed sin-cos positions the encoder lost k-NN accuracy at every setting tried.
        "cpu-demo": dict(backbone_config="vit-micro", image_size=32, mask_ratio=0.75, norm_pix_loss=False,
                         feature_pooling="mean", decoder_hidden_size=64, decoder_depth=2, decoder_num_heads=4,
                         decoder_mlp_dim=256, decoder_dropout=0.0,
                         augmentation={"global_scale": [0.5, 1.0], "local_scale": [0.4, 0.8],
                                       "horizontal_flip": 0.0}),
    },
    demo_training={"max_steps": 400, "learning_rate": 3e-4},
)

__all__ = ["CropMAEConfig", "CropMAEForSelfSupervisedPretraining", "CropMAEImageProcessor", "METHOD"]
