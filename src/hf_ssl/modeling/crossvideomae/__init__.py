"""CrossVideoMAE: Self-Supervised Image-Video Representation Learning with Masked Autoencoders.

Shihab Aaqil Ahamed, Malitha Gunawardhana, Liel David, Michael Sidorov, Daniel Harari, Muhammad Haris Khan. WACV 2025
(arXiv:2502.07811). No official code was released at the time of writing (none found on GitHub).

Method (paper, Sec. 3):

* Two branches, both ViT-B/16: a video branch (a spatio-temporal MAE in the style of VideoMAE) and an image branch (an
  MAE over frames sampled from the same clip).
* Inputs per video: the sampled clip, an augmented version of it, and a frame sampled from the clip. High masking
  ratios: 90-95% of the video tokens (tube masking), 75-90% of the frame's patches.
* Visible-token features of each branch are embedded into a shared feature-invariant space; the objective combines
  intra-modal contrastive learning (clip vs augmented clip: invariance to video augmentations), cross-modal
  contrastive learning (video vs sampled frame: semantic attributes of static frames distilled into the video
  representation) and the MAE reconstruction losses (NT-Xent terms + MSE).

Implementation here (documented choices where the paper leaves details open):

* Views (`crossvideomae` policy): one window of `num_frames` frames at `sampling_rate`; two clip-consistent
  augmentations of it (random resized crop 0.4-1, flip, colour jitter 0.8, grayscale 0.2), each with its own tube mask
  (0.9); one random frame of the window with its own image augmentation and a random 75% patch mask.
* Video branch: stock `VideoMAEModel` on visible tubes, VideoMAE decoder (384 x 4) and norm-pixel MSE on the masked
  tubes of both clips (averaged). Image branch: stock `ViTModel` on visible patches (MAE), MAE decoder (512 x 8) and
  norm-pixel MSE on masked patches.
* Feature space: the mean of the visible tokens of each branch, a 2-layer MLP projection per modality (2048 -> 256, no
  BatchNorm), NT-Xent (temperature 0.1) over the DDP-gathered batch: intra = NT-Xent(clip, clip'),
  cross = mean(NT-Xent(clip, frame), NT-Xent(clip', frame)).
* Loss = video reconstruction + image reconstruction + intra + cross (all weights 1). The exported encoder is the video
  encoder; features are the mean of all its tokens.

Deviations from the paper:

1. The paper's image branch starts from a pre-trained image MAE; no weights are bundled (no network), so by default the
   frame encoder is trained jointly with its own MAE loss. Load pre-trained MAE weights into `model.image_encoder` and
   set `freeze_image_encoder=True` to reproduce the distillation setting (the frame reconstruction term is then off).
2. Projection widths, the NT-Xent temperature and the loss weights are not given in the paper: 2048 / 256, 0.1 and 1
   are our choices. The frame-level (per-time-step) correspondence terms are reduced to clip-level pooled features.
3. Stock transformers encoders (VideoMAEModel with fixed 1-D sin-cos positions, ViTModel with learned positions).
4. Clips from animated GIF / APNG / TIFF / frame lists (PIL); a single image becomes a flagged synthetic camera-motion
   clip.
"""

from ..registry import MethodSpec
from . import views_crossvideomae  # noqa: F401  (registers the "crossvideomae" view policy)
from .configuration_crossvideomae import CrossVideoMAEConfig
from .image_processing_crossvideomae import CrossVideoMAEImageProcessor
from .modeling_crossvideomae import CrossVideoMAEForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="crossvideomae",
    config_class=CrossVideoMAEConfig,
    model_class=CrossVideoMAEForSelfSupervisedPretraining,
    image_processor_class=CrossVideoMAEImageProcessor,
    family="masked video modeling + cross-modal contrastive",
    description=("Video MAE on two augmentations of a clip + image MAE on a sampled frame, with intra-modal (clip vs "
                 "clip) and cross-modal (clip vs frame) NT-Xent in a shared feature space."),
    presets={
        "cpu-demo": dict(backbone_config="videomae-micro", image_backbone_config="vit-micro", image_size=32,
                         num_frames=8, sampling_rate=2, norm_pix_loss=False, decoder_hidden_size=64, decoder_depth=2,
                         decoder_num_heads=4, image_decoder_hidden_size=64, image_decoder_depth=2,
                         image_decoder_num_heads=4, projection_hidden_dim=256, projection_dim=64,
                         augmentation={"horizontal_flip": 0.0}),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:moving_digits",
)

__all__ = ["CrossVideoMAEConfig", "CrossVideoMAEForSelfSupervisedPretraining", "CrossVideoMAEImageProcessor", "METHOD"]
