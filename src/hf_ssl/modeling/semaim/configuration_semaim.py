"""SemAIM configuration (Song et al., "Semantic-Aware Autoregressive Image Modeling for Visual Representation
Learning", AAAI 2024)."""

from __future__ import annotations

from typing import Optional

from ..backbones import backbone_family
from ..base import SSLConfig

PERMUTATION_TYPES = ("attention_center", "attention", "stochastic", "raster")
TARGETS = ("pixel_norm", "pixel", "features")
SIMILARITY_TYPES = ("cls", "gap")


class SemAIMConfig(SSLConfig):
    r"""Configuration of :class:`SemAIMForSelfSupervisedPretraining`.

    Defaults are the paper's ViT-B/16 recipe as run by the official code (`skyoux/SemAIM`, README pretraining
    command: `--query_depth 12 --prediction_head_type MLP --gaussian_kernel_size 9 --gaussian_sigma 1
    --norm_pix_loss --permutation_type attention_center --attention_type cls`, blr 2e-4, wd 0.05, clip 3).

    Args:
        backbone_config: ViT-family encoder (default `"vit-base"`); it is the content stream.
        query_depth: number of query-stream (cross-attention) blocks; one follows every
            `depth // query_depth`-th encoder layer (official 12 = the ViT-B depth). `None` = encoder depth.
        permutation_type: autoregression order. `"attention_center"` (paper default): the patch most similar
            to the semantic anchor (the encoder's own stop-gradient CLS token, or the patch mean) is predicted
            first, the others by increasing spatial distance to it (ties broken randomly);
            `"attention"`: by decreasing similarity itself; `"stochastic"`: a random order (AIM baseline);
            `"raster"`: row-major order.
        similarity_type: anchor of the semantic similarity: `"cls"` (official `--attention_type cls`) or
            `"gap"` (mean patch token).
        target: `"pixel_norm"` (default, per-patch normalized pixels, official `--norm_pix_loss`), `"pixel"`,
            or `"features"` (the encoder's own stop-gradient output tokens, official `--predict_feature
            inference`; loss = squared distance of L2-normalized vectors).
        target_blur_kernel_size / target_blur_sigma: Gaussian blur applied to the image before pixel targets are
            built (official 9 / 1); `None` disables it.
        prediction_head: `"mlp"` (official default, hidden = 4 x width) or `"linear"`.
        loss_type: `"l2"` (default) or `"l1"`.
        encoder_sincos_pos_embed: fixed (frozen) 2-D sin-cos position embeddings in the encoder, which are also
            the query stream's inputs (official).
    """

    model_type = "hf_ssl_semaim"
    paper_title = "Semantic-Aware Autoregressive Image Modeling for Visual Representation Learning"
    paper_url = "https://arxiv.org/abs/2312.10457"
    citation = (
        "@inproceedings{song2024semantic,\n"
        "  title={Semantic-Aware Autoregressive Image Modeling for Visual Representation Learning},\n"
        "  author={Song, Kaiyou and Zhang, Shan and Wang, Tong},\n"
        "  booktitle={Proceedings of the AAAI Conference on Artificial Intelligence},\n"
        "  year={2024},\n"
        "  note={arXiv:2312.10457}\n"
        "}"
    )
    default_backbone = "vit-base"
    # official transform_train: RandomResizedCrop(224, scale=(0.2, 1.0), bicubic) + RandomHorizontalFlip
    default_augmentation = {
        "policy": "single_view",
        "crop_scale": [0.2, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        query_depth: Optional[int] = None,
        permutation_type: str = "attention_center",
        similarity_type: str = "cls",
        target: str = "pixel_norm",
        target_blur_kernel_size: Optional[int] = 9,
        target_blur_sigma: float = 1.0,
        prediction_head: str = "mlp",
        loss_type: str = "l2",
        encoder_sincos_pos_embed: bool = True,
        feature_pooling: str = "cls",
        augmentation=None,
        **kwargs,
    ):
        self.query_depth = query_depth
        self.permutation_type = permutation_type
        self.similarity_type = similarity_type
        self.target = target
        self.target_blur_kernel_size = target_blur_kernel_size
        self.target_blur_sigma = target_blur_sigma
        self.prediction_head = prediction_head
        self.loss_type = loss_type
        self.encoder_sincos_pos_embed = encoder_sincos_pos_embed
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling,
                         augmentation=augmentation, **kwargs)

    @property
    def resolved_query_depth(self) -> int:
        return self.query_depth or self.backbone_config.num_hidden_layers

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError(
                f"SemAIM needs a ViT-family backbone (patch tokens with attention masks), got model_type "
                f"{self.backbone_config.model_type!r}."
            )
        depth = self.backbone_config.num_hidden_layers
        q = self.resolved_query_depth
        if not isinstance(q, int) or q < 1 or q > depth or depth % q:
            raise ValueError(f"query_depth must be an integer in [1, {depth}] dividing the encoder depth {depth}, "
                             f"got {self.query_depth!r}")
        if self.permutation_type not in PERMUTATION_TYPES:
            raise ValueError(f"permutation_type must be one of {PERMUTATION_TYPES}, got {self.permutation_type!r}")
        if self.similarity_type not in SIMILARITY_TYPES:
            raise ValueError(f"similarity_type must be one of {SIMILARITY_TYPES}, got {self.similarity_type!r}")
        if self.target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {self.target!r}")
        if self.prediction_head not in ("mlp", "linear"):
            raise ValueError(f"prediction_head must be 'mlp' or 'linear', got {self.prediction_head!r}")
        if self.loss_type not in ("l1", "l2"):
            raise ValueError(f"loss_type must be 'l1' or 'l2', got {self.loss_type!r}")
        k = self.target_blur_kernel_size
        if k is not None:
            if not isinstance(k, int) or k < 1 or k % 2 == 0:
                raise ValueError(f"target_blur_kernel_size must be a positive odd integer or None, got {k!r}")
            self._check_positive(target_blur_sigma=self.target_blur_sigma)
        if self.encoder_sincos_pos_embed and self.backbone_config.hidden_size % 4:
            raise ValueError("encoder_sincos_pos_embed needs an encoder width divisible by 4")


__all__ = ["SemAIMConfig"]
