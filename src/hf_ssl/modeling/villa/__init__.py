"""ViLLA: Fine-Grained Vision-Language Representation Learning from Real-World Data.

Maya Varma, Jean-Benoit Delbrouck, Sarah Hooper, Akshay Chaudhari, Curtis Langlotz. ICCV 2023 (arXiv:2308.11194).
Official code: https://github.com/StanfordMIMI/villa (`villa/models/stage1_models.py`, `losses/stage1_losses.py`,
`utils/mapping.py`, `models/stage2_models.py`, `losses/stage2_losses.py`, `configs/experiment/docmnist_stage*.yaml`).

Real-world image-text data pairs one image with a long caption that describes many regions. ViLLA decomposes each
sample into region-attribute pairs, then learns from them (built on the hf_ssl CLIP core, `modeling/clip/`):

* Stage 1 (`ViLLAMappingModel`, a small self-supervised mapping model): frozen region embeddings (from a
  vision-language encoder: `ViLLAForSelfSupervisedPretraining.region_embeddings`, `extract_mapping_inputs`) go
  through one projection head per attribute (Linear-ReLU-Linear); the region-attribute score is the cosine with the
  attribute's fixed text embedding (`attribute_text_embeddings`), the image-attribute score the max over the image's
  regions (divided by the temperature 0.07). The loss (`villa_mapping_loss`) contrasts, for every attribute the
  caption mentions, the image against the batch images whose captions do not mention it; under DDP the
  image-attribute scores are gathered with gradient and the positive count all-reduced.
* Mapping (`assign_attributes_to_regions`, `region_attribute_assignments`, `write_region_attribute_assignments`):
  each attribute goes to every region scoring >= its best region score - epsilon (0.2); each region's text is the
  caption sentences of its attributes joined with " . "; a parquet file with `image, label, text, regions,
  region_texts` is written for stage 2.
* Stage 2 (`ViLLAForSelfSupervisedPretraining`, the registered method): region embeddings are ROI-aligned from the
  image encoder (ResNets: from the last-but-one stage, then the last stage + pool per region, like the released RN50
  path; other encoders: ROI-align on the last feature map, averaged), plus the whole image with the full caption;
  a bidirectional InfoNCE between regions and their assigned sentences with weights lambda = 0.5 / 0.5, fixed
  temperature 0.07, over the DDP-gathered rows (`region_text_contrastive_loss`). Regions without an attribute are
  dropped (padded rows never act as queries or keys). The released stage 2 trains only the image encoder on
  pre-computed text embeddings: `freeze_text_encoder=True`.
* Regions: boxes from the data (`regions` column) or a grid of crops (`region_grid`, default 2 x 2); attributes are
  the vocabulary words (`attribute_names`) found in the caption's sentences. Zero-shot / retrieval and the k-NN
  encoder are the CLIP core's (`get_image_features` is the stock pooled encoder).

Paper / release defaults (config defaults): ResNet-50 image encoder (official: CLIP RN50 weights), 1024-d
embeddings, per-attribute heads, stage-1 temperature 0.07 and epsilon 0.2 (AdamW lr 1e-4, batch 48, 30 epochs),
stage-2 ROI-align 14 x 14, lambda 0.5, temperature 0.07, frozen text embeddings (Adam lr 5e-5, weight decay 0.2,
batch 256, 100 epochs: trainer settings).

Presets: `"cpu-demo"`: 32 px digits, `resnet-tiny`, a 2-layer 64-wide CLIP text encoder (context 32) trained from
scratch (`freeze_text_encoder=False`: no pretrained text tower exists offline), 2 x 2 grid regions + the whole image,
ROI output 4 x 4; AdamW (`METHOD.demo_training`): k-NN 0.907 -> 0.990 in 300 steps, zero-shot 0.977
(the no-decomposition fallback of deviation 4).

DEVIATIONS:

1. Encoders start from scratch (no CLIP RN50 weights offline); stock HF ResNets (global average pool) replace CLIP's
   modified ResNet with attention pooling, so regions are pooled by the stock pool; `roi_align` is our grid_sample
   implementation of torchvision's `roi_align(aligned=True)` (same sampling rule; no torchvision dependency).
2. The stage-1 denominator is the intended one (the image itself + the batch images without the attribute); the
   released code also adds exp(0) = 1 per positive image of the attribute (`official_denominator=True` reproduces it).
3. The mapping threshold is inclusive (`score >= max - epsilon`); the released `>` assigns nothing when epsilon is 0.
4. `hf-ssl pretrain --method villa` on the built-in digits has no stage-1 output: every grid region then gets the
   whole generated caption (the "no decomposition" baseline; the demo is therefore region-level CLIP on weakly
   label-supervised generated captions). The full pipeline is `extract_mapping_inputs` -> `fit_mapping_model` ->
   `write_region_attribute_assignments` -> `hf-ssl pretrain --method villa --dataset <that parquet file>`.
5. Digit captions are generated from measured image properties (DreamLIP's `describe_digit`) with the attribute
   vocabulary `DIGIT_ATTRIBUTES`, instead of DocMNIST / MIMIC-CXR / DeepFashion reports; the image is resized without
   cropping so boxes stay valid (the release uses no augmentation either).
6. Negatives are gathered with gradient across processes (the release trains on one GPU).
"""

from ..registry import MethodSpec
from . import views_villa  # noqa: F401  (registers the "villa_regions" view policy)
from .configuration_villa import DIGIT_ATTRIBUTES, ViLLAConfig, ViLLAMappingConfig
from .image_processing_villa import ViLLAImageProcessor
from .modeling_villa import (ViLLAForSelfSupervisedPretraining, ViLLAMappingModel, assign_attributes_to_regions,
                             attribute_text_embeddings, extract_mapping_inputs, fit_mapping_model,
                             region_attribute_assignments, region_text_contrastive_loss, roi_align, villa_mapping_loss,
                             write_region_attribute_assignments)
from .views_villa import attribute_sentence, caption_sentences, find_attributes, grid_boxes

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "text_config": {"model_type": "clip_text_model", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 32,
                    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "projection_dim": 64,
    "roi_output_size": 4,
    "freeze_text_encoder": False,
}

METHOD = MethodSpec(
    name="villa",
    config_class=ViLLAConfig,
    model_class=ViLLAForSelfSupervisedPretraining,
    image_processor_class=ViLLAImageProcessor,
    family="vision-language",
    description=(
        "ViLLA: a self-supervised mapping model decomposes image-caption pairs into region-attribute pairs "
        "(stage 1); the image encoder then learns region-text contrastive alignment on them (stage 2)."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["ViLLAConfig", "ViLLAMappingConfig", "ViLLAForSelfSupervisedPretraining", "ViLLAMappingModel",
           "ViLLAImageProcessor", "DIGIT_ATTRIBUTES", "roi_align", "villa_mapping_loss",
           "assign_attributes_to_regions", "fit_mapping_model", "region_text_contrastive_loss",
           "attribute_text_embeddings", "extract_mapping_inputs", "region_attribute_assignments",
           "write_region_attribute_assignments", "attribute_sentence", "caption_sentences", "find_attributes",
           "grid_boxes", "METHOD"]
