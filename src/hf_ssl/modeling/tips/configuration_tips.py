"""TIPS configuration (Maninis et al., "TIPS: Text-Image Pretraining with Spatial awareness", ICLR 2025)."""

from __future__ import annotations

from typing import Optional, Sequence

from transformers import AutoConfig

from ..clip.configuration_clip import CLIPSSLConfig

# the paper's smallest-patch ViT family (official `vit_base(patch_size=14)`, 224 px -> a 16 x 16 grid)
DEFAULT_TIPS_BACKBONE = dict(model_type="vit", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, patch_size=14)
# the released text tower's context length (`MAX_LEN = 64`, `text_max_seq_length = 64`); CLIP core text transformer
DEFAULT_TIPS_TEXT_CONFIG = dict(model_type="clip_text_model", vocab_size=49408, hidden_size=768,
                                intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                max_position_embeddings=64, hidden_act="gelu", bos_token_id=0, eos_token_id=1,
                                pad_token_id=2)


class TIPSConfig(CLIPSSLConfig):
    r"""Configuration of :class:`TIPSForSelfSupervisedPretraining` (see the package docstring for sources).

    Args (beyond :class:`CLIPSSLConfig`):
        web_caption_loss_weight / synthetic_caption_loss_weight: weights of the two image-text contrastive losses:
            first image token <-> noisy web caption, second image token <-> synthetic (dense) caption (1, 1).
        distillation_loss_weight: weight of the DINO-style self-distillation of the first token (alpha, 1).
        masked_loss_weight: weight of the iBOT-style masked patch distillation (beta, 1).
        head_out_dim / head_hidden_dim / head_bottleneck_dim / norm_last_layer: the DINO projection head
            (65536 prototypes, 2048 hidden, 256 bottleneck, weight-normalised last layer with unit norm).
        separate_patch_head: a second head for patch tokens (False: the CLS and patch terms share one head, the
            iBOT / DINOv2 default; True: iBOT's `shared_head=False`).
        student_temperature: 0.1. teacher_temperature: 0.07, reached linearly from `teacher_temperature_warmup`
            (0.04) over `teacher_temperature_warmup_steps`.
        center_momentum: 0.9 (one center for the CLS head, one for the patch head; all-reduced under DDP).
        teacher_momentum: EMA momentum of the teacher (0.996, raised to 1 by a half cosine).
        mask_probability: fraction of images that get a mask (iBOT `pred_start_epoch`-style 0.5).
        mask_ratio_range: per-image masking ratio drawn uniformly in this range (iBOT `pred_ratio 0.3 +- 0.2`).
        mask_min_block_patches: smallest block of the block-wise mask (iBOT / BEiT: 16 patches; small grids clamp).
        contrastive_on_masked_view: True: the contrastive losses use the student's masked global view (one student
            pass per global view); False: an extra unmasked student pass for them.
        synthetic_caption_column: data column with the synthetic (dense) caption ("auto": synthetic_caption,
            dense_caption, long_caption, long_text); digits without one get a generated descriptive caption.
    """

    model_type = "hf_ssl_tips"
    sub_configs = {"backbone_config": AutoConfig, "text_config": AutoConfig}
    paper_title = "TIPS: Text-Image Pretraining with Spatial awareness"
    paper_url = "https://arxiv.org/abs/2410.16512"
    citation = (
        "@inproceedings{maninis2025tips,\n"
        "  title={{TIPS}: Text-Image Pretraining with Spatial awareness},\n"
        "  author={Maninis, Kevis-Kokitsi and Chen, Kaifeng and Ghosh, Soham and Karpur, Arjun and Chen, Koert and"
        " Xia, Ye and Cao, Bingyi and Salz, Daniel and Han, Guangxing and Dlabal, Jan and Gnanapragasam, Dan and"
        " Seyedhosseini, Mojtaba and Zhou, Howard and Araujo, Andr{\\'e}},\n"
        "  booktitle={International Conference on Learning Representations (ICLR)},\n"
        "  year={2025}\n"
        "}"
    )
    default_backbone = DEFAULT_TIPS_BACKBONE
    # no flip / colour jitter: the synthetic captions describe positions and colours ("on the left", "red")
    default_augmentation = dict(CLIPSSLConfig.default_augmentation, policy="tips_views", global_scale=[0.9, 1.0],
                                num_local=6, local_size=98, local_scale=[0.05, 0.4])

    def __init__(self, backbone_config=None, text_config=None, image_size: int = 224,
                 web_caption_loss_weight: float = 1.0, synthetic_caption_loss_weight: float = 1.0,
                 distillation_loss_weight: float = 1.0, masked_loss_weight: float = 1.0,
                 head_out_dim: int = 65536, head_hidden_dim: int = 2048, head_bottleneck_dim: int = 256,
                 norm_last_layer: bool = True, separate_patch_head: bool = False,
                 student_temperature: float = 0.1, teacher_temperature: float = 0.07,
                 teacher_temperature_warmup: float = 0.04, teacher_temperature_warmup_steps: int = 0,
                 center_momentum: float = 0.9, teacher_momentum: float = 0.996, mask_probability: float = 0.5,
                 mask_ratio_range: Sequence[float] = (0.1, 0.5), mask_min_block_patches: int = 16,
                 contrastive_on_masked_view: bool = True, synthetic_caption_column: str = "auto",
                 image_mean: Optional[Sequence[float]] = None, image_std: Optional[Sequence[float]] = None,
                 **kwargs):
        self.web_caption_loss_weight = web_caption_loss_weight
        self.synthetic_caption_loss_weight = synthetic_caption_loss_weight
        self.distillation_loss_weight = distillation_loss_weight
        self.masked_loss_weight = masked_loss_weight
        self.head_out_dim = head_out_dim
        self.head_hidden_dim = head_hidden_dim
        self.head_bottleneck_dim = head_bottleneck_dim
        self.norm_last_layer = norm_last_layer
        self.separate_patch_head = separate_patch_head
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.teacher_temperature_warmup = teacher_temperature_warmup
        self.teacher_temperature_warmup_steps = teacher_temperature_warmup_steps
        self.center_momentum = center_momentum
        self.teacher_momentum = teacher_momentum
        self.mask_probability = mask_probability
        self.mask_ratio_range = list(mask_ratio_range)
        self.mask_min_block_patches = mask_min_block_patches
        self.contrastive_on_masked_view = contrastive_on_masked_view
        self.synthetic_caption_column = synthetic_caption_column
        num_channels = kwargs.get("num_channels", 3)
        # the released models take pixels in [0, 1] (`_MEAN_RGB = 0`, `_STDDEV_RGB = 1`)
        image_mean = image_mean if image_mean is not None else [0.0] * num_channels
        image_std = image_std if image_std is not None else [1.0] * num_channels
        super().__init__(backbone_config=backbone_config,
                         text_config=text_config if text_config is not None else dict(DEFAULT_TIPS_TEXT_CONFIG),
                         image_size=image_size, image_mean=image_mean, image_std=image_std, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if self.backbone_config.model_type != "vit":
            raise ValueError(f"TIPS needs a ViT image encoder (two image tokens + patch tokens), got "
                             f"{self.backbone_config.model_type!r}")
        self._check_non_negative(web_caption_loss_weight=self.web_caption_loss_weight,
                                 synthetic_caption_loss_weight=self.synthetic_caption_loss_weight,
                                 distillation_loss_weight=self.distillation_loss_weight,
                                 masked_loss_weight=self.masked_loss_weight)
        if self.web_caption_loss_weight + self.synthetic_caption_loss_weight <= 0:
            raise ValueError("at least one of the two contrastive (caption) losses needs a positive weight")
        self._check_positive(head_out_dim=self.head_out_dim, head_hidden_dim=self.head_hidden_dim,
                             head_bottleneck_dim=self.head_bottleneck_dim,
                             student_temperature=self.student_temperature,
                             teacher_temperature=self.teacher_temperature,
                             teacher_temperature_warmup=self.teacher_temperature_warmup)
        if not isinstance(self.teacher_temperature_warmup_steps, int) or self.teacher_temperature_warmup_steps < 0:
            raise ValueError(f"teacher_temperature_warmup_steps must be an integer >= 0, got "
                             f"{self.teacher_temperature_warmup_steps!r}")
        self._check_range("center_momentum", self.center_momentum, 0.0, 1.0)
        self._check_range("teacher_momentum", self.teacher_momentum, 0.0, 1.0, high_inclusive=True)
        self._check_range("mask_probability", self.mask_probability, 0.0, 1.0, high_inclusive=True)
        if len(self.mask_ratio_range) != 2:
            raise ValueError(f"mask_ratio_range must be [low, high], got {self.mask_ratio_range}")
        lo, hi = self.mask_ratio_range
        if not 0.0 <= lo <= hi < 1.0:
            raise ValueError(f"mask_ratio_range must satisfy 0 <= low <= high < 1, got {self.mask_ratio_range}")
        if int(self.mask_min_block_patches) < 1:
            raise ValueError("mask_min_block_patches must be >= 1")
        aug = self.augmentation
        if int(aug.get("num_local", 0)) < 0:
            raise ValueError("augmentation num_local must be >= 0")
        if self.distillation_loss_weight > 0 and int(aug.get("num_local", 0)) < 1:
            raise ValueError("the self-distillation loss (distillation_loss_weight > 0) needs local crops "
                             "(augmentation num_local >= 1): the teacher's global view is distilled into them")
        patch = self.backbone_config.patch_size
        if int(aug.get("local_size", patch)) % patch:
            raise ValueError(f"augmentation local_size {aug.get('local_size')} must be divisible by the patch "
                             f"size {patch}")
