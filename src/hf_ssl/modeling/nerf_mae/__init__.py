"""NeRF-MAE: Masked AutoEncoders for Self-Supervised 3D Representation Learning for Neural Radiance Fields.

Muhammad Zubair Irshad, Sergey Zakharov, Vitor Guizilini, Adrien Gaidon, Zsolt Kira, Rares Ambrus. ECCV 2024
(arXiv:2404.01300). Official code: https://github.com/zubair-irshad/NeRF-MAE.

Method (paper + official `nerf_mae/model/mae/swin_mae3d.py`, `nerf_mae/train_mae3d.sh`):

* Input: a NeRF sampled on a regular voxel grid (160^3; 200^3 for Hypersim), 4 channels = RGB + density, the density
  normalised to an opacity alpha in [0, 1] (`--normalize_density`); scenes are zero-padded to the cube.
* The grid is cut into 3-D patches (4^3) that are embedded, given fixed 3-D sin-cos positions, and 75% of them are
  masked at random (`--masking_prob 0.75`); the encoder (a 3-D Swin-S transformer) learns from the rest, and a
  decoder reconstructs the grid.
* Opacity-aware loss: colour MSE only where the target is occupied (alpha > 0.01), plus MSE between the sigmoid of
  the predicted alpha and the target alpha on the masked patches; the two terms are added.
* Optimisation: AdamW, lr 1e-4, weight decay 1e-3, batch 32, 2000 epochs.

This implementation: a stock `transformers.VideoMAEModel` (plain ViT with a tubelet x patch x patch Conv3d
embedding; the volume `[B, C, D, H, W]` is fed as a depth "clip" `[B, D, C, H, W]`) encodes the visible patches
only (MAE), a transformer decoder with a learned mask token and fixed 3-D sin-cos positions predicts every patch,
and the loss above is computed on the masked patches. With `density_channel=None` (generic medical / microscopy
stacks, `--preset volume`) the loss is MSE on masked patches (optionally per-patch normalised, MAE's norm-pix).
Main input `pixel_values_volumes`; the k-NN feature is the mean of the encoder tokens on the whole volume; the
exported encoder is a vanilla `VideoMAEModel` (input `[B, D, C, H, W]`, see `export_check_input`).

Task metric (`task_metrics`, printed by `hf-ssl pretrain` for the random-init and the trained model): geometry
k-NN, the same weighted k-NN on the density field alone (colour replaced by uniform grey where occupied). NeRF-MAE's
downstream tasks (3-D boxes, voxel labels, super-resolution) rest on geometry, while mean-pooled features of radiance
grids are dominated by scene colour; in the built-in grids every volume has a random hue and texture that say
nothing about its class, so the plain k-NN mostly measures colour similarity.

Paper defaults (config defaults): image_size 160, 4 channels with density channel 3, mask ratio 0.75, alpha threshold
0.01, colour loss on masked patches, raw (un-normalised) grid values; decoder 512 x 8 blocks x 16 heads (MAE's).

Deviations from the paper / official code:

1. Encoder: a plain 3-D ViT (stock VideoMAEModel, default `vit3d-base`: 16^3 patches) instead of the 3-D Swin-S with
   4^3 patches and 4^3 windows, which transformers does not provide; its positions are VideoMAE's fixed 1-D
   sin-cos table over the (d, h, w) token order (not a 3-D table: the stock model computes it itself). Because the
   encoder is a plain ViT, masked patches are dropped (MAE) instead of being replaced by a mask token inside a Swin
   grid (SimMIM-style, as in the official Swin encoder).
2. Decoder: an MAE transformer decoder (fixed 3-D sin-cos positions) instead of the official UNETR-style
   convolutional up-sampling decoder with skip connections from the Swin stages.
3. Loss region: the paper's text puts the loss on masked patches (default `color_loss_region="masked"`); the
   released `forward_loss` supervises colour on every occupied voxel, masked or not (`color_loss_region="all"`).
   The colour term is averaged over occupied voxels and colour channels, the alpha term over masked voxels.
4. Data: NeRF grids (Front3D, Hypersim, ScanNet, HM3D) are not bundled; the default built-in data is
   `builtin:radiance_shapes3d`, SYNTHETIC radiance-like 32^3 grids (colour x texture, alpha = occupancy) of ten
   labelled shape classes (`hf_ssl.training.volumes`). Views: random 3-D crop (volume fraction 0.4-1) + flips of each
   axis (MAE-style augmentation; the official pipeline trains on fixed scene grids); no photometric jitter.
5. Training schedule in steps (SSLTrainer) instead of epochs; padding masks for non-cubic scenes are not modelled
   (resize / crop volumes to the grid instead).
"""

from ...training import volumes as _volumes  # noqa: F401  (registers the volume view policies)
from ..registry import MethodSpec
from .configuration_nerf_mae import NeRFMAEConfig
from .image_processing_nerf_mae import NeRFMAEImageProcessor
from .modeling_nerf_mae import NeRFMAEForSelfSupervisedPretraining


METHOD = MethodSpec(
    name="nerf_mae",
    config_class=NeRFMAEConfig,
    model_class=NeRFMAEForSelfSupervisedPretraining,
    image_processor_class=NeRFMAEImageProcessor,
    family="masked volume modeling (3-D)",
    description=(
        "Masked autoencoding of 3-D voxel grids: 75% of the 3-D patches are hidden, a 3-D ViT encodes the rest and a "
        "decoder reconstructs colour (where occupied) and density of the masked patches."
    ),
    presets={
        # 32^3 radiance grids, the paper's 4^3 patches (512 tokens), 4 x 128 encoder (`vit3d-micro`), 2 x 64 decoder.
        # With 8^3 patches (64 tokens) the demo learnt no geometry: geometry k-NN 0.393 -> 0.357 in 300 steps.
        "cpu-demo": dict(backbone_config="vit3d-micro", image_size=32, decoder_hidden_size=64, decoder_depth=2,
                         decoder_num_heads=4),
        # generic single-channel intensity volumes (CT / MRI / microscopy stacks): masked-patch MSE
        "volume": dict(num_channels=1, density_channel=None, norm_pix_loss=True, image_size=96,
                       backbone_config="vit3d-base", image_mean=[0.5], image_std=[0.25],
                       augmentation={"intensity": 0.8}),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:radiance_shapes3d",
)

__all__ = ["NeRFMAEConfig", "NeRFMAEForSelfSupervisedPretraining", "NeRFMAEImageProcessor", "METHOD"]
