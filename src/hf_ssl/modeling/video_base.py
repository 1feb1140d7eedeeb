"""Shared base classes and pieces of the video methods (inputs `pixel_values_videos` `[B, T, C, H, W]`).

* :class:`VideoSSLConfig`: `num_frames` (clip length the encoder is built for), `sampling_rate` (frame stride of the
  sampled window), a stock video encoder from `backbones.VIDEO_FAMILY` (VideoMAEModel) whose `num_frames` is filled
  in from the config, the deterministic `video_eval` policy for k-NN / linear probes, mean pooling.
* :class:`VideoSSLPreTrainedModel`: `main_input_name = "pixel_values_videos"`, channels on axis 2, clear input
  errors, `get_input_features(clips)` (mean of all tokens, like VideoMAE's linear probe and the vanilla export), and
  `get_image_features(images)` for single images seen as STATIC clips (the image repeated `num_frames` times).
* :class:`VideoMAEPixelDecoder`: the official VideoMAE decoder (encoder-to-decoder projection without bias, learned
  mask token, fixed 1-D sinusoid positions, pre-norm blocks, prediction of the masked tubes only).
* :func:`video_pixel_targets`: VideoMAE's reconstruction targets (de-normalised pixels, optionally normalised per tube
  and channel).

Data (decoding, sampling, clip augmentation, `builtin:moving_digits`) lives in `hf_ssl.training.video`.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .backbones import (VIDEO_FAMILY, backbone_family, check_pixel_values, check_video_values, check_volume_values,
                        encode, video_backbone_spec, video_patchify, volume_to_video)
from .base import SSLConfig, SSLImageProcessor, SSLPreTrainedModel
from .heads import TransformerBlock
from ..training import video as _video_policies  # noqa: F401  (registers the `video_eval` / `video_masked` policies)


class VideoSSLConfig(SSLConfig):
    """Configuration shared by video methods (subclass it; call `super().__init__(...)` with the method kwargs).

    Args:
        num_frames: frames per clip the encoder sees (VideoMAE: 16); filled into a preset / dict video backbone.
        sampling_rate: stride between sampled frames of the source clip (VideoMAE: 4 on Kinetics, 2 on SSv2).
        feature_pooling: must be "mean" (video encoders have no CLS token; features = mean of all tokens).
    """

    model_type = "hf_ssl_video"
    default_backbone = "videomae-base"

    def __init__(self, backbone_config=None, num_frames: int = 16, sampling_rate: int = 4,
                 feature_pooling: str = "mean", **kwargs):
        self.num_frames = num_frames
        self.sampling_rate = sampling_rate
        if not isinstance(num_frames, int) or num_frames < 1:
            raise ValueError(f"num_frames must be an integer >= 1, got {num_frames!r}")
        backbone_config = video_backbone_spec(backbone_config, self.default_backbone, num_frames)
        super().__init__(backbone_config=backbone_config, feature_pooling=feature_pooling, **kwargs)
        self.augmentation.setdefault("eval_policy", "video_eval")

    def validate_ssl(self) -> None:
        super().validate_ssl()
        bc = self.backbone_config
        if backbone_family(bc) != "video":
            raise ValueError(f"{type(self).__name__} needs a video backbone ({', '.join(VIDEO_FAMILY)}), got "
                             f"model_type {bc.model_type!r}")
        if self.feature_pooling != "mean":
            raise ValueError("video encoders have no CLS token: feature_pooling must be 'mean'")
        if not isinstance(self.sampling_rate, int) or self.sampling_rate < 1:
            raise ValueError(f"sampling_rate must be an integer >= 1, got {self.sampling_rate!r}")
        if bc.num_frames != self.num_frames:
            raise ValueError(f"num_frames={self.num_frames} but backbone_config.num_frames={bc.num_frames}")
        if self.num_frames % bc.tubelet_size:
            raise ValueError(f"num_frames {self.num_frames} must be divisible by the tubelet size {bc.tubelet_size}")
        if self.image_size % bc.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by the patch size {bc.patch_size}")
        bs = bc.image_size if isinstance(bc.image_size, int) else bc.image_size[0]
        if bs != self.image_size:
            raise ValueError(f"image_size={self.image_size} but backbone_config.image_size={bc.image_size}")

    @property
    def token_grid(self) -> Tuple[int, int, int]:
        bc = self.backbone_config
        g = self.image_size // bc.patch_size
        return self.num_frames // bc.tubelet_size, g, g

    @property
    def num_tokens(self) -> int:
        t, h, w = self.token_grid
        return t * h * w


class VideoSSLPreTrainedModel(SSLPreTrainedModel):
    """Base of video `XxxForSelfSupervisedPretraining` models (see the module docstring)."""

    config_class = VideoSSLConfig
    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)
    input_channel_dim = 2

    def check_video_values(self, pixel_values_videos, name: str = "pixel_values_videos") -> None:
        cfg = self.config
        check_video_values(pixel_values_videos, cfg.num_channels, cfg.num_frames, cfg.image_size, name)

    def encode_clips(self, pixel_values_videos: torch.Tensor, encoder: Optional[nn.Module] = None) -> torch.Tensor:
        """Pooled `[B, D]` (mean of all tokens) of full clips, with gradient."""
        return encode(encoder if encoder is not None else self.encoder, pixel_values_videos, "mean")

    @torch.no_grad()
    def get_input_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pooled clip embedding `[B, D]` (mean of all tokens of the exported encoder, as the vanilla export)."""
        self.check_video_values(inputs)
        return self.encode_clips(inputs, getattr(self, self.export_attribute))

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor, pooling: Optional[str] = None) -> torch.Tensor:
        """Images `[B, C, H, W]` are embedded as static clips (each repeated `num_frames` times); a `[B, T, C, H, W]`
        clip batch is passed to :meth:`get_input_features`."""
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5:
            return self.get_input_features(pixel_values)
        check_pixel_values(pixel_values, self.config.num_channels)
        clips = pixel_values.unsqueeze(1).expand(-1, self.config.num_frames, -1, -1, -1)
        return self.get_input_features(clips)

    def export_check_input(self, x: torch.Tensor) -> torch.Tensor:
        """The stock encoder takes clips in the same `[B, T, C, H, W]` layout (`VideoMAEModel(pixel_values=...)`)."""
        return x

    @staticmethod
    def synthetic_metric(synthetic_clip, device) -> Dict[str, torch.Tensor]:
        """`{"synthetic_clip_fraction": ...}` from the policy's per-example flags (clips made from single images)."""
        if synthetic_clip is None:
            return {}
        return {"synthetic_clip_fraction": torch.as_tensor(synthetic_clip, device=device).float().mean().detach()}


