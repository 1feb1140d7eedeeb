"""DreamLIP configuration (Zheng et al., "DreamLIP: Language-Image Pre-training with Long Captions", ECCV 2024)."""

from __future__ import annotations

from transformers import AutoConfig

from ..clip.configuration_clip import CLIPSSLConfig


class DreamLIPConfig(CLIPSSLConfig):
    r"""Configuration of :class:`DreamLIPForSelfSupervisedPretraining`.

    Defaults follow the official code (github.com/ant-research/DreamLIP, `training/params.py`, `open_clip/loss.py`):

    Args (beyond :class:`CLIPSSLConfig`):
        num_subcaptions: sub-captions sampled from the long caption per image and step (official `num_text` 6); the
            raw (short) caption is always added as text 0.
        contrastive_loss_weight: weight of the per-text CLIP losses, averaged over the 1 + K texts
            (`clip_lossweight` 1.0).
        multi_positive_loss_weight: weight of the multi-positive image-to-texts circle loss (official: the loss is
            divided by 10, i.e. 0.1).
        circle_margin / circle_gamma: circle-loss margin and scale (0.25, 32).
        grouping_loss_weight: weight of the subcaption-specific grouping loss (`sgl_lossweight` 1.0).
        grouping_threshold: sparsification threshold on the normalised patch-to-subcaption similarities
            (`sgl_delta`, default 0.0; a negative value means 1 / number of patches).
        grouping_norm: "minmax" (default) or "softmax" normalisation of the similarities over patches.
        subcaption_merge: how many consecutive sentences make one sub-caption (`merged_num` 1).
        long_caption_column: column with the long (multi-sentence) caption ("auto": long_caption, long_captions,
            long_text, dense_caption).
    """

    model_type = "hf_ssl_dreamlip"
    sub_configs = {"backbone_config": AutoConfig, "text_config": AutoConfig}
    paper_title = "DreamLIP: Language-Image Pre-training with Long Captions"
    paper_url = "https://arxiv.org/abs/2403.17007"
    citation = (
        "@inproceedings{zheng2024dreamlip,\n"
        "  title={DreamLIP: Language-Image Pre-training with Long Captions},\n"
        "  author={Zheng, Kecheng and Zhang, Yifei and Wu, Wei and Lu, Fan and Ma, Shuailei and Jin, Xin and"
        " Chen, Wei and Shen, Yujun},\n"
        "  booktitle={European Conference on Computer Vision (ECCV)},\n"
        "  year={2024}\n"
        "}"
    )
    default_backbone = "vit-base"
    default_augmentation = dict(CLIPSSLConfig.default_augmentation, policy="long_caption")

    def __init__(self, backbone_config=None, num_subcaptions: int = 6, contrastive_loss_weight: float = 1.0,
                 multi_positive_loss_weight: float = 0.1, circle_margin: float = 0.25, circle_gamma: float = 32.0,
                 grouping_loss_weight: float = 1.0, grouping_threshold: float = 0.0, grouping_norm: str = "minmax",
                 subcaption_merge: int = 1, long_caption_column: str = "auto", **kwargs):
        self.num_subcaptions = num_subcaptions
        self.contrastive_loss_weight = contrastive_loss_weight
        self.multi_positive_loss_weight = multi_positive_loss_weight
        self.circle_margin = circle_margin
        self.circle_gamma = circle_gamma
        self.grouping_loss_weight = grouping_loss_weight
        self.grouping_threshold = grouping_threshold
        self.grouping_norm = grouping_norm
        self.subcaption_merge = subcaption_merge
        self.long_caption_column = long_caption_column
        super().__init__(backbone_config=backbone_config, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if int(self.num_subcaptions) < 1 or int(self.subcaption_merge) < 1:
            raise ValueError("num_subcaptions and subcaption_merge must be >= 1")
        self._check_non_negative(contrastive_loss_weight=self.contrastive_loss_weight,
                                 multi_positive_loss_weight=self.multi_positive_loss_weight,
                                 grouping_loss_weight=self.grouping_loss_weight)
        if self.contrastive_loss_weight + self.multi_positive_loss_weight + self.grouping_loss_weight <= 0:
            raise ValueError("at least one loss weight must be positive")
        self._check_range("circle_margin", self.circle_margin, 0.0, 1.0)
        self._check_positive(circle_gamma=self.circle_gamma)
        if self.grouping_threshold >= 1.0:
            raise ValueError(f"grouping_threshold must be < 1 (normalised similarities are <= 1), got "
                             f"{self.grouping_threshold}")
        if self.grouping_norm not in ("minmax", "softmax"):
            raise ValueError(f"grouping_norm must be 'minmax' or 'softmax', got {self.grouping_norm!r}")
