"""Configuration of multimodal record linkage (CLIPPINGS: Arora, Yang, Jheng, Dell, "Linking Representations with
Multimodal Contrastive Learning" / "Record Linkage with Multimodal Contrastive Learning", arXiv 2304.03464)."""

from __future__ import annotations

from typing import Optional, Sequence

from ..clip.configuration_clip import CLIPSSLConfig

RECORD_FIELDS = ("name", "ink", "caption")  # identifier first: truncation cuts the caption end


class RecordLinkageConfig(CLIPSSLConfig):
    r"""Configuration of :class:`RecordLinkageForSelfSupervisedPretraining` (all CLIP arguments apply: the image
    and text towers are the CLIP core's).

    A record is an image plus text fields; its embedding is the mean of the L2-normalised image and text embeddings
    (CLIPPINGS' pooled embedding `z = (f(x) + g(t)) / 2`), L2-normalised. Two noisy observations of the same entity
    are pulled together with a supervised-contrastive (multi-positive InfoNCE) loss over the DDP-gathered batch,
    plus CLIP's image-text alignment of each observation.

    Args:
        linkage_temperature: temperature of the supervised contrastive loss on pooled record embeddings (0.1).
        linkage_weight / alignment_weight: weights of the linkage loss and the image-text InfoNCE (1, 1).
        image_weight: weight of the image embedding in the pooled record embedding (0.5 = the paper's mean).
        record_fields: text fields of a generated record, in order (default name, ink, caption): `caption` (the
            example's text or a label template), `name` (a pseudo-name derived from the image content: the record's
            identifier) and `ink` (the image's ink coverage in percent). Data with a text column supplies `caption`.
        typo_rate: per-character probability of an OCR/typing error (substitution, deletion, insertion,
            transposition) in each observation's text (0.1).
        link_threshold: cosine-similarity threshold of the pairwise linkage decision in evaluation (0.5).
    """

    model_type = "hf_ssl_record_linkage"
    paper_title = "Linking Representations with Multimodal Contrastive Learning"
    paper_url = "https://arxiv.org/abs/2304.03464"
    citation = (
        "@article{arora2023linking,\n"
        "  title={Linking Representations with Multimodal Contrastive Learning},\n"
        "  author={Arora, Abhishek and Yang, Xinmei and Jheng, Shao-Yu and Dell, Melissa},\n"
        "  journal={arXiv preprint arXiv:2304.03464},\n"
        "  year={2023}\n"
        "}"
    )
    # CLIPPINGS starts from CLIP ViT-B/32 towers
    default_backbone = dict(model_type="vit", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072, patch_size=32)
    default_augmentation = {
        "policy": "record_pair",
        "crop_scale": [0.7, 1.0],
        "horizontal_flip": 0.0,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.0, 0.0],
        "grayscale": 0.0,
        "gaussian_blur": 0.2,
        "solarize": 0.0,
    }

    def __init__(self, linkage_temperature: float = 0.1, linkage_weight: float = 1.0, alignment_weight: float = 1.0,
                 image_weight: float = 0.5, record_fields: Optional[Sequence[str]] = None, typo_rate: float = 0.1,
                 link_threshold: float = 0.5, **kwargs):
        self.linkage_temperature = linkage_temperature
        self.linkage_weight = linkage_weight
        self.alignment_weight = alignment_weight
        self.image_weight = image_weight
        self.record_fields = list(record_fields) if record_fields is not None else list(RECORD_FIELDS)
        self.typo_rate = typo_rate
        self.link_threshold = link_threshold
        kwargs.setdefault("feature_pooling", "cls")
        super().__init__(**kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(linkage_temperature=self.linkage_temperature)
        self._check_non_negative(linkage_weight=self.linkage_weight, alignment_weight=self.alignment_weight)
        if self.linkage_weight == 0 and self.alignment_weight == 0:
            raise ValueError("linkage_weight and alignment_weight cannot both be 0")
        self._check_range("image_weight", self.image_weight, 0.0, 1.0, high_inclusive=True)
        self._check_range("typo_rate", self.typo_rate, 0.0, 1.0)
        self._check_range("link_threshold", self.link_threshold, -1.0, 1.0, high_inclusive=True)
        unknown = set(self.record_fields) - set(RECORD_FIELDS)
        if not self.record_fields or unknown:
            raise ValueError(f"record_fields must be a non-empty subset of {RECORD_FIELDS}, got {self.record_fields}")
