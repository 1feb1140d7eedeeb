"""PixPro: pixel-to-propagation consistency between two views' feature maps.

    y1 = projector(encoder_map(view1))                     online dense features [B, d, h, w]
    z1 = PPM(y1): z_i = sum_j max(cos(y_i, y_j), 0)^gamma * g(y_j)   (g: 1x1 conv "transform layer")
    y2' = teacher_projector(teacher_encoder_map(view2))    momentum dense features, no gradient
    A   = [dist(centre_i(view1), centre_j(view2)) / max cell diagonal < 0.7]   positive pixel pairs
    loss = -2 * mean_b [ sum_ij A_ij cos(z1_i, y2'_j) / sum_ij A_ij ]  + the same with the views swapped
    on_step_end: EMA of encoder + projector with momentum 1 - (1 - 0.99) (cos(pi k / K) + 1) / 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import encoder_feature_map, feature_dim
from ..base import SSLPreTrainedModel
from ..momentum import cosine_schedule, ema_update_, init_teacher_from_student_
from ..outputs import SSLOutput
from .configuration_pixpro import PixProConfig


class ConvMLP2d(nn.Module):
    """1x1 conv -> BN -> ReLU -> 1x1 conv on a feature map (the official `MLP2d`)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(in_dim, hidden_dim, 1), nn.BatchNorm2d(hidden_dim), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden_dim, out_dim, 1))

    def forward(self, x):
        return self.net(x)


def cell_centers(coords: torch.Tensor, height: int, width: int):
    """Centres of the `height x width` feature-map cells in normalized original-image coordinates.

    coords: `[B, 4]` = (x_start, y_start, x_end, y_end) of each crop (x swapped for a flipped view).
    Returns x `[B, h*w]`, y `[B, h*w]` and the cell diagonal `[B, 1]`."""
    coords = coords.float()
    bin_w = (coords[:, 2] - coords[:, 0]) / width
    bin_h = (coords[:, 3] - coords[:, 1]) / height
    xs = torch.arange(width, dtype=coords.dtype, device=coords.device) + 0.5
    ys = torch.arange(height, dtype=coords.dtype, device=coords.device) + 0.5
    cx = coords[:, 0, None, None] + xs.view(1, 1, width) * bin_w.view(-1, 1, 1)
    cy = coords[:, 1, None, None] + ys.view(1, height, 1) * bin_h.view(-1, 1, 1)
    cx = cx.expand(-1, height, width).reshape(coords.shape[0], -1)
    cy = cy.expand(-1, height, width).reshape(coords.shape[0], -1)
    diag = torch.sqrt(bin_w ** 2 + bin_h ** 2).view(-1, 1)
    return cx, cy, diag


@torch.no_grad()
def positive_pair_mask(coords_1: torch.Tensor, coords_2: torch.Tensor, height: int, width: int,
                       threshold: float = 0.7) -> torch.Tensor:
    """`[B, h*w, h*w]` float mask: cell i of view 1 and cell j of view 2 are positives when the distance of their
    centres in the original image, divided by the larger of the two views' cell diagonals, is below `threshold`."""
    x1, y1, d1 = cell_centers(coords_1, height, width)
    x2, y2, d2 = cell_centers(coords_2, height, width)
    dist = torch.sqrt((x1[:, :, None] - x2[:, None, :]) ** 2 + (y1[:, :, None] - y2[:, None, :]) ** 2)
    dist = dist / torch.maximum(d1, d2)[:, :, None]
    return (dist < threshold).float()


