"""SiT: Self-supervised vIsion Transformer.

Sara Atito, Muhammad Awais, Josef Kittler. arXiv:2104.03602 (2021).
Official code: https://github.com/Sara-Ahmed/SiT (PyTorch).

Method as implemented (paper v1 tasks; corruption generator and contrastive-loss form from the official code,
`main.py` and `datasets/datasets_utils.py`):

* Data: per image two augmented crops; each is rotated by k*90 degrees (k uniform in {0,1,2,3}, the rotation
  label) and then corrupted by random aligned blocks (`GMML_drop_rand_patches`: blocks up to 30% of the side,
  until a fraction uniform in [min(0.5, drop_perc), drop_perc] of the pixels is covered, drop_perc = 0.5) filled
  with zeros (random drop), Gaussian noise, pixels of another block of the same image, or pixels of another image
  (random replace). Registered as the `"sit"` view policy, which also returns the clean targets, the corruption
  masks, the rotation labels and the drop types.
* Model: one stock ViT; token sequence `[CLS (contrastive token), rotation token, patches]`. Rotation head
  (linear, 4 classes) on the rotation token; contrastive MLP head on the CLS token; reconstruction head
  (MLP to p*p*C per patch token, un-patchified, same function class as the official linear + transposed conv
  RECHead) on the patch tokens.
* Losses: rotation cross entropy; contrastive loss in the official form
  `CE(norm(q) @ gather(norm(k)).T / t) * 2t`, symmetrised over the two views, t = 0.2, keys of every process
  gathered with gradient (DDP equals one process on the whole batch); l1 reconstruction of the clean image over
  all pixels (paper). Combined with uncertainty weighting (Kendall et al.: `sum exp(-s_i) L_i + s_i`, learned s_i),
  or fixed weights (`loss_weighting="fixed"`).
* k-NN / export: the exported encoder is the stock ViT; features = final-norm CLS (the contrastive token).

DEVIATIONS:

1. The current official repository is the later SiT version (EMA teacher, no rotation task, reconstruction loss
   on the corrupted pixels only). This implementation follows the paper v1 task set (rotation + contrastive +
   reconstruction, uncertainty weighting, no teacher) with the official code's corruption and contrastive loss
   form; the contrastive keys are the other view of the same network (no EMA teacher). The official
   reconstruction-on-corrupted-pixels loss is available as `reconstruction_region="corrupted"`.
2. The contrastive token is the ViT's own CLS token (so the exported stock ViT's CLS is the trained contrastive
   representation); the rotation token is an extra learned token without position embedding. The exported
   encoder has no rotation token, so `get_image_features` runs without it.
3. "Other image" replacement uses the previous image processed by the same data worker (a one-image buffer; for
   the very first image the sample's other view) instead of a random image of the collated batch; `rand` blocks
   are copied from the clean crop (official: from the partially corrupted crop).
4. Every view is corrupted (official collate corrupts with the drop_replace probability, otherwise keeps the
   dataset's corruption); the drop type is drawn per view uniformly from `drop_types`.
5. Stock transformers ViT (no stochastic depth, LayerNorm eps of the ViT config); no gradient clipping / weight
   decay schedule (trainer settings).
"""

from ..registry import MethodSpec
from . import views_sit  # noqa: F401  (registers the "sit" view policy)
from .configuration_sit import SiTConfig
from .image_processing_sit import SiTImageProcessor
from .modeling_sit import SiTForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    # the short CPU run of `hf-ssl pretrain --method sit` on the 32 px built-in digits; not a paper setting
    "backbone_config": "vit-micro",
    "image_size": 32,
    "projection_hidden_dim": 256,
    "projection_dim": 64,
    "drop_align": 4,
    "drop_perc": 0.3,
    "feature_pooling": "mean",
    "augmentation": {"crop_scale": [0.6, 1.0], "horizontal_flip": 0.0, "color_jitter": 0.0, "grayscale": 0.0,
                     "gaussian_blur": 0.0},
}

METHOD = MethodSpec(
    name="sit",
    config_class=SiTConfig,
    model_class=SiTForSelfSupervisedPretraining,
    image_processor_class=SiTImageProcessor,
    family="multi-task (rotation + contrastive + reconstruction)",
    description=(
        "Self-supervised vIsion Transformer: one ViT with a contrastive (CLS) token, a rotation token and a "
        "reconstruction head; rotation prediction, contrastive learning between two views and l1 reconstruction "
        "of the clean image from a GMML-corrupted one, combined by uncertainty weighting."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 150, "learning_rate": 1e-3},
)

__all__ = ["SiTConfig", "SiTForSelfSupervisedPretraining", "SiTImageProcessor", "METHOD"]
