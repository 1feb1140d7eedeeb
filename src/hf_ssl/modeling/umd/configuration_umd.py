"""UMD configuration (Hansen-Estruch et al., "Unified Auto-Encoding with Masked Diffusion", 2024)."""

from __future__ import annotations

from typing import Optional

from ..backbones import backbone_family
from ..base import SSLConfig
from .diffusion_umd import BETA_SCHEDULES, beta_schedule

# the official B/4 encoder at 64x64 (`configs/ae_i1k.py`, variant "B/4")
UMD_VIT_B4 = dict(model_type="vit", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                  intermediate_size=3072, patch_size=4)


class UMDConfig(SSLConfig):
    r"""Configuration of :class:`UMDForSelfSupervisedPretraining`.

    Defaults follow the paper's pixel-space ImageNet-64 recipe as run by the official code
    (`philippe-eecs/small-vision`, `big_vision/configs/ae_i1k.py`, `models/ae.py`, `trainers/train_ae.py`).

    Args:
        backbone_config: the encoder, a ViT-family config (default ViT-B/4 as in the official "B/4" at 64 px).
        image_size: 64 (official `size=64`).
        mask_ratio: patch mask ratio of the noised (diffusion) steps (official `mask_ratio=0.375`).
        mask_ratio_no_noise: mask ratio of the noise-free "mask step" t = 0 (official 0.75, MAE-like).
        no_noise_prob: fraction of each batch that takes the noise-free mask step (official `no_noise_prob=0.5`);
            the loss is `r * L_{t=0} + (1 - r) * L_{t>=1}` with r the realised fraction (`int(B * no_noise_prob)/B`).
        num_timesteps: diffusion steps T (official 1000).
        noise_schedule: `"cosine"` (official for pixel space) or `"linear"` (official for latent space).
        decoder_hidden_size / decoder_num_heads: decoder width / heads; `None` = the encoder's (official: the
            decoder has the encoder's width and heads).
        decoder_depth: decoder blocks (official `dec_depth` 4 for S/B, 8 for L).
        decoder_mlp_ratio: 4.
        decoder_pos_embed: `"learned"` (official `dec_pos_embedding`, normal(1/sqrt(N))) or `"sincos"`.
        time_conditioning: how the decoder sees the timestep: `"adaln"` (official default `adaln=True`:
            adaLN-Zero in every decoder block plus a final shift/scale) or `"token"` (official `adaln=False`
            variant: the condition vector is prepended as an extra token).
        encoder_time_conditioning: the official encoder is also adaLN-conditioned on t. The stock transformers
            ViT cannot be, so `True` (default) adds a learned projection of the time embedding to every input
            token *relative to t = 0* (`proj(c_t) - proj(c_0)`): exactly zero at t = 0, so the exported encoder is
            the representation model, and t-dependent for noised inputs. `False`: the encoder ignores t.
        feature_pooling: `"cls"` (the official representation is the encoder's class-token output).
        image_mean / image_std: default 0.5 / 0.5 so pixels lie in [-1, 1] (official `value_range(-1, 1)`), the
            data range the diffusion schedule assumes.
    """

    model_type = "hf_ssl_umd"
    paper_title = "Unified Auto-Encoding with Masked Diffusion"
    paper_url = "https://arxiv.org/abs/2406.17688"
    citation = (
        "@article{hansenestruch2024unified,\n"
        "  title={Unified Auto-Encoding with Masked Diffusion},\n"
        "  author={Hansen-Estruch, Philippe and Vishwanath, Sriram and Zhang, Amy and Tomar, Manan},\n"
        "  journal={arXiv preprint arXiv:2406.17688},\n"
        "  year={2024}\n"
        "}"
    )
    default_backbone = UMD_VIT_B4
    # official pipeline: inception crop (area_min 80%) + horizontal flip, nothing else
    default_augmentation = {
        "policy": "umd",
        "crop_scale": [0.8, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }

    def __init__(
        self,
        backbone_config=None,
        image_size: int = 64,
        mask_ratio: float = 0.375,
        mask_ratio_no_noise: float = 0.75,
        no_noise_prob: float = 0.5,
        num_timesteps: int = 1000,
        noise_schedule: str = "cosine",
        decoder_hidden_size: Optional[int] = None,
        decoder_num_heads: Optional[int] = None,
        decoder_depth: int = 4,
        decoder_mlp_ratio: float = 4.0,
        decoder_pos_embed: str = "learned",
        time_conditioning: str = "adaln",
        encoder_time_conditioning: bool = True,
        feature_pooling: str = "cls",
        image_mean=None,
        image_std=None,
        num_channels: int = 3,
        **kwargs,
    ):
        self.mask_ratio = mask_ratio
        self.mask_ratio_no_noise = mask_ratio_no_noise
        self.no_noise_prob = no_noise_prob
        self.num_timesteps = num_timesteps
        self.noise_schedule = noise_schedule
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_heads = decoder_num_heads
        self.decoder_depth = decoder_depth
        self.decoder_mlp_ratio = decoder_mlp_ratio
        self.decoder_pos_embed = decoder_pos_embed
        self.time_conditioning = time_conditioning
        self.encoder_time_conditioning = encoder_time_conditioning
        if image_mean is None:
            image_mean = [0.5] * num_channels
        if image_std is None:
            image_std = [0.5] * num_channels
        super().__init__(backbone_config=backbone_config, image_size=image_size, num_channels=num_channels,
                         feature_pooling=feature_pooling, image_mean=image_mean, image_std=image_std, **kwargs)

    @property
    def resolved_decoder_hidden_size(self) -> int:
        return self.decoder_hidden_size or self.backbone_config.hidden_size

    @property
    def resolved_decoder_num_heads(self) -> int:
        return self.decoder_num_heads or self.backbone_config.num_attention_heads

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if backbone_family(self.backbone_config) != "vit":
            raise ValueError(
                f"UMD needs a ViT-family backbone (patch tokens that can be dropped), got model_type "
                f"{self.backbone_config.model_type!r}."
            )
        self._check_range("mask_ratio", self.mask_ratio, 0.0, 1.0)
        self._check_range("mask_ratio_no_noise", self.mask_ratio_no_noise, 0.0, 1.0, low_inclusive=False)
        self._check_range("no_noise_prob", self.no_noise_prob, 0.0, 1.0, high_inclusive=True)
        if not isinstance(self.num_timesteps, int) or self.num_timesteps < 1:
            raise ValueError(f"num_timesteps must be an integer >= 1, got {self.num_timesteps!r}")
        if self.noise_schedule not in BETA_SCHEDULES:
            raise ValueError(f"noise_schedule must be one of {BETA_SCHEDULES}, got {self.noise_schedule!r}")
        beta_schedule(self.noise_schedule, self.num_timesteps)  # raises for degenerate schedules
        if not isinstance(self.decoder_depth, int) or self.decoder_depth < 1:
            raise ValueError(f"decoder_depth must be an integer >= 1, got {self.decoder_depth!r}")
        self._check_positive(decoder_mlp_ratio=self.decoder_mlp_ratio)
        if self.decoder_hidden_size is not None:
            self._check_positive(decoder_hidden_size=self.decoder_hidden_size)
        if self.decoder_num_heads is not None:
            self._check_positive(decoder_num_heads=self.decoder_num_heads)
        dim, heads = self.resolved_decoder_hidden_size, self.resolved_decoder_num_heads
        if dim % heads:
            raise ValueError(f"decoder width {dim} is not divisible by decoder_num_heads {heads}")
        if self.decoder_pos_embed not in ("learned", "sincos"):
            raise ValueError(f"decoder_pos_embed must be 'learned' or 'sincos', got {self.decoder_pos_embed!r}")
        if self.decoder_pos_embed == "sincos" and dim % 4:
            raise ValueError("decoder_pos_embed='sincos' needs a decoder width divisible by 4")
        if self.time_conditioning not in ("adaln", "token"):
            raise ValueError(f"time_conditioning must be 'adaln' or 'token', got {self.time_conditioning!r}")
        if self.backbone_config.hidden_size % 2:
            raise ValueError("the sinusoidal timestep embedding needs an even encoder width")


__all__ = ["UMDConfig", "UMD_VIT_B4"]
