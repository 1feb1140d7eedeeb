"""MFM model: corrupt the image in the frequency domain, encode it whole, predict the image with a linear head and
compare the prediction's spectrum with the original's on the removed frequencies.

    x (normalized) -> image space [0, 1] -> FFT -> fftshift -> x low-/high-pass filtered -> iFFT (real) -> clamp
      -> normalize -> encoder (whole corrupted image, no mask token) -> last feature map [B, D, H/s, W/s]
      -> 1x1 conv (D -> s*s*C) + pixel shuffle(s) -> prediction [B, C, H, W]
    loss = mean over removed frequencies (and channels) of |FFT_ortho(prediction) - FFT_ortho(x)| ** loss_gamma
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..backbones import encoder_feature_map, feature_dim, feature_stride
from ..base import SSLPreTrainedModel
from ..masking import frequency_mask
from ..outputs import SSLOutput
from .configuration_mfm import MFMConfig

_MASK_CACHE: Dict[tuple, torch.Tensor] = {}


def filter_masks(height: int, width: int, radius: float, device=None) -> torch.Tensor:
    """`[2, H, W]` bool masks (True = frequency removed) of the centred spectrum: index 0 = low-pass (high
    frequencies removed), index 1 = high-pass (low frequencies removed); official `FreqMaskGenerator` geometry."""
    key = (height, width, float(radius), str(device))
    if key not in _MASK_CACHE:
        low = frequency_mask(height, width, radius, keep="low", inclusive=False)
        high = frequency_mask(height, width, radius, keep="high", inclusive=False)
        _MASK_CACHE[key] = torch.from_numpy(np.stack([low, high])).to(device)
    return _MASK_CACHE[key]


def centred_spectrum(x: torch.Tensor, norm: Optional[str] = None) -> torch.Tensor:
    """2-D FFT over the last two dims with the zero frequency moved to the centre (`fftshift`)."""
    return torch.fft.fftshift(torch.fft.fft2(x, norm=norm), dim=(-2, -1))


def frequency_corrupt(image01: torch.Tensor, removed: torch.Tensor, clamp: bool = True) -> torch.Tensor:
    """Remove the frequencies where `removed [B, H, W]` is True from images in [0, 1] `[B, C, H, W]`: real part of
    the inverse FFT of the masked, centred spectrum (then clamped to [0, 1], as the official code does)."""
    spectrum = centred_spectrum(image01.float()) * (~removed).unsqueeze(1)
    out = torch.fft.ifft2(torch.fft.ifftshift(spectrum, dim=(-2, -1))).real
    return out.clamp(0.0, 1.0) if clamp else out


def frequency_distance(pred: torch.Tensor, target: torch.Tensor, loss_gamma: float = 1.0,
                       focal_weighting: bool = False, matrix_gamma: float = 1.0) -> torch.Tensor:
    """Per-frequency distance `[B, C, H, W]` between orthonormal centred spectra (official `FrequencyLoss`, patch
    factor 1, no spectrum averaging): `sqrt(|dRe|^2 + |dIm|^2 + 1e-12) ** loss_gamma`, optionally weighted by the
    detached focal-frequency matrix normalised by its per-(image, channel) maximum."""
    diff = centred_spectrum(pred.float(), "ortho") - centred_spectrum(target.float(), "ortho")
    sq = diff.real**2 + diff.imag**2
    loss = torch.sqrt(sq + 1e-12) ** loss_gamma
    if focal_weighting:
        with torch.no_grad():
            w = torch.sqrt(sq) ** matrix_gamma
            w = w / w.amax(dim=(-2, -1), keepdim=True)
            w = torch.nan_to_num(w, nan=0.0).clamp(0.0, 1.0)
        loss = w * loss
    return loss


def masked_frequency_loss(distance: torch.Tensor, removed: Optional[torch.Tensor]) -> torch.Tensor:
    """Mean of `distance [B, C, H, W]` over the removed frequencies `removed [B, H, W]` (and channels), as the
    official `(loss * (1 - mask)).sum() / (1 - mask).sum() / C`; `removed=None` averages everything."""
    if removed is None:
        return distance.mean()
    w = removed.unsqueeze(1).to(distance.dtype)
    return (distance * w).sum() / w.sum().clamp_min(1.0) / distance.shape[1]


class MFMForSelfSupervisedPretraining(SSLPreTrainedModel):
    """MFM pretraining model (see `hf_ssl.modeling.mfm`).

    Attributes:
        encoder: stock transformers backbone (ViT / Swin / ResNet / ConvNeXt) that sees the whole corrupted image.
        decoder: `Conv2d(D, stride**2 * C, 1)` + `PixelShuffle(stride)` on the encoder's last feature map
            (official `MFM.decoder` for Swin/ResNet and for ViT with decoder depth 0).
    """

    config_class = MFMConfig

    def __init__(self, config: MFMConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        self.encoder_stride = feature_stride(config.backbone_config)
        self.decoder = nn.Sequential(
            nn.Conv2d(feature_dim(config.backbone_config), self.encoder_stride**2 * config.num_channels, 1),
            nn.PixelShuffle(self.encoder_stride),
        )
        self.post_init()

    # -- masks ---------------------------------------------------------------------------------------------
    def generate_frequency_mask(self, batch_size: int, size: Tuple[int, int], device=None,
                                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """`[B, H, W]` removed-frequency masks: per sample low-pass with probability `low_pass_prob`, else
        high-pass, radius `mask_radius` (official `FreqMaskGenerator`)."""
        masks = filter_masks(size[0], size[1], self.config.mask_radius, device)
        u = torch.rand(batch_size, generator=generator)
        choice = (u >= self.config.resolved_low_pass_prob).long().to(masks.device)  # 0 = low-pass, 1 = high-pass
        return masks[choice].to(device)

    def _prepare_mask(self, frequency_mask_: Optional[torch.Tensor], pixel_values: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixel_values.shape
        if frequency_mask_ is None:
            return self.generate_frequency_mask(b, (h, w), device=pixel_values.device)
        m = torch.as_tensor(frequency_mask_, device=pixel_values.device)
        if m.dim() == 2:
            m = m.unsqueeze(0).expand(b, -1, -1)
        if m.dim() == 4 and m.shape[1] == 1:
            m = m[:, 0]
        if m.shape != (b, h, w):
            raise ValueError(f"frequency_mask must be [batch, height, width] = {[b, h, w]} (True = frequency removed), "
                             f"got {list(m.shape)}")
        return m.bool()

    def _unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.config.image_mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.config.image_std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
        return x.float() * std + mean, mean, std

    def corrupt(self, pixel_values: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """Normalized corrupted image: the filtering runs in [0, 1] image space, as in the official pipeline."""
        image01, mean, std = self._unnormalize(pixel_values)
        corrupted = frequency_corrupt(image01, removed, clamp=self.config.clamp_corrupted)
        return ((corrupted - mean) / std).to(pixel_values.dtype)

    def predict(self, corrupted: torch.Tensor, return_features: bool = False):
        """Pixel prediction `[B, C, H, W]` (normalized space) from the whole corrupted image."""
        features = encoder_feature_map(self.encoder, corrupted)
        prediction = self.decoder(features)
        return (prediction, features) if return_features else prediction

    def loss_from_prediction(self, prediction: torch.Tensor, target: torch.Tensor, removed: torch.Tensor):
        cfg = self.config
        dist = frequency_distance(prediction, target.detach(), cfg.loss_gamma, cfg.focal_weighting, cfg.matrix_gamma)
        return masked_frequency_loss(dist, removed if cfg.recover_target == "masked" else None)

    def forward(self, pixel_values: torch.Tensor, frequency_mask: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[B, C, H, W]` normalized images (`config.image_mean/std`).
            frequency_mask: `[B, H, W]` (or `[H, W]`) bool, True = frequency removed, over the centred spectrum;
                drawn per sample (low-/high-pass, `mask_radius`) when omitted.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `logits` = the predicted image `[B, C, H, W]`;
            `embeddings` = spatial mean of the encoder's last feature map of the corrupted image (detached; no
            extra forward; `get_image_features` pools the clean image with `feature_pooling`).
        """
        self.check_pixel_values(pixel_values)
        h, w = pixel_values.shape[-2:]
        if h % self.encoder_stride or w % self.encoder_stride:
            raise ValueError(f"pixel_values size {(h, w)} is not divisible by the encoder stride {self.encoder_stride}")
        removed = self._prepare_mask(frequency_mask, pixel_values)
        corrupted = self.corrupt(pixel_values, removed)
        prediction, features = self.predict(corrupted, return_features=True)
        loss = self.loss_from_prediction(prediction, pixel_values, removed)
        with torch.no_grad():
            low_pass = (removed[:, h // 2, w // 2] == 0).float().mean()
        embeddings = features.detach().float().mean(dim=(2, 3))
        output = SSLOutput(loss=loss, embeddings=embeddings, logits=prediction,
                           metrics={"frequency_loss": loss.detach(), "low_pass_fraction": low_pass})
        return output if return_dict else output.to_tuple()


__all__ = ["MFMForSelfSupervisedPretraining", "filter_masks", "centred_spectrum", "frequency_corrupt",
           "frequency_distance", "masked_frequency_loss"]
