"""FSFM: Face Security Foundation Model (FSFM-3C pretraining).

Gaojian Wang, Feng Lin, Tong Wu, Zhenguang Liu, Zhongjie Ba, Kui Ren. "FSFM: A Generalizable Face Security
Foundation Model via Self-Supervised Facial Representation Learning", CVPR 2025 (arXiv:2412.12032).
Official code: https://github.com/wolo-wolo/FSFM-CVPR25 (`fsfm-3c/pretrain/{main_pretrain,engine_pretrain}.py`,
`fsfm-3c/util/datasets.py` (CRFR-P), `models_fsfm.py`, `util/loss_contrastive.py`).

Method (as in the official code):

* CRFR-P masking (see `masking_fsfm`): on face-parsing maps (11 labels, grouped into eyebrows / eyes / nose /
  mouth / face boundary / hair / skin / background), one candidate region group (the first six) is chosen and
  every patch touching it is masked; the other groups are masked proportionally at the remaining ratio and the
  mask is topped up / trimmed (outside the region) to exactly 75% of the patches.
* MIM: a ViT encoder on visible patches; an MAE pixel decoder (512-d, 8 blocks, 16 heads, sin-cos positions,
  mask tokens) reconstructs pixels. L_rec = MSE over all masked patches + 0.007 x MSE over the patches of the
  fully covered facial region ("intra-region consistency" / "inter-region coherency").
* ID ("local-to-global correspondence"): a rep decoder (2 blocks, mask tokens, sin-cos positions, linear back to
  the encoder width) turns the student's masked encoding into a full token map whose mean (CLS included) goes
  through a BYOL-style projector (Linear-LayerNorm-ReLU-Linear, 4096 -> 256) and predictor; the EMA teacher
  (encoder + rep decoder + projector, no predictor) sees the FULL unmasked image, without gradient. Loss:
  SimSiam negative cosine x 0.5 between the normalised student prediction and teacher projection (weight 0.1).
  The loss is per sample (no negatives, no cross-batch statistic), so DDP needs no gathering.
* "Cross-view" consistency: there is no separate third loss in the official code. The student (masked view)
  and the teacher (full view) see the same augmented image (`engine_pretrain.py`; the variant with a separately
  augmented teacher view is commented out). The 3C objectives are the two reconstruction terms and the ID term.
* Teacher momentum: cosine from 0.996 to 1 over training. Encoder positions are fixed 2-D sin-cos.
* The representation is the online (student) encoder.

Deviations from the paper / official code:

1. Encoder: stock transformers `ViTModel` (LayerNorm eps 1e-12 of the ViT config, official 1e-6; separate
   q/k/v projections; learnable key bias). Fixed sin-cos positions are written into `position_embeddings` and
   frozen.
2. Decoders: `heads.MaskedAutoencoderDecoder` (pre-norm blocks with fused key/value projection). The official
   pixel decoder inserts the rep decoder's mask token before its input embedding (the two decoders share one
   mask token); here each decoder has its own mask token inserted after its embedding (standard MAE).
3. CRFR-P in the data pipeline draws the covered region per image; the official collate function draws one
   region group per batch (the model-side `generate_masks` does draw one per batch). Only candidate groups
   present in the image are drawn (the official code may draw an absent group, leaving an empty region whose
   region loss is then undefined); a per-patch region-id map approximates the "boundary" group by skin patches
   next to hair/background patches.
4. Region maps: the face parser of the official preprocessing (a BiSeNet face-parsing model) is not bundled.
   Supply `parsing_map` / `region_ids` in the batch, register `model.set_region_parser(fn)`, or use the
   documented fallback `region_source="grid"` (image split into a grid of rectangular regions), which is what the
   tests and the CPU demo use; it is NOT a facial parser.
5. Only the SimSiam (default) and BYOL ID losses are offered (the official InfoNCE/SimCLR/MoCo v3 options use
   in-batch negatives without cross-process gathering and are not defaults).
6. No AMP / NaN-skipping logic; the optimizer (AdamW betas (0.9, 0.95), wd 0.05, blr 1.5e-4-style scaling) is
   the trainer's concern.
"""

from ..registry import MethodSpec
from . import views_fsfm  # noqa: F401  (registers the "fsfm" view policy)
from .configuration_fsfm import FSFMConfig
from .image_processing_fsfm import FSFMImageProcessor
from .modeling_fsfm import FSFMForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="fsfm",
    config_class=FSFMConfig,
    model_class=FSFMForSelfSupervisedPretraining,
    image_processor_class=FSFMImageProcessor,
    family="masked image modeling",
    description=(
        "Face security foundation model: CRFR-P region-guided 75% masking (one whole facial region + proportional "
        "masking), MAE pixel reconstruction with an extra loss on the covered region, and SimSiam-style "
        "self-distillation from an EMA teacher that sees the full face."
    ),
    presets={
        "cpu-demo": dict(backbone_config="vit-micro", image_size=32, region_source="grid", grid_regions=[2, 2],
                         rep_decoder_depth=1, rep_decoder_num_heads=4, decoder_hidden_size=64, decoder_depth=2,
                         decoder_num_heads=4, projection_dim=64, projection_hidden_dim=256, teacher_momentum=0.99,
                         augmentation={"crop_scale": [0.5, 1.0], "horizontal_flip": 0.0}),
    },
    # 800 steps of batch 64 at AdamW 3e-4: k-NN 0.477 -> 0.593 on the digits (at 400 steps / 1e-3: 0.273)
    demo_training={"max_steps": 800, "learning_rate": 3e-4},
)

__all__ = ["FSFMConfig", "FSFMForSelfSupervisedPretraining", "FSFMImageProcessor", "METHOD"]
