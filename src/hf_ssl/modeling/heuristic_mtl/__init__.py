"""Heuristic Vision Pre-Training with Self-Supervised and Supervised Multi-Task Learning.

Zhiming Qian. arXiv:2310.07510 (2023). No official code is public.

Method (paper, abstract and Sec. 1-3): instead of stacking pre-training stages, one backbone (a vanilla Swin-B in
the paper) is trained in a single stage on several pretext tasks at once, chosen "heuristically" after how humans
understand an image: its style / type, the objects inside it with their locations and correlations, and its 3-D
layout. Because box and relation labels are scarce at scale, the paper's practical recipe is a hybrid of

* multi-label classification (supervised: image types, objects and parts of their relations, from tags),
* masked image modeling (self-supervised; pixel details), and
* contrastive learning between two augmented views (self-supervised; patch and image correlations),

each with its own head on the shared backbone, summed into one weighted multi-task loss. Detection / segmentation
heads are the paper's motivating tasks whose labels are "hard to achieve".

What is implemented here:

* Contrastive head: 2-layer projector + NT-Xent (temperature 0.2) over both views of the DDP-gathered batch
  (`losses.nt_xent`, all_gather with gradient).
* MIM head: SimMIM on view 1 (the natural MIM for Swin: 60% of 32 px cells masked, learned mask token in the stock
  encoder, 1x1 conv + pixel-shuffle head, L1 on masked pixels).
* Classification head: linear on the pooled feature of both clean views; multi-label sigmoid BCE (the paper's
  multi-label supervision; integer labels become one-hot targets) or softmax CE. Only labeled images contribute;
  the loss is the mean over the labeled images of the global batch (the label count is all-reduced, DDP-exact).
* Optional segmentation head (`num_segmentation_classes > 0`): 1x1 conv on the feature map, bilinear upsampling, CE
  over labeled pixels of `segmentation_labels` aligned with view 1 (-1 = ignore), normalised over the global batch.
* Every head is optional and skipped cleanly per batch: a task without inputs (no `labels`, all labels -1, no
  `bool_masked_pos`, no `segmentation_labels`) adds exactly 0 to the loss (its head stays in the graph with a zero
  coefficient so DDP does not need `find_unused_parameters`); `metrics` report `<task>_active` per batch.
* Total loss `w_con L_con + w_mim L_mim + w_cls L_cls + w_seg L_seg` over the active tasks.
* Data: the `"heuristic_mtl"` view policy returns two views, the SimMIM mask and the example's label (-1 when the
  dataset has none; a list of class ids becomes a multi-hot target), so labeled datasets such as the built-in
  digits feed the supervised head without `with_labels`.

Defaults: Swin-B (embed 128, depths 2-2-18-2, window 7), 2048-256 projector, tau 0.2, SimMIM mask ratio 0.6 with
32 px cells, 1000-way multi-label BCE head, all task weights 1, BYOL-style augmentation.

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on the 32 px built-in digits (`vit-micro`, 8 px mask
cells, 10 classes, 512-128 projector, crops 0.4-1). The digits labels reach the classification head, so the demo's
k-NN number is (weakly) supervised, like CLIP's. Not a paper setting.

Deviations from the paper:

1. The paper's full text (task weighting values, head designs, contrastive variant, MIM variant, label source) was
   not available to us offline; the task weights default to equal weights (1 each) and are exposed as
   `contrastive_weight`, `mim_weight`, `classification_weight`, `segmentation_weight`. The contrastive loss
   (NT-Xent), the MIM variant (SimMIM, the standard MIM for Swin) and the head shapes are our choices.
2. No detection head: box labels need a detector framework (anchors / matching), which is outside a pretraining
   head; the paper itself replaces box supervision by multi-label classification. Segmentation is supported when the
   data provides aligned masks (the built-in view policy crops images only, so masks come from a custom dataset /
   collator).
3. The 3-D ("how it looks in 3D space") cue of the heuristic is not implemented (no depth labels in the data).
4. The exported encoder keeps the (unused) MIM mask token, like SatVision's SimMIM export.
5. BatchNorm in the projector is per process.
"""

from ..registry import MethodSpec
from . import views_heuristic_mtl  # noqa: F401  (registers the "heuristic_mtl" view policy)
from .configuration_heuristic_mtl import HeuristicMTLConfig
from .image_processing_heuristic_mtl import HeuristicMTLImageProcessor
from .modeling_heuristic_mtl import HeuristicMTLForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "vit-micro",
    "image_size": 32,
    "mask_patch_size": 8,
    "num_classes": 10,
    "projection_hidden_dim": 512,
    "projection_dim": 128,
    "augmentation": {"crop_scale": [0.4, 1.0], "gaussian_blur": 0.0, "solarize": 0.0},
}

METHOD = MethodSpec(
    name="heuristic_mtl",
    config_class=HeuristicMTLConfig,
    model_class=HeuristicMTLForSelfSupervisedPretraining,
    image_processor_class=HeuristicMTLImageProcessor,
    family="multi-task (contrastive + MIM + supervised)",
    description=(
        "One backbone, jointly trained pretext heads: NT-Xent contrastive on two views, SimMIM masked image "
        "modeling, multi-label classification and optional segmentation on labeled data, each skipped per batch "
        "when its inputs are missing; weighted sum of the task losses."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 400, "learning_rate": 1e-3},
)

__all__ = ["HeuristicMTLConfig", "HeuristicMTLForSelfSupervisedPretraining", "HeuristicMTLImageProcessor", "METHOD"]
