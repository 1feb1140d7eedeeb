"""DreamLIP: Language-Image Pre-training with Long Captions.

Kecheng Zheng, Yifei Zhang, Wei Wu, Fan Lu, Shuailei Ma, Xin Jin, Wei Chen, Yujun Shen. ECCV 2024
(arXiv:2403.17007). Official code: https://github.com/ant-research/DreamLIP (open_clip fork; `open_clip/loss.py`
`ClipLoss` with `use_declip_loss`, `use_multipos_loss`, `use_finegrained_loss`; `training/data.py`
`split_caption` / `draw_numbers`; `training/params.py` defaults). Project page: zyf0619sjtu.github.io/dream-lip.

Method (built on the hf_ssl CLIP dual-encoder core, `modeling/clip/`):

* Data: every image has its raw caption and a long, multi-sentence caption (the paper: MLLM re-captions of 30M
  images). The long caption is split into sentences (sub-captions) and K of them are sampled per image and step
  (`views_dreamlip.py`, policy `"long_caption"`); text 0 is the raw caption. The built-in digits get long captions
  generated from the label and measured image properties (stroke thickness, slant, position, proportions, ink),
  so the sub-captions carry different information.
* Image encoder: ViT (default ViT-B/16); the CLS token and the patch tokens go through the same visual projection
  (open_clip's `proj`), giving a global embedding and local patch embeddings.
* Losses (weights as in the official code):
  1. contrastive: the CLIP loss between the images and each of the 1 + K texts, averaged over texts
     (official CLIP_loss + (De)CLIP_loss, each divided by the number of texts), weight 1;
  2. multi-positive: image i against every text of the (gathered) batch with all its 1 + K texts as positives,
     a circle loss (margin 0.25, gamma 32) on the cosines, weight 0.1 (official: / 10);
  3. subcaption-specific grouping: per text, min-max-normalised patch similarities, thresholded at
     `grouping_threshold` (official default 0), weight-average the patch embeddings into a grouped visual embedding,
     then a symmetric InfoNCE between texts and grouped embeddings over all (image, text) pairs of the batch, weight 1.
  All three gather across processes with gradient (`losses.all_gather(with_grad=True)`, symmetric contrastive
  helper), so N processes equal one process on the global batch.
* Zero-shot and retrieval are inherited from the CLIP core.

Paper defaults (config defaults): ViT-B/16, CLIP text transformer (12 x 512, context 77), K = 6 sub-captions,
learnable temperature init 0.07, circle margin 0.25 / gamma 32, loss weights 1 / 0.1 / 1, min-max grouping.

Presets: `"cpu-demo"`: 32 px digits, a 2-layer 64-wide ViT with 4 px patches (64 patch tokens), a 2-layer 64-wide
CLIP text encoder with context 24, K = 4, mean-pooled patch tokens as the global embedding (with the paper's CLS
token the tiny ViT reached k-NN 0.457 -> 0.497 in 300 steps, with mean pooling 0.543 -> 0.663); AdamW
(`METHOD.demo_training`).

DEVIATIONS:

1. The grouping loss uses the model's learnable logit scale: the released code passes `logit_scale_local`,
   which it sets to None (that path cannot run as released).
2. Sub-captions are drawn from all sentences (the released `draw_numbers(len - 1, K)` never draws the last one);
   without replacement when there are at least K, with replacement otherwise (as released).
3. Negatives are gathered with gradient (the released code gathers features without gradient by default), so a
   multi-process run is the single-process computation on the global batch.
4. Long captions of the digits are generated from measured image properties instead of an MLLM; images without
   any text fall back to the CLIP core's caption rules. The tokenizer is the offline byte-level BPE (CLIP core).
5. The synthetic-image branch and the OT / noun-tagging variants of the released code are not part of the paper's
   method and are not implemented.
"""

from ..registry import MethodSpec
from . import views_dreamlip  # noqa: F401  (registers the "long_caption" view policy)
from .configuration_dreamlip import DreamLIPConfig
from .image_processing_dreamlip import DreamLIPImageProcessor
from .modeling_dreamlip import (DreamLIPForSelfSupervisedPretraining, circle_loss, group_patches, grouping_loss,
                                multi_positive_loss)
from .views_dreamlip import describe_digit, sample_subcaptions, split_caption

CPU_DEMO_PRESET = {
    "backbone_config": dict(model_type="vit", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, patch_size=4),
    "image_size": 32,
    "text_config": {"model_type": "clip_text_model", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 24,
                    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "projection_dim": 64,
    "num_subcaptions": 4,
    # mean-pooled patch tokens as the global embedding: k-NN 0.543 -> 0.663 in 300 steps (CLS: 0.457 -> 0.497)
    "feature_pooling": "mean",
    "augmentation": {"crop_scale": [0.8, 1.0]},
}

METHOD = MethodSpec(
    name="dreamlip",
    config_class=DreamLIPConfig,
    model_class=DreamLIPForSelfSupervisedPretraining,
    image_processor_class=DreamLIPImageProcessor,
    family="vision-language",
    description=(
        "DreamLIP: CLIP trained on sub-captions sampled from long captions: per-text contrastive, multi-positive "
        "circle loss and a subcaption-specific grouping loss aligning sub-captions with the patches they select."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["DreamLIPConfig", "DreamLIPForSelfSupervisedPretraining", "DreamLIPImageProcessor", "circle_loss",
           "group_patches", "grouping_loss", "multi_positive_loss", "split_caption", "sample_subcaptions",
           "describe_digit", "METHOD"]
