"""Multimodal record linkage with pooled image-text embeddings (CLIPPINGS).

Abhishek Arora, Xinmei Yang, Shao-Yu Jheng, Melissa Dell. "Linking Representations with Multimodal Contrastive
Learning" (v3: "Record Linkage with Multimodal Contrastive Learning"), arXiv:2304.03464, 2023 (Harvard / NBER).
CLIPPINGS = Contrastively LInking Pooled Pre-trained Embeddings. Official code: the Dell Research Harvard
repositories (https://github.com/dell-research-harvard); not available offline, so this follows the paper.

Method (method `"record_linkage"`, built on the hf_ssl CLIP core, `hf_ssl.modeling.clip`):

* A record is an image (in the paper: the crop of a firm name in a scanned document) plus text (its noisy OCR /
  text fields). Symmetric image and text encoders (the CLIP towers) embed both; the record embedding is the pooled
  `z = (f(x) + g(t)) / 2` of the L2-normalised embeddings (`image_weight` 0.5), L2-normalised.
* Stage 1 of the paper aligns the towers with CLIP's image-text InfoNCE on image-OCR pairs; stage 2 trains the
  pooled embeddings with a supervised contrastive loss so that records of the same entity are close and others
  far. Here both terms are optimised jointly: `L = alignment_weight * L_CLIP(image, text) (each observation) +
  linkage_weight * L_SupCon(pooled records of all observations, positives = same entity)`, temperature 0.1, over
  the DDP-gathered batch (`losses.all_gather` with gradient; entity ids gathered).
* Self-supervised entities: without labels, an entity is one source record and its positives are two noisy
  observations of it (the `record_pair` view policy: two augmented crops + two texts with OCR/typing errors of the
  generated fields caption / pseudo-name / ink coverage). A dataset column `entity_id` gives real entities.
* Linkage is nearest-neighbour retrieval (or thresholded cosine similarity) on the record embeddings:
  `evaluation_record_linkage.linkage_metrics` (pairwise precision / recall / F1 at a threshold, best F1, recall@k)
  and `evaluate_linkage` (observation A -> observation B on a held-out split, multimodal vs image-only vs
  text-only, the paper's comparison). `get_record_features` gives the pooled embeddings.

Paper defaults (as we read them): CLIP ViT-B/32 towers (a Japanese CLIP for the firm records), pooled mean
embedding, supervised contrastive training with hard-negative batches, nearest-neighbour linkage to an exemplar
index (and a similarity threshold / clustering for records without a match).

Presets: `"cpu-demo"`: the CLIP demo towers (resnet-tiny, 2 x 64 CLIP text encoder, context 48 for the longer
record text), 32 px digits, typo rate 0.1.

Deviations from the paper:

1. Stages 1 and 2 are trained jointly (weights `alignment_weight`, `linkage_weight`) instead of sequentially;
   set `linkage_weight=0` for the stage-1 (self-supervised CLIPPINGS) model, or fine-tune a stage-1 checkpoint.
2. Without labelled entities the linkage positives are two synthetic noisy observations of one record
   (instance-level), not different source documents of one firm; hard-negative batch mining is not implemented.
3. Records for tests / demo are generated from the digits (caption from the label template, a pseudo-name from
   the image pixels, ink coverage), with character-level OCR noise; the paper links real document crops + OCR.
4. Stock transformers towers and the offline BPE of the CLIP core (see its DEVIATIONS); the supervised
   contrastive temperature 0.1 is the SupCon default, not a value reported by the paper.
"""

from ..registry import MethodSpec
from ..clip import CPU_DEMO_PRESET as _CLIP_DEMO
from . import views_record_linkage  # noqa: F401  (registers the "record_pair" view policy)
from .configuration_record_linkage import RECORD_FIELDS, RecordLinkageConfig
from .evaluation_record_linkage import evaluate_linkage, linkage_metrics
from .image_processing_record_linkage import RecordLinkageImageProcessor
from .modeling_record_linkage import RecordLinkageForSelfSupervisedPretraining, supervised_contrastive_loss
from .views_record_linkage import corrupt_text, ink_percent, record_name

CPU_DEMO_PRESET = {
    **_CLIP_DEMO,
    "text_config": {**_CLIP_DEMO["text_config"], "max_position_embeddings": 48},
    "augmentation": {"crop_scale": [0.6, 1.0]},
}

METHOD = MethodSpec(
    name="record_linkage",
    config_class=RecordLinkageConfig,
    model_class=RecordLinkageForSelfSupervisedPretraining,
    image_processor_class=RecordLinkageImageProcessor,
    family="vision-language (record linkage)",
    description=(
        "CLIPPINGS: pooled image+text record embeddings trained with a supervised contrastive loss between noisy "
        "observations of the same entity plus CLIP alignment; linkage by nearest neighbour / threshold."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["RecordLinkageConfig", "RecordLinkageForSelfSupervisedPretraining", "RecordLinkageImageProcessor",
           "supervised_contrastive_loss", "linkage_metrics", "evaluate_linkage", "corrupt_text", "record_name",
           "ink_percent", "RECORD_FIELDS", "METHOD"]
