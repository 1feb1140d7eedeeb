"""VideoMAE: Masked Autoencoders are Data-Efficient Learners for Self-Supervised Video Pre-Training.

Zhan Tong, Yibing Song, Jue Wang, Limin Wang. NeurIPS 2022 (arXiv:2203.12602).
Official code: https://github.com/MCG-NJU/VideoMAE.

Method (official `modeling_pretrain.py`, `masking_generator.py`, `datasets.py`, `run_mae_pretraining.py`, Kinetics
ViT-B script):

* Clips of 16 frames sampled 4 apart (Kinetics; 2 on SSv2) at a random offset, `GroupMultiScaleCrop` (scales
  1 / .875 / .75 / .66, 13 fixed positions, the same crop for every frame) to 224 px, no flip, ImageNet normalization.
* Tubelet embedding 2 x 16 x 16 (a Conv3d), fixed 1-D sinusoid positions, no CLS token; a vanilla ViT encodes only
  the visible tokens.
* Tube masking: one random spatial mask with ratio 0.9 repeated over every time step (so a masked patch cannot be
  copied from the neighbouring frame).
* Decoder: linear `encoder_to_decoder` without bias, learned mask token, the same sinusoid positions, 4 pre-norm
  blocks of width 384 (6 heads) for ViT-B, LayerNorm, linear head to 2 x 16 x 16 x 3 values; only masked tokens are
  predicted.
* Loss: MSE on masked tubes to targets normalized per tube and channel (`--normlize_target True`: mean / unbiased std
  over the tube's 2 x 16 x 16 pixels, + 1e-6).
* Optimisation (not part of the model; set in the trainer): AdamW betas (0.9, 0.95), weight decay 0.05, lr 1.5e-4 x
  batch / 256, 40 warm-up epochs, cosine, 800 (K400) / 2400 (SSv2) epochs.

Presets:

* `cpu-demo`: `videomae-micro` (128 wide, 4 layers, 2 x 4 x 4 tubelets), 8 frames at stride 2 of the 16-frame
  `builtin:moving_digits` clips, 32 px, raw-pixel targets, decoder 64 x 2.
* `child-perspective`: Orhan, Wang, Wang, Ren, Lake, "Self-supervised learning of video representations from a child's
  perspective", CogSci 2024 (arXiv:2402.00300; models github.com/eminorhan/video-models, training scripts
  github.com/eminorhan/mae_st `scripts/train_say.sh`): ViT-H/14 (1280 wide, 32 layers, 16 heads), 16 frames of
  224 px, temporal patch 2, sampling rate 8, random space-time masking 0.9, decoder 512 wide x 4 blocks (16 heads),
  raw-pixel loss (no `--norm_pix_loss`). Their optimiser settings: AdamW lr 1e-4 (absolute), weight decay 0.05,
  gradient clipping 0.1, repeated augmentation 16.

Deviations from the paper / official code:

1. Stock transformers `VideoMAEModel` encoder (official: its own ViT; the architecture is the same); the encoder's
   final LayerNorm is kept (`use_mean_pooling=False`, as in the official pretraining encoder). The Conv3d embedding
   keeps PyTorch's default init, linear layers xavier-uniform as officially.
2. The `child-perspective` preset reproduces Orhan et al.'s *settings* on the stock VideoMAE encoder: their MAE-ST
   model has separable learned space / time position embeddings and a CLS token, the stock encoder has fixed 1-D
   sinusoid positions and no CLS token; their decoder predicts all frames (`pred_t_dim 16`), ours the tubes.
   SAYCam itself is not bundled (access-restricted).
3. Masks are drawn by the data workers (exact count); targets are de-normalised with the config's mean / std (the
   official code hard-codes ImageNet statistics).
4. Clips come from animated GIF / APNG / TIFF files or frame-list columns (PIL), mp4 only through optional PyAV,
   instead of decord; a single image becomes a flagged synthetic camera-motion clip.
5. Configuration / processor classes are named `SSLVideoMAEConfig` / `SSLVideoMAEImageProcessor` so they never shadow
   transformers' `VideoMAEConfig` / `VideoMAEImageProcessor` (the Auto classes resolve processors by class name).
"""

from ..registry import MethodSpec
from .configuration_videomae import SSLVideoMAEConfig
from .image_processing_videomae import SSLVideoMAEImageProcessor
from .modeling_videomae import VideoMAEForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="videomae",
    config_class=SSLVideoMAEConfig,
    model_class=VideoMAEForSelfSupervisedPretraining,
    image_processor_class=SSLVideoMAEImageProcessor,
    family="masked video modeling",
    description=("Masked video autoencoder: 90% tube masking of 2x16x16 tubelets, a ViT encodes the visible tubes, a "
                 "light decoder reconstructs the masked ones (per-tube normalized pixels, MSE)."),
    presets={
        "cpu-demo": dict(backbone_config="videomae-micro", image_size=32, num_frames=8, sampling_rate=2,
                         mask_ratio=0.9, norm_pix_loss=False, decoder_hidden_size=64, decoder_depth=2,
                         decoder_num_heads=4),
        "child-perspective": dict(backbone_config="videomae-huge-14", image_size=224, num_frames=16, sampling_rate=8,
                                  mask_type="random", mask_ratio=0.9, norm_pix_loss=False, decoder_hidden_size=512,
                                  decoder_depth=4, decoder_num_heads=16),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:moving_digits",
)

__all__ = ["SSLVideoMAEConfig", "VideoMAEForSelfSupervisedPretraining", "SSLVideoMAEImageProcessor", "METHOD"]
