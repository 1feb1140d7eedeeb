"""ViLLA configurations (Varma et al., "ViLLA: Fine-Grained Vision-Language Representation Learning from Real-World
Data", ICCV 2023): stage 1 (the region-attribute mapping model) and stage 2 (region-text contrastive learning)."""

from __future__ import annotations

from typing import Optional, Sequence

from transformers import AutoConfig, PretrainedConfig

from ..clip.configuration_clip import CLIPSSLConfig

# attribute vocabulary of the generated digit captions (`views_villa.digit_attribute_caption`)
DIGIT_ATTRIBUTES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "thick", "thin",
                    "medium", "upright", "leans", "top", "bottom", "left", "right", "centered", "tall", "wide",
                    "balanced"]


class ViLLAMappingConfig(PretrainedConfig):
    r"""Stage 1: the lightweight self-supervised mapping model (official `Stage1_RN50`, `Stage1_Loss`).

    Args:
        embedding_dim: width of the region embeddings and the attribute (text) embeddings (official 1024, CLIP RN50).
        attribute_names: the attribute vocabulary (one projection head per attribute).
        one_projection: a single head shared by every attribute (official `one_proj`, default False).
        adapter: residual adapter `0.2 head(x) + 0.8 x` (official `adapter`, default False).
        mapping_temperature: temperature of the image-attribute contrastive loss (0.07).
        epsilon: the mapping threshold: an attribute goes to every region scoring >= max - epsilon (0.2).
        official_denominator: reproduce the released loss exactly (positive images of the same attribute add
            exp(0) = 1 each to the denominator) instead of the intended negatives-only denominator.
    """

    model_type = "hf_ssl_villa_mapping"

    def __init__(self, embedding_dim: int = 1024, attribute_names: Optional[Sequence[str]] = None,
                 one_projection: bool = False, adapter: bool = False, mapping_temperature: float = 0.07,
                 epsilon: float = 0.2, official_denominator: bool = False, **kwargs):
        self.embedding_dim = embedding_dim
        self.attribute_names = list(attribute_names) if attribute_names is not None else list(DIGIT_ATTRIBUTES)
        self.one_projection = one_projection
        self.adapter = adapter
        self.mapping_temperature = mapping_temperature
        self.epsilon = epsilon
        self.official_denominator = official_denominator
        super().__init__(**kwargs)
        if int(self.embedding_dim) < 1:
            raise ValueError(f"embedding_dim must be >= 1, got {self.embedding_dim}")
        if not self.attribute_names or len(set(self.attribute_names)) != len(self.attribute_names):
            raise ValueError("attribute_names must be a non-empty list of distinct names")
        if self.mapping_temperature is None or self.mapping_temperature <= 0:
            raise ValueError(f"mapping_temperature must be > 0, got {self.mapping_temperature}")
        if self.epsilon is None or self.epsilon < 0:
            raise ValueError(f"epsilon must be >= 0, got {self.epsilon}")

    @property
    def num_attributes(self) -> int:
        return len(self.attribute_names)


class ViLLAConfig(CLIPSSLConfig):
    r"""Stage 2: contrastive learning between region embeddings (ROI-pooled from the image encoder's feature map,
    plus the whole image) and the attribute sentences stage 1 assigned to them (official `Stage2_RN50`,
    `Stage2_Loss`).

    Args (beyond :class:`CLIPSSLConfig`):
        region_temperature: fixed softmax temperature of the region-text loss (official `temp: 0.07`).
        learnable_temperature: use the CLIP core's learnable logit scale instead (default False, as released).
        lambda_region_to_text: weight of the region -> text direction; the text -> region one gets 1 - lambda (0.5).
        roi_output_size: ROI-align output grid (official 14 for the 14x14 layer-3 map of a 224 px RN50).
        roi_sampling_ratio: bilinear samples per output bin side (0: adaptive, `ceil(bin size)`, as torchvision).
        region_source: "auto" (boxes from the data column when present, else a grid), "data" or "grid".
        region_grid: the grid used when regions are not in the data (2: four quadrants).
        max_regions: regions per image kept for batching (the whole-image region is added on top).
        freeze_text_encoder: the released stage 2 trains only the image encoder on pre-computed text embeddings of
            a frozen (CLIP) text encoder (default True).
        region_column / region_text_column / caption_column: data columns with boxes `[x0, y0, x1, y1]` (pixels of
            the original image), the per-region assigned text (stage-1 output) and the whole-image caption.
        attribute_names: vocabulary used to find attributes in captions (for the stage-1 data and the fallback).
    """

    model_type = "hf_ssl_villa"
    sub_configs = {"backbone_config": AutoConfig, "text_config": AutoConfig}
    paper_title = "ViLLA: Fine-Grained Vision-Language Representation Learning from Real-World Data"
    paper_url = "https://arxiv.org/abs/2308.11194"
    citation = (
        "@inproceedings{varma2023villa,\n"
        "  title={{ViLLA}: Fine-Grained Vision-Language Representation Learning from Real-World Data},\n"
        "  author={Varma, Maya and Delbrouck, Jean-Benoit and Hooper, Sarah and Chaudhari, Akshay and"
        " Langlotz, Curtis},\n"
        "  booktitle={International Conference on Computer Vision (ICCV)},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = "resnet-50"
    default_augmentation = dict(CLIPSSLConfig.default_augmentation, policy="villa_regions")

    def __init__(self, backbone_config=None, region_temperature: float = 0.07, learnable_temperature: bool = False,
                 lambda_region_to_text: float = 0.5, roi_output_size: int = 14, roi_sampling_ratio: int = 0,
                 region_source: str = "auto", region_grid: int = 2, max_regions: int = 4,
                 freeze_text_encoder: bool = True, region_column: str = "regions",
                 region_text_column: str = "region_texts", caption_column: str = "auto",
                 attribute_names: Optional[Sequence[str]] = None, **kwargs):
        self.region_temperature = region_temperature
        self.learnable_temperature = learnable_temperature
        self.lambda_region_to_text = lambda_region_to_text
        self.roi_output_size = roi_output_size
        self.roi_sampling_ratio = roi_sampling_ratio
        self.region_source = region_source
        self.region_grid = region_grid
        self.max_regions = max_regions
        self.freeze_text_encoder = freeze_text_encoder
        self.region_column = region_column
        self.region_text_column = region_text_column
        self.caption_column = caption_column
        self.attribute_names = list(attribute_names) if attribute_names is not None else list(DIGIT_ATTRIBUTES)
        super().__init__(backbone_config=backbone_config, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(region_temperature=self.region_temperature)
        self._check_range("lambda_region_to_text", self.lambda_region_to_text, 0.0, 1.0, high_inclusive=True)
        if int(self.roi_output_size) < 1 or int(self.roi_sampling_ratio) < 0:
            raise ValueError("roi_output_size must be >= 1 and roi_sampling_ratio >= 0")
        if self.region_source not in ("auto", "data", "grid"):
            raise ValueError(f"region_source must be 'auto', 'data' or 'grid', got {self.region_source!r}")
        if int(self.region_grid) < 1 or int(self.max_regions) < 1:
            raise ValueError("region_grid and max_regions must be >= 1")
        if self.region_source != "data" and int(self.region_grid) ** 2 > int(self.max_regions):
            raise ValueError(f"region_grid {self.region_grid} gives {int(self.region_grid) ** 2} regions > "
                             f"max_regions {self.max_regions}")
        if not self.attribute_names:
            raise ValueError("attribute_names must be non-empty")
