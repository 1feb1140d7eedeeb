"""RSPNet: Relative Speed Perception for Unsupervised Video Representation Learning.

Peihao Chen, Deng Huang, Dongliang He, Xiang Long, Runhao Zeng, Shilei Wen, Mingkui Tan, Chuang Gan. AAAI 2021
(arXiv:2011.07949). Official code: https://github.com/PeihaoChen/RSPNet.

Method (official `moco/builder_diffspeed_diffloss.py` `MoCoDiffLossTwoFc`, `Loss`; `moco/split_wrapper.py`;
`config/pretrain/moco-train-base.jsonnet`; `pretrain.py`):

* Two windows of 2 x 16 frames are drawn from one video. A clip at the normal speed is the first 16 frames of a window,
  a fast (2x) clip every 2nd frame. Half of the batch uses the normal speed for the query, half the fast one: query =
  window 1 at speed a, positive key = window 2 at speed a, negative key = window 2 at the other speed b.
* Spatial augmentation per clip (the same for every frame of a clip): random crop of area 0.4-1, resize 112,
  grayscale 0.2, colour jitter (0.4, 0.4, 0.4, 0.4), horizontal flip.
* A backbone with two heads (global average pool + linear to 128, L2-normalised): A for appearance, M for speed; a
  momentum key encoder (0.999) with the same heads.
* Relative speed perception (RSP): margin ranking on speed-head similarities, the same-speed pair must be more
  similar than the different-speed pair: `max(0, 2.0 - (q_M.k_M - q_M.n_M) / 0.07)`.
* Appearance-focused video instance discrimination (A-VID): InfoNCE (tau 0.07) with a 16384-key MoCo queue, where BOTH
  keys of the same video are positives regardless of speed (two cross-entropy terms); the queue receives the
  negative-speed A-keys of all processes.
* Loss = 1.0 x A-VID + 1.0 x RSP. SGD lr 0.1 (R3D-18; 0.05 R(2+1)D), momentum 0.9, weight decay 1e-4, cosine,
  200 epochs, batch 64 (not part of the model; set in the trainer).

Deviations from the paper / official code:

1. Encoder: the paper's 3-D ConvNets (C3D, R3D-18, R(2+1)D, S3D-G) are not transformers models, so a stock
   `VideoMAEModel` (a video ViT with 2 x 16 x 16 tubelets, default `videomae-small`), run without masking, replaces
   them; the heads pool by averaging all its tokens (the ConvNets' global average pool). Any stock video encoder
   from `backbones.VIDEO_FAMILY` can be used.
2. No shuffle-BN: the ViT encoder has LayerNorm only, so there are no cross-sample statistics to leak.
3. The speed split is drawn per clip (probability 0.5) in the data workers instead of an exact half of each batch, and
   the speed sub-sampling happens in the view policy instead of inside the model; with several `speeds` the fast speed
   is drawn per clip (official: per batch).
4. EMA of the key encoder in `on_step_end` (after each optimizer step) instead of at the start of the next forward:
   the same sequence of updates.
5. The queue accepts a global batch that does not divide its size (FIFO wrap) instead of asserting.
6. Clips from animated GIF / APNG / TIFF / frame lists (PIL), mp4 only through optional PyAV; a single image becomes a
   flagged synthetic camera-motion clip.
"""

from ..registry import MethodSpec
from . import views_rspnet  # noqa: F401  (registers the "rspnet" view policy)
from .configuration_rspnet import RSPNetConfig
from .image_processing_rspnet import RSPNetImageProcessor
from .modeling_rspnet import RSPNetForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="rspnet",
    config_class=RSPNetConfig,
    model_class=RSPNetForSelfSupervisedPretraining,
    image_processor_class=RSPNetImageProcessor,
    family="contrastive (video speed)",
    description=("Relative speed perception (margin ranking: same-speed clip pairs more similar than different-speed "
                 "pairs) + appearance-focused video instance discrimination with a MoCo queue."),
    presets={
        # 8 x 8 px tubelets (64 tokens per clip): three clips per example are encoded every step
        "cpu-demo": dict(backbone_config=dict(model_type="videomae", hidden_size=128, num_hidden_layers=4,
                                              num_attention_heads=4, intermediate_size=512, patch_size=8,
                                              tubelet_size=2, use_mean_pooling=False, layer_norm_eps=1e-6),
                         image_size=32, num_frames=8, sampling_rate=1, speeds=[2], queue_size=4096,
                         augmentation={"horizontal_flip": 0.0}),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:moving_digits",
)

__all__ = ["RSPNetConfig", "RSPNetForSelfSupervisedPretraining", "RSPNetImageProcessor", "METHOD"]
