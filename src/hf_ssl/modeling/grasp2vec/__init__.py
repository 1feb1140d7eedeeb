"""Grasp2Vec: Learning Object Representations from Self-Supervised Grasping.

Eric Jang*, Coline Devin*, Vincent Vanhoucke, Sergey Levine (* equal contribution). Conference on Robot Learning
(CoRL) 2018 (arXiv:1811.06964). Official code: https://github.com/google-research/tensor2robot
(`research/grasp2vec/`: `grasp2vec_model.py`, `networks.py`, `resnet.py`, `losses.py`, `configs/train_grasp2vec.gin`).

Method: a robot grasps an object out of a bin; the camera images of the scene before the grasp (pre), after it
(post) and of the grasped object (outcome) are the only supervision. Two encoders:

* phi_s, the scene encoder, and phi_o, the outcome (object) encoder: each a ResNet-50 cut after its third block
  group (official `get_resnet50_spatial`: 1024-channel feature map at stride 16), then ReLU, then a spatial mean;
  separate weights (official variable scopes 'scene' and 'goal'); both scenes go through phi_s in one batch.
* Arithmetic constraint phi_s(pre) - phi_s(post) ~ phi_o(outcome), trained with the n-pairs loss (Sohn 2016) in
  both directions over the batch: `NPairs(pre - post, outcome) + NPairs(outcome, pre - post)`, each a softmax
  cross entropy of unnormalised dot products (no temperature) plus the L2 penalty 0.25 * 0.002 * (mean ||a||^2 +
  mean ||p||^2) (TF `npairs_loss` defaults). The other samples of the batch are the negatives; under DDP they come
  from all processes (`losses.all_gather` with gradient), equal to one process on the global batch.
* Localisation: the heatmap phi_s(scene) spatial features . phi_o(object) (`localization_heatmap`,
  `grasp2vec_heatmap`) peaks where the object is; the training forward reports `localization_accuracy` (peak cell in
  the grasped object's box of the pre-grasp scene) when the data give `grasp_box`.

`encoder` (exported, `get_image_features`, k-NN) is phi_o: it embeds one object image, which is what Grasp2Vec's
object representation is (instance recognition and goal embeddings in the paper are phi_o of outcome images) and
what an image-level encoder is used for downstream; phi_s is `scene_encoder`
(`export_encoder(dir, attribute="scene_encoder")`), used for scenes and heatmaps.

Paper / official defaults (config defaults): ResNet-50 cut at block 3 for both encoders, 472 x 472 crops of
512 x 640 frames for scenes and outcomes, random left-right and up-down flips (each image independently),
n-pairs both directions with reg 0.002, no non-negativity constraint; Adam lr 1e-4, batch 8, 50k steps (trainer
settings).

Data (`"simulated_grasp"` view policy, `views_grasp2vec.py`): a SIMULATED GRASP from real images. The current
image is the grasped object; 1-4 recent images of the stream are the other objects; all are pasted on a noisy bin
canvas (pre), the grasped one is removed (post), and the grasped image alone, randomly cropped, is the outcome.

Presets: `"cpu-demo"`: 64 px scenes of 2-3 real digits (each 26-32 px), 32 px outcomes (crop scale 0.4-1, colour
jitter 0.8), a 3-stage basic ResNet (32-64-128, stride 16: a 4 x 4 scene map) for both encoders, no flips (a
flipped digit is another digit), AdamW lr 3e-4, 300 steps. On the digits its k-NN stays BELOW the random-init
encoder (0.950 -> 0.937; other settings tried: 0.950 -> 0.920 / 0.913, resnet-tiny 0.907 -> 0.857) while the
grasp objective itself is learnt (retrieval accuracy 0.02 -> 0.2-0.3, heatmap localisation 0.2 -> 0.3-0.45 of
scenes): instance matching of pasted digits does not make the object features more class-separable in 300 steps.

DEVIATIONS:

1. Grasps are simulated (pasted real images, see above) instead of robot grasps; the bin texture is noise; the
   scenes are not randomly cropped from a larger frame (object positions are random instead).
2. Stock transformers ResNets (v1, post-activation) instead of the official ResNet-50 v2 (pre-activation); the
   official ReLU after the last block is then a no-op but kept. For ResNets `get_image_features` (the exported
   pooled output) equals phi_o; for other backbones it is the backbone's own pooling.
3. Negatives are gathered across processes (the official loss uses the per-worker batch); `gather_negatives=False`
   restores per-process negatives.
4. The multi-label (failed-grasp) n-pairs variant and the auxiliary losses of the released code (triplet, cosine
   arithmetic, TY loss) are not part of the paper's objective and are not implemented.
"""

from ..registry import MethodSpec
from . import views_grasp2vec  # noqa: F401  (registers the "simulated_grasp" view policy)
from .configuration_grasp2vec import Grasp2VecConfig
from .image_processing_grasp2vec import Grasp2VecImageProcessor
from .modeling_grasp2vec import (Grasp2VecForSelfSupervisedPretraining, grasp2vec_heatmap, heatmap_argmax_in_box,
                                 npairs_loss)

CPU_DEMO_PRESET = {
    "backbone_config": dict(model_type="resnet", layer_type="basic", depths=[1, 1, 1], embedding_size=32,
                            hidden_sizes=[32, 64, 128]),
    "image_size": 32,
    "scene_size": 64,
    "augmentation": {"objects_per_scene": [2, 3], "object_scale": [0.4, 0.5], "horizontal_flip": 0.0,
                     "vertical_flip": 0.0, "crop_scale": [0.4, 1.0], "color_jitter": 0.8},
}

METHOD = MethodSpec(
    name="grasp2vec",
    config_class=Grasp2VecConfig,
    model_class=Grasp2VecForSelfSupervisedPretraining,
    image_processor_class=Grasp2VecImageProcessor,
    family="object-centric (scene arithmetic)",
    description=(
        "Grasp2Vec: scene encoder and object encoder trained so that phi_s(pre-grasp) - phi_s(post-grasp) matches "
        "phi_o(grasped object) with a bidirectional n-pairs loss over the batch; heatmaps localise objects."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 3e-4},
)

__all__ = ["Grasp2VecConfig", "Grasp2VecForSelfSupervisedPretraining", "Grasp2VecImageProcessor", "npairs_loss",
           "grasp2vec_heatmap", "heatmap_argmax_in_box", "METHOD"]
