"""Alice: Anatomical Invariance Modeling and Semantic Alignment for Self-supervised Learning in 3D Medical Image
Analysis.

Yankai Jiang, Mingze Sun, Heng Guo, Xiaoyu Bai, Ke Yan, Le Lu, Minfeng Xu. ICCV 2023 (oral; arXiv:2302.05615).
Official code: https://github.com/alibaba-damo-academy/alice.

Method (paper + official `main-DDP.py`, `engine_pretrain.py`, `loss.py`, `CASA/CASA_Module.py`, `models/head.py`):
two 3-D views with consistent anatomy are built (the official code crops a 64^3 query around a random point of one
CT and the anchor around the point that a pre-trained SAM anatomical-embedding model matches in another CT). An EMA
teacher encodes both views whole; the student encodes them with 75% of the 3-D patches masked. (i) Contrastive /
self-distillation of the global embeddings across views (DINO-style: centred, sharpened teacher softmax vs student
softmax, teacher view q against student view v != q). (ii) Masked image modeling: the student's decoder
reconstructs the volume (MSE, weight 10). (iii) Conditional anatomical feature alignment (CAFA; `CASA` in the
released code): a cross-attention layer whose queries are the student's patch embeddings (the local content the
alignment is conditioned on) attends once to the student's decoder features (online) and once to the teacher's
encoder features (target); the two aligned outputs are matched with the same centred-softmax cross entropy on patch
tokens (target detached), which complements the corrupted (masked) embeddings with globally matched semantics.

This implementation. The two views are overlapping crops of ONE volume (policy `alice_views`: the second crop box
always contains the centre voxel of the first), so corresponding anatomy is known exactly from the crop geometry:
for every token of each view the policy records the token of the other view covering its centre
(`overlap_index`, from `VolumeAugment`'s crop boxes and flips). CAFA runs on the overlap region: queries = the
student's patch-head outputs of view a at tokens inside view b, online keys/values = the student's decoder features
of those tokens, target keys/values = the teacher's patch-head outputs of the matching tokens of view b; the
loss is the per-token cross entropy averaged over overlap tokens and both directions. The encoder is a stock
`transformers.VideoMAEModel` (a plain 3-D ViT read along depth, `vit3d-*` presets) with a learned mask token
substituted for masked patch embeddings (SimMIM-style, every token goes through the transformer); global
embeddings are token means (VideoMAE has no CLS token). Main input `pixel_values_volumes`; k-NN / exported
encoder: the student's `encoder` (a vanilla VideoMAEModel on `[B, D, C, H, W]`, see `export_check_input`).

Paper / official defaults (config defaults): roi 64^3, 1 channel scaled to [0, 1]; head out_dim 512 (global) and
patch_out_dim 512 with a 3-layer GELU MLP (2048) -> 256 bottleneck -> weight-normalised last layers; student
temperature 0.1, teacher 0.008 -> 0.01 (linear warm-up over 30 of 1000 epochs) for both outputs, center momentum
0.9 (all-reduced over processes); teacher EMA 0.996 -> 1 (cosine); mask ratio 0.75 of 16^3 blocks; CASA with 8 heads
of 64, FFN 2048, on 512-d outputs; loss weights 1 / 1 / 10; AdamW, lr 5e-2 x batch / 256 (batch 8 x 8 GPUs) with 50
warm-up epochs, weight decay 0.04 -> 0.4, gradient clipping 3.0, 1000 epochs.

Deviations from the paper / official code:

1. Views: overlapping crops of the same volume with exact, geometry-derived token correspondences instead of
   SAM-matched crops of two different volumes (no SAM model or landmark embeddings ship offline, and the battery
   streams single volumes). This keeps "consistent anatomy" by construction but without inter-subject variation.
2. CAFA on the overlap region, across views (teacher keys/values from the other view); the released code aligns
   the student and teacher features of the same view. Samples whose views share no token add 0 to the term.
3. Backbone: stock VideoMAEModel (3-D ViT, VideoMAE's fixed 1-D sin-cos positions over the (d, h, w) token order)
   instead of nnFormer / Swin-UNETR, which transformers does not provide; global embedding = token mean; the
   decoder is a light transformer (fixed 3-D sin-cos positions) + linear voxel head instead of nnFormer's decoder.
4. MIM loss on masked patches by default (`mim_loss_region="masked"`); the released `loss.py` averages the MSE over
   the whole volume (`"all"`).
5. Teacher and student heads both keep separate global / patch last layers (official teacher:
   `shared_head_teacher=True`); no first-epoch last-layer freezing, weight-decay schedule or gradient clipping in
   the model (trainer settings); schedules in steps (the warm-up as a fraction of training).
6. Augmentation: numpy crop / flips / intensity jitter (`training/volumes.py`) instead of MONAI transforms; data:
   `builtin:shapes3d` (synthetic grey 32^3 shape volumes, ten classes), no CT ships offline. The cpu-demo rescales
   each volume from its own 0.5 / 99.5 intensity percentiles (`augmentation["intensity_normalization"]`, CT / MRI
   style preprocessing): the built-in volumes differ in background / foreground level, which the views share; with
   it k-NN 0.160 -> 0.230 in 300 steps, without it 0.180 -> 0.183.
"""

from ...training import volumes as _volumes  # noqa: F401  (registers the volume view policies)
from ..registry import MethodSpec
from . import views_alice as _views  # noqa: F401  (registers "alice_views")
from .configuration_alice import AliceConfig
from .image_processing_alice import AliceImageProcessor
from .modeling_alice import AliceForSelfSupervisedPretraining

_DEMO_ENCODER = dict(model_type="videomae", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                     intermediate_size=512, patch_size=8, tubelet_size=8, use_mean_pooling=True)

METHOD = MethodSpec(
    name="alice",
    config_class=AliceConfig,
    model_class=AliceForSelfSupervisedPretraining,
    image_processor_class=AliceImageProcessor,
    family="contrastive + masked volume modeling (3-D)",
    description=(
        "EMA-teacher self-distillation between two overlapping 3-D views, masked voxel reconstruction, and "
        "cross-attention alignment (CAFA) of the overlap region's features."
    ),
    presets={
        # 32^3 volumes, 8^3 patches (64 tokens), 4 x 128 encoder, 1 x 64 decoder, small heads
        "cpu-demo": dict(backbone_config=_DEMO_ENCODER, image_size=32, head_out_dim=256, patch_out_dim=256,
                         head_hidden_dim=512, head_bottleneck_dim=128, decoder_hidden_size=64, decoder_depth=1,
                         decoder_num_heads=4, cafa_num_heads=4, cafa_head_dim=32, cafa_intermediate_size=512,
                         teacher_temperature=0.04, warmup_teacher_temperature=0.04,
                         augmentation={"intensity_normalization": "percentile"}),
    },
    demo_training={"max_steps": 300, "learning_rate": 5e-4},
    default_dataset="builtin:shapes3d",
)

__all__ = ["AliceConfig", "AliceForSelfSupervisedPretraining", "AliceImageProcessor", "METHOD"]