class VolumeInputsMixin:
    """Inputs of the 3-D volume methods (`pixel_values_volumes` `[B, C, D, H, W]` read by a stock VideoMAEModel along
    depth): size / value checks, the export check's stock layout, and pooled features of volumes or of images
    embedded as constant volumes. Needs `config.volume_depth / image_size / num_channels` and `self.encoder`."""

    @property
    def volume_size(self) -> tuple:
        return self.config.volume_depth, self.config.image_size, self.config.image_size

    def check_volumes(self, volumes, name="pixel_values_volumes"):
        check_volume_values(volumes, self.config.num_channels, name, size=self.volume_size)

    def export_check_input(self, volumes: torch.Tensor):
        """(model input, stock input): the exported VideoMAEModel takes the same volumes as `[B, D, C, H, W]` clips."""
        return volumes, volume_to_video(volumes)

    @torch.no_grad()
    def get_input_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pooled `[B, hidden]` feature of volumes `[B, C, D, H, W]`: mean of all encoder tokens (no masking)."""
        self.check_volumes(inputs)
        return encode(self.encoder, volume_to_video(inputs), "mean")

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor, pooling: Optional[str] = None) -> torch.Tensor:
        """Images `[B, C, H, W]` (image_size square) are embedded as constant volumes (the image repeated along
        depth); volumes `[B, C, D, H, W]` go to `get_input_features`."""
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5:
            return self.get_input_features(pixel_values)
        self.check_pixel_values(pixel_values)
        volumes = pixel_values.unsqueeze(2).expand(-1, -1, self.config.volume_depth, -1, -1)
        return self.get_input_features(volumes.contiguous())


class VideoSSLImageProcessor(SSLImageProcessor):
    """Per-frame inference preprocessing of video methods (resize the shorter side to size / 0.875, centre crop,
    normalize; apply it to every frame of a clip). Its stock form is transformers' `VideoMAEImageProcessor`, which
    takes a list of frames and returns `[1, T, C, H, W]`, so exported video encoders preprocess clips without
    hf_ssl."""

    def to_stock_dict(self) -> dict:
        out = super().to_stock_dict()
        out["image_processor_type"] = "VideoMAEImageProcessor"
        out.pop("do_convert_rgb", None)
        return out


# ----------------------------------------------------------------------------------------------------
# VideoMAE decoder and targets
# ----------------------------------------------------------------------------------------------------
_SINUSOID_CACHE: Dict[tuple, torch.Tensor] = {}


def sinusoid_table(num_positions: int, dim: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """VideoMAE's fixed 1-D sinusoid table `[N, dim]`: channel j of position p is p / 10000^(2 floor(j/2) / dim),
    sine on even channels, cosine on odd ones (the table of transformers' `VideoMAEEmbeddings`). Cached."""
    key = (num_positions, dim, str(device), dtype)
    if key not in _SINUSOID_CACHE:
        pos = np.arange(num_positions, dtype=np.float64)[:, None]
        j = np.arange(dim)
        angles = pos / np.power(10000, 2 * (j // 2) / dim)[None]
        table = np.where(j % 2 == 0, np.sin(angles), np.cos(angles))
        _SINUSOID_CACHE[key] = torch.from_numpy(table).to(device=device, dtype=dtype)
    return _SINUSOID_CACHE[key]


class VideoMAEPixelDecoder(nn.Module):
    """Official VideoMAE decoder (`modeling_pretrain.PretrainVisionTransformer`): `encoder_to_decoder` (no bias) maps
    the visible tokens to the decoder width, fixed sinusoid positions are added to them and to a learned mask token
    repeated at the masked positions, the sequence `[visible; masked]` runs through `depth` pre-norm blocks, and the
    final LayerNorm + linear head predict the masked tubes only (`[B, M, out_dim]`, masked ones in ascending order)."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, out_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim = dim
        self.encoder_to_decoder = nn.Linear(in_dim, dim, bias=False)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.ModuleList([TransformerBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, out_dim)

    def forward(self, visible_tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n = mask.shape
        x = self.encoder_to_decoder(visible_tokens)
        pos = sinusoid_table(n, self.dim, x.device, x.dtype).unsqueeze(0).expand(b, -1, -1)
        pos_visible = pos[~mask].reshape(b, -1, self.dim)
        pos_masked = pos[mask].reshape(b, -1, self.dim)
        if pos_visible.shape[1] != x.shape[1]:
            raise ValueError(f"{x.shape[1]} visible tokens but the mask leaves {pos_visible.shape[1]} visible")
        x = torch.cat([x + pos_visible, self.mask_token.to(x.dtype) + pos_masked], dim=1)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, -pos_masked.shape[1]:]))


def video_pixel_targets(clips: torch.Tensor, mean, std, tubelet_size: int, patch_size: int,
                        normalize: bool = True, eps: float = 1e-6) -> torch.Tensor:
    """VideoMAE targets `[B, N, tubelet * p * p * C]` from normalized clips `[B, T, C, H, W]`: the clip is mapped back
    to [0, 1] pixels with the config's `mean` / `std`, cut into tubes; with `normalize` each tube is normalized per
    channel over its `tubelet * p * p` pixels (`(x - mean) / (std_unbiased + eps)`, official `--normlize_target`)."""
    c = clips.shape[2]
    m = torch.as_tensor(mean, device=clips.device, dtype=torch.float32).view(1, 1, c, 1, 1)
    s = torch.as_tensor(std, device=clips.device, dtype=torch.float32).view(1, 1, c, 1, 1)
    pixels = clips.detach().float() * s + m
    tubes = video_patchify(pixels, tubelet_size, patch_size)  # [B, N, (t p p c)]
    if not normalize:
        return tubes
    b, n, _ = tubes.shape
    tubes = tubes.reshape(b, n, -1, c)
    tubes = (tubes - tubes.mean(dim=-2, keepdim=True)) / (tubes.var(dim=-2, unbiased=True, keepdim=True).sqrt() + eps)
    return tubes.reshape(b, n, -1)


__all__ = ["VideoSSLConfig", "VideoSSLPreTrainedModel", "VolumeInputsMixin", "VideoSSLImageProcessor", "VideoMAEPixelDecoder", "video_pixel_targets",
           "sinusoid_table"]
