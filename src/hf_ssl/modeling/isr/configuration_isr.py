"""ISR configuration (Dou et al., "Identity-Seeking Self-Supervised Representation Learning for Generalizable Person
Re-identification", ICCV 2023)."""

from __future__ import annotations

from ..base import SSLConfig

# the paper's encoder: Swin-B/4, window 7, 224 px (released `demo_A.py`: timm `swin_base_patch4_window7_224`)
SWIN_BASE = dict(model_type="swin", embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=7,
                 patch_size=4)


class ISRConfig(SSLConfig):
    r"""Configuration of :class:`ISRForSelfSupervisedPretraining`.

    Args:
        backbone_config: the instance encoder, any stock transformers image backbone (default Swin-B/4 window 7, the
            released model).
        image_size: side of an instance crop fed to the encoder (released inference: crops resized to 224 x 224).
        embedding_dim: width of the linear embedding on the pooled backbone feature that the loss uses (released
            model: `Linear(1024, 512)` after Swin-B's pooled feature); `None` = use the pooled feature itself.
        contrastive_temperature: temperature of the reliability-guided InfoNCE (0.05; see the DEVIATIONS in the
            package docstring: the value could not be checked against the paper text).
        reliability: how a matched pair's reliability is scored: `"dual_softmax"` (default: the product of the
            row-wise and column-wise softmax of the similarity matrix at the pair) or `"similarity"` (its cosine
            similarity clamped to [0, 1]).
        reliability_temperature: temperature of the dual softmax over the frame-to-frame similarity matrix that
            scores each matched pair's reliability.
        reliability_threshold: matched pairs whose reliability is below it are dropped (0 keeps every match and lets
            the weights do the work).
        min_frame_gap / max_frame_gap: the two frames of a clip are `g` frames apart, `g` uniform in this range
            (clipped to the clip length).
        max_instances: detections kept per frame (the largest ones); crops are padded to this count and masked.
        ink_threshold: the stand-in detector (connected components of ink, see `views_isr`): a pixel is ink when its
            grey level (0-255) exceeds it.
        min_instance_area: components smaller than this many pixels are not instances.
        crop_margin: pixels added around a component's bounding box before the (square) crop.
        augmentation: `isr` policy: per-crop random resized crop (scale 0.5-1), flip, colour jitter, grayscale, each
            drawn independently for every instance crop; `eval_policy` `isr_eval` (largest instance of the middle
            frame, deterministic).
    """

    model_type = "hf_ssl_isr"
    paper_title = ("Identity-Seeking Self-Supervised Representation Learning for Generalizable Person "
                   "Re-identification")
    paper_url = "https://arxiv.org/abs/2308.08887"
    citation = (
        "@inproceedings{dou2023isr,\n"
        "  title={Identity-Seeking Self-Supervised Representation Learning for Generalizable Person "
        "Re-identification},\n"
        "  author={Dou, Zhaopeng and Wang, Zhongdao and Li, Yali and Wang, Shengjin},\n"
        "  booktitle={IEEE/CVF International Conference on Computer Vision (ICCV)},\n"
        "  pages={15847--15858},\n"
        "  year={2023}\n"
        "}"
    )
    default_backbone = SWIN_BASE
    default_augmentation = {
        "policy": "isr",
        "eval_policy": "isr_eval",
        "crop_scale": [0.5, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.8,
        "color_jitter_strength": [0.4, 0.4, 0.4, 0.1],
        "grayscale": 0.2,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
        "single_image_clip": "camera",
    }

    def __init__(self, backbone_config=None, image_size: int = 224, embedding_dim=512,
                 contrastive_temperature: float = 0.05, reliability: str = "dual_softmax",
                 reliability_temperature: float = 0.05,
                 reliability_threshold: float = 0.0, min_frame_gap: int = 1, max_frame_gap: int = 8,
                 max_instances: int = 4, ink_threshold: int = 40, min_instance_area: int = 12, crop_margin: int = 2,
                 feature_pooling: str = "mean", **kwargs):
        self.embedding_dim = embedding_dim
        self.contrastive_temperature = contrastive_temperature
        self.reliability = reliability
        self.reliability_temperature = reliability_temperature
        self.reliability_threshold = reliability_threshold
        self.min_frame_gap = min_frame_gap
        self.max_frame_gap = max_frame_gap
        self.max_instances = max_instances
        self.ink_threshold = ink_threshold
        self.min_instance_area = min_instance_area
        self.crop_margin = crop_margin
        super().__init__(backbone_config=backbone_config, image_size=image_size, feature_pooling=feature_pooling,
                         **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        self._check_positive(contrastive_temperature=self.contrastive_temperature,
                             reliability_temperature=self.reliability_temperature)
        if self.reliability not in ("dual_softmax", "similarity"):
            raise ValueError(f"reliability must be 'dual_softmax' or 'similarity', got {self.reliability!r}")
        self._check_range("reliability_threshold", self.reliability_threshold, 0.0, 1.0)
        self._check_integer(1, min_frame_gap=self.min_frame_gap, max_frame_gap=self.max_frame_gap,
                            max_instances=self.max_instances, min_instance_area=self.min_instance_area)
        if self.min_frame_gap > self.max_frame_gap:
            raise ValueError(f"min_frame_gap ({self.min_frame_gap}) must be <= max_frame_gap ({self.max_frame_gap})")
        if not isinstance(self.crop_margin, int) or self.crop_margin < 0:
            raise ValueError(f"crop_margin must be an integer >= 0, got {self.crop_margin!r}")
        self._check_range("ink_threshold", self.ink_threshold, 0, 255)
        if self.embedding_dim is not None and (not isinstance(self.embedding_dim, int) or self.embedding_dim < 1):
            raise ValueError(f"embedding_dim must be None or an integer >= 1, got {self.embedding_dim!r}")


__all__ = ["ISRConfig", "SWIN_BASE"]