def pixel_consistency_loss(online: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`-2 * mean_b [ sum_ij mask_ij cos(online_i, target_j) / sum_ij mask_ij ]` (official `regression_loss`).
    online, target: `[B, C, h, w]`; mask `[B, h*w, h*w]`. Images without positives contribute 0."""
    b, c = online.shape[:2]
    q = F.normalize(online.reshape(b, c, -1), dim=1)
    k = F.normalize(target.reshape(b, c, -1), dim=1)
    cos = torch.bmm(q.transpose(1, 2), k)
    per_image = (cos * mask).sum(dim=(1, 2)) / (mask.sum(dim=(1, 2)) + 1e-6)
    return -2.0 * per_image.mean()


class PixelPropagationModule(nn.Module):
    """PPM: `z_i = sum_j s(y_i, y_j) g(y_j)` with `s = max(cos, clamp)^gamma` and g a transform layer."""

    def __init__(self, dim: int, gamma: float = 2.0, clamp_value: float = 0.0, transform_layers: int = 1):
        super().__init__()
        self.gamma = gamma
        self.clamp_value = clamp_value
        if transform_layers == 0:
            self.transform = nn.Identity()
        elif transform_layers == 1:
            self.transform = nn.Conv2d(dim, dim, 1)
        else:
            self.transform = ConvMLP2d(dim, dim, dim)

    def similarity(self, feat: torch.Tensor) -> torch.Tensor:
        b, c = feat.shape[:2]
        f = F.normalize(feat.reshape(b, c, -1), dim=1)
        sim = torch.bmm(f.transpose(1, 2), f).clamp(min=self.clamp_value)
        if self.gamma < 1:
            sim = sim + 1e-6  # official: keeps the gradient of x^p finite at 0
        return sim ** self.gamma

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        b, c, h, w = feat.shape
        value = F.normalize(self.transform(feat), dim=1).reshape(b, c, -1)
        out = torch.bmm(value, self.similarity(feat).transpose(1, 2))
        return out.reshape(b, c, h, w)


class PixProForSelfSupervisedPretraining(SSLPreTrainedModel):
    """PixPro pre-training model.

    Attributes:
        encoder / projector: online encoder (stock transformers backbone; its last feature map) and 1x1-conv
            projector.
        ppm: pixel propagation module (online branch only).
        teacher_encoder / teacher_projector: momentum encoder + projector (frozen, EMA in `on_step_end`).

    Dense output for segmentation: `get_dense_features(pixel_values)` returns the encoder's last feature map
    `[B, C, h, w]` (`get_image_features` mean-pools it for k-NN); the exported encoder is a stock ResNetModel
    whose `last_hidden_state` is the same map.
    """

    config_class = PixProConfig

    def __init__(self, config: PixProConfig):
        super().__init__(config)
        dim = feature_dim(config.backbone_config)
        self.encoder = self._build_encoder()
        self.projector = ConvMLP2d(dim, config.projection_hidden_dim, config.projection_dim)
        self.ppm = PixelPropagationModule(config.projection_dim, config.ppm_gamma, config.ppm_clamp_value,
                                          config.ppm_transform_layers)
        self.teacher_encoder = self._build_encoder()
        self.teacher_projector = ConvMLP2d(dim, config.projection_hidden_dim, config.projection_dim)
        self.register_buffer("current_momentum", torch.tensor(float(config.base_momentum)))
        self.post_init()

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_projector.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            # the momentum encoder starts as a copy of the online encoder (after the children's init)
            init_teacher_from_student_((self.teacher_encoder, self.encoder), (self.teacher_projector, self.projector))
            init.constant_(self.current_momentum, float(self.config.base_momentum))

    @torch.no_grad()
    def get_dense_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's last feature map `[B, C, h, w]` (the dense representation used for segmentation)."""
        self.check_pixel_values(pixel_values)
        return encoder_feature_map(self.encoder, pixel_values)

    def _online(self, pixel_values):
        return self.ppm(self.projector(encoder_feature_map(self.encoder, pixel_values)))

    @torch.no_grad()
    def _target(self, pixel_values):
        return self.teacher_projector(encoder_feature_map(self.teacher_encoder, pixel_values))

    def forward(self, pixel_values, coords=None, return_dict: bool = True, **kwargs):
        if not isinstance(pixel_values, (list, tuple)):
            self.check_pixel_values(pixel_values)
            feats = encoder_feature_map(self.encoder, pixel_values)
            return SSLOutput(embeddings=feats.mean(dim=(2, 3)))
        if len(pixel_values) != 2:
            raise ValueError(f"PixPro needs exactly 2 views, got {len(pixel_values)}")
        if coords is None or len(coords) != 2:
            raise ValueError("PixPro needs `coords`: a list of 2 [B, 4] crop boxes (use the 'pixpro' view policy)")
        v1, v2 = pixel_values
        for i, v in enumerate((v1, v2)):
            self.check_pixel_values(v, f"pixel_values[{i}]")
        c1, c2 = (torch.as_tensor(c, device=v1.device) for c in coords)
        for c in (c1, c2):
            if c.shape != (v1.shape[0], 4):
                raise ValueError(f"coords must be [batch, 4] per view, got {tuple(c.shape)}")
        feat1 = encoder_feature_map(self.encoder, v1)
        feat2 = encoder_feature_map(self.encoder, v2)
        pred1, pred2 = self.ppm(self.projector(feat1)), self.ppm(self.projector(feat2))
        target1, target2 = self._target(v1), self._target(v2)
        h, w = feat1.shape[-2:]
        if feat2.shape[-2:] != (h, w):
            raise ValueError("both views must give feature maps of the same size")
        thr = self.config.positive_distance_threshold
        mask12 = positive_pair_mask(c1, c2, h, w, thr)
        mask21 = mask12.transpose(1, 2)
        loss12 = pixel_consistency_loss(pred1, target2, mask12)
        loss21 = pixel_consistency_loss(pred2, target1, mask21)
        loss = loss12 + loss21
        metrics = {"loss_12": loss12.detach(), "loss_21": loss21.detach(),
                   "positive_pairs_per_image": mask12.sum(dim=(1, 2)).mean().detach(),
                   "momentum": self.current_momentum.detach().clone()}
        out = SSLOutput(loss=loss, embeddings=feat1.mean(dim=(2, 3)).detach(), metrics=metrics)
        return out if return_dict else out.to_tuple()

    def on_step_end(self, step: int, max_steps: int) -> None:
        m = cosine_schedule(step, max_steps, self.config.base_momentum, 1.0)
        ema_update_(self.teacher_encoder, self.encoder, m)
        ema_update_(self.teacher_projector, self.projector, m)
        self.current_momentum.fill_(m)


__all__ = ["PixProForSelfSupervisedPretraining", "PixelPropagationModule", "positive_pair_mask",
           "pixel_consistency_loss", "cell_centers", "ConvMLP2d"]
