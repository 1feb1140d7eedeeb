"""GroCo: Learning by Sorting: Self-supervised Learning with Group Ordering Constraints.

Nina Shvetsova, Felix Petersen, Anna Kukleva, Bernt Schiele, Hilde Kuehne. ICCV 2023 (arXiv:2301.02009).
Official code: https://github.com/ninatu/learning_by_sorting (`learning_by_sorting/losses/groco.py`, `configs/*.yaml`);
the sorting relaxation follows https://github.com/Felix-Petersen/diffsort (`diffsort.DiffSortNet`).

Method (as in the official `GroCo` loss):

* Every view is an anchor once. Its positives are the other global views of the same image (official `n_pos_augs`:
  the global views; a local crop has all global views as positives); its negatives are the `num_negatives` = 10 most
  similar anchor-view embeddings of other images of the global batch (`topk_neg`, gathered over processes). Cosine
  similarities; positives and negatives are stop-gradient (`stop_grad=True`).
* Scores are pre-ordered as [negatives ascending, positives ascending] and sorted by a differentiable odd-even sorting
  network with the Cauchy relaxation, steepness 1 (`hf_ssl.modeling.sorting.differentiable_sort`). Summing the
  soft permutation over the top (positive) ranks and over the bottom (negative) ranks gives, per element, the
  probability of being in the right group; BCE against the ideal grouping (both terms averaged) is the loss, averaged
  over anchors. It is ~0 when every positive outranks every hard negative (group ordering constraint) and the order
  within a group does not matter.
* ResNet-50 (zero-init residual), projection `[Linear(2048, 2048)-BN-ReLU] x 2 - Linear(2048, 2048) -
  BN(affine=False)`; DINO augmentations (view 1 blur 1.0, view 2 blur 0.1 + solarize 0.2; 2/3/4 global views or
  2 x 224 + 6 x 96 multi-crop), the `"groco"` view policy.

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on the 32 px built-in digits (`resnet-tiny`, 512-128
projection, 2 global views of scale 0.4-1 with milder jitter and no blur/solarize, k = 10, steepness 1). Not a paper
setting.

Deviations from the paper / official code:

1. Negatives are gathered with hf_ssl's `losses.all_gather`; with the default `stop_gradient=True` they are detached,
   as officially. With `stop_gradient=False` the gathered negatives send every process its summed gradient (exactly
   the single-process gradient of the full batch); the official `GatherLayer` returns only the local slice's own
   gradient.
2. The differentiable sorting network is re-implemented (`hf_ssl.modeling.sorting`, index-based instead of the
   library's matrix products; numerically identical) and always runs in float32 or float64 (the official loss casts
   the projections to float32 under AMP).
3. BatchNorm statistics are per process; the official code does not convert to SyncBatchNorm either, but its per-GPU
   batch differs. The official `zero_init_residual=True` is not applied: the encoder uses hf_ssl's default
   initialisation. The head uses PyTorch-default Linear init as officially; the projection's last Linear has no bias
   (the official one is frozen and cancelled by the affine-free BatchNorm, so the function is the same).
4. Augmentations are PIL/numpy re-implementations of the torchvision ops (no torchvision dependency).
5. The optimizer recipe (SGD momentum 0.9, weight decay 1e-6, base lr 0.75 x batch / 256 for 100 epochs - 0.375 for
   200/400, 0.1875 for 800 - with 1 or 10 warm-up epochs and cosine decay, batch 1024, mixed precision) belongs to the
   trainer arguments, not to the config.
"""

from ..registry import MethodSpec
from . import views_groco  # noqa: F401  (registers the "groco" view policy)
from .configuration_groco import GroCoConfig
from .image_processing_groco import GroCoImageProcessor
from .modeling_groco import GroCoForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "projection_num_layers": 2,
    "projection_hidden_dim": 512,
    "projection_dim": 128,
    "num_negatives": 10,
    "augmentation": {"num_global": 2, "num_local": 0, "global_scale": [0.4, 1.0],
                     "color_jitter_strength": [0.4, 0.4, 0.4, 0.1], "global_gaussian_blur": [0.0, 0.0],
                     "global_solarize": [0.0, 0.0]},
}

METHOD = MethodSpec(
    name="groco",
    config_class=GroCoConfig,
    model_class=GroCoForSelfSupervisedPretraining,
    image_processor_class=GroCoImageProcessor,
    family="contrastive (ranking)",
    description=(
        "Group ordering constraints: a differentiable sorting network ranks each anchor's positives (its other views) "
        "above its hardest in-batch negatives; BCE on the soft permutation's group memberships."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 400, "learning_rate": 1e-3},
)

__all__ = ["GroCoConfig", "GroCoForSelfSupervisedPretraining", "GroCoImageProcessor", "METHOD", "CPU_DEMO_PRESET"]
