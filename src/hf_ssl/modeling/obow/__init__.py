"""OBoW: Online Bag-of-Visual-Words Generation for Self-Supervised Learning.

Spyros Gidaris, Andrei Bursuc, Gilles Puy, Nikos Komodakis, Matthieu Cord, Patrick Perez. CVPR 2021
(arXiv:2012.11552). Official code: https://github.com/valeoai/obow (`obow/builder_obow.py`, `obow/datasets.py`,
`config/ImageNetFull/ResNet50_OBoW_full.yaml`).

Method (as in the official code):

* Teacher = EMA of the student (momentum 0.99 raised to 1 by a cosine schedule over training). From the teacher's
  conv4 and conv5 feature maps of the (non-augmented, flipped) 224 px image, border locations dropped, each level
  computes squared distances to a vocabulary of K = 8192 visual words, soft-assigns every location with
  `softmax(-(15 / mu) d)` where mu is the running mean (decay 0.99) of the minimum distance, max-pools the codes over
  locations and L1-normalizes: the BoW target.
* The vocabulary of each level is a FIFO queue: each image contributes one uniformly sampled location of its 3x3
  average-pooled teacher map per step (all processes' features are gathered).
* Student: global average-pooled features of 2 crops (160 px, scale 0.08-0.6) and 5 patches (96 px); the dynamic
  prediction head generates its weights from the current vocabulary with a per-level generator
  L2norm -> Linear(C, 2D, no bias) -> BN -> ReLU -> Linear(2D, D) -> L2norm, scaled by kappa = 8.
* Loss: KL(target || softmax(prediction)), batch mean, averaged over levels, summed over the crop and patch groups.

Presets: `"cpu-demo"` - short CPU run on the 32 px built-in digits (`resnet-tiny` at 64 px teacher resolution so
the stage maps are not 1x1, BoW on the last two stages without border crop, 1024 words, 2x48 crops + 3x32 patches,
constant teacher momentum 0.99). Not a paper setting.

Deviations from the paper / official code:

1. Only ConvNet backbones (stage feature maps from transformers `hidden_states`); no ViT variant.
2. Views: the teacher image is resize (size/0.875) + center crop + random flip as in the official code, but patches are
   independent random resized crops of the area of one official 3x3-grid patch instead of the grid with jitter.
   PIL/numpy re-implementations of the torchvision ops.
3. The EMA step happens in `on_step_end` after each optimizer step (official: at the start of the next forward); the
   shared EMA helper copies the student's BatchNorm running statistics into the teacher (the teacher runs in training
   mode and normalizes with batch statistics, so its targets do not depend on them).
4. The location drawn for the vocabulary update comes from a generator seeded with `sampling_seed` and the number of
   training forwards, drawn for the global batch on every process (DDP equals one process); vocabulary, pointer and
   running min-distance are kept identical on every process (all_gather / all_reduce).
5. Maps smaller than 3x3 (tiny images) skip the 3x3 local averaging of the vocabulary update.
6. The optional on-line linear classifier of the official code (monitoring only) is not included; the optimizer
   (SGD lr 0.03 for batch 256, cosine with warm-up, wd 1e-4) belongs to the trainer.
"""

from ..registry import MethodSpec
from . import views_obow  # noqa: F401  (registers the "obow" view policy)
from .configuration_obow import OBoWConfig
from .image_processing_obow import OBoWImageProcessor
from .modeling_obow import OBoWForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 64,
    "bow_levels": [-2, -1],
    "num_words": 1024,
    "feature_border": 0,
    "teacher_momentum": 0.99,
    "teacher_momentum_cosine": False,
    "augmentation": {"num_crops": 2, "crop_size": 48, "crop_scale": [0.2, 0.8], "num_patches": 3, "patch_size": 32,
                     "patch_scale": [0.1, 0.25], "gaussian_blur": 0.0},
}

METHOD = MethodSpec(
    name="obow",
    config_class=OBoWConfig,
    model_class=OBoWForSelfSupervisedPretraining,
    image_processor_class=OBoWImageProcessor,
    family="clustering",
    description=(
        "Online bag-of-visual-words: an EMA teacher turns its conv feature maps into soft BoW histograms over a "
        "queue-based vocabulary of local features; the student predicts them from crops through a prediction head "
        "generated from the vocabulary."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
)

__all__ = ["OBoWConfig", "OBoWForSelfSupervisedPretraining", "OBoWImageProcessor", "METHOD"]
