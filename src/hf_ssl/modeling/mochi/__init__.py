"""MoCHi: Hard Negative Mixing for Contrastive Learning.

Yannis Kalantidis, Mert Bulent Sariyildiz, Noe Pion, Philippe Weinzaepfel, Diane Larlus. NeurIPS 2020
(arXiv:2010.01028). Project page: https://europe.naverlabs.com/mochi (no official code release was found; the
implementation follows the paper and MoCo v2's official code, `facebookresearch/moco`).

Method:

* MoCo v2 base: query encoder + 2-layer MLP head (Linear-ReLU-Linear, 128-d), EMA key encoder + head (momentum
  0.999, `teacher = m * teacher + (1 - m) * student` after every optimizer step), a FIFO queue of 65536 keys, InfoNCE
  with temperature 0.2, MoCo v2 augmentation (crop scale 0.2-1, colour jitter (0.4, 0.4, 0.4, 0.1) p=0.8, grayscale
  0.2, Gaussian blur p=0.5, flip). Keys are all-gathered (no gradient) before being enqueued; MoCo's shuffling BN is
  reproduced with an all-gather of the key images, a permutation drawn on rank 0 and broadcast, and an all-gather
  + un-shuffle of the keys (single process: a permutation within the batch).
* Hard negative mixing (per query q): sort the queue by similarity to q and keep the top N = 1024 (the hardest
  negatives); synthesize s negatives `normalize(a n_i + (1 - a) n_j)` from random pairs of them (a ~ U(0, 1)) and
  s' negatives `normalize(b q + (1 - b) n_j)` (b ~ U(0, 0.5)); append them to the logits as extra negatives. They
  are constants (no gradient flows through them, as for MoCo's queue) and are not enqueued. Default
  (N, s, s') = (1024, 512, 256), the paper's ImageNet-1k setting.
* Mixing starts after a warm-up of plain MoCo v2 (`mixing_start_step`, in optimizer steps).

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on the 32 px built-in digits (`resnet-tiny`, 512-64
head, 4096-key queue, momentum 0.99, temperature 0.2, (N, s, s') = (256, 128, 64) after 50 steps, milder crops
(scale 0.4-1) and no blur for 32 px images). Not a paper setting.

Deviations from the paper / official code:

1. No official MoCHi code exists to compare with; details the paper leaves open are choices made here: mixing
   pairs (i, j) are drawn uniformly with replacement among the N hardest (i = j is possible, giving a hard negative
   itself), the query-mix negative index is drawn uniformly among the N hardest, and the draws come from a
   generator seeded by `mixing_seed` and a forward counter (identical across processes by construction).
2. The warm-up is configured in optimizer steps (`mixing_start_step`, default 50050 = 10 epochs of ImageNet-1k at
   batch 256); the paper states it in epochs.
3. BatchNorm statistics of the key encoder are per process after the shuffle (as in MoCo); the EMA helper copies the
   query encoder's BN running statistics into the key encoder (they are only used in eval mode).
4. A last batch of a finite stream that is smaller than the regular global batch is written into the queue with
   wrap-around instead of failing MoCo's divisibility assert; a regular batch that does not divide `queue_size`
   raises a ValueError.
5. The key encoder's random draws for shuffle-BN use a seeded generator instead of the global RNG.
"""

from ..registry import MethodSpec
from .configuration_mochi import MoCHiConfig
from .image_processing_mochi import MoCHiImageProcessor
from .modeling_mochi import MoCHiForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "projection_hidden_dim": 512,
    "projection_dim": 64,
    "queue_size": 4096,
    "teacher_momentum": 0.99,
    "contrastive_temperature": 0.2,
    "num_hard_negatives": 256,
    "num_mixed_negatives": 128,
    "num_query_mixes": 64,
    "mixing_start_step": 50,
    "augmentation": {"crop_scale": [0.4, 1.0], "gaussian_blur": 0.0},
}

METHOD = MethodSpec(
    name="mochi",
    config_class=MoCHiConfig,
    model_class=MoCHiForSelfSupervisedPretraining,
    image_processor_class=MoCHiImageProcessor,
    family="contrastive",
    description=(
        "MoCo v2 (EMA key encoder, 65536-key queue, InfoNCE T=0.2) with hard negative mixing: per query, synthetic "
        "negatives are convex mixtures of pairs of its hardest queue negatives and of the query with hard negatives."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
)

__all__ = ["MoCHiConfig", "MoCHiForSelfSupervisedPretraining", "MoCHiImageProcessor", "METHOD"]
