"""SIE model: split representation, per-part projectors, hypernetwork predictor and the SIE criterion.

Data flow of one step (views x1, x2 of B images, relative transformation parameters t [B, P]):

    x_i --encoder--> h_i [B, D] = [h_i_inv (D - E) | h_i_equi (E)]
    z_i_inv = proj_inv(h_i_inv),  z_i_equi = proj_equi(h_i_equi),  z_i = [z_i_inv | z_i_equi]
    pred = predictor_{W = hypernet(t)}(z_1_equi)             (the predictor's weights are a function of t)
    loss = sim * mse(z_1_inv, z_2_inv) + equi_factor * sim * mse(pred, z_2_equi)
         + std * (var(z_1) + var(z_2)) / 2 + std * var(pred) / 2 + cov * (cov(z_1) + cov(z_2))
    (variance / covariance on the batch gathered over all processes, with gradient; no stop-gradient anywhere,
    as in the official code)
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import encode
from ..base import SSLPreTrainedModel
from ..losses import all_gather
from ..outputs import SSLOutput
from .configuration_sie import SIEConfig


def sie_projector(in_dim: int, dims: List[int], batch_norm: bool = True) -> nn.Sequential:
    """Official `Projector`: (Linear-BN-ReLU) blocks, last Linear without bias."""
    widths = [in_dim] + list(dims)
    layers: List[nn.Module] = []
    for i in range(len(widths) - 2):
        layers.append(nn.Linear(widths[i], widths[i + 1]))
        if batch_norm:
            layers.append(nn.BatchNorm1d(widths[i + 1]))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(widths[-2], widths[-1], bias=False))
    return nn.Sequential(*layers)


def off_diagonal(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def variance_loss(x: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """VICReg hinge `mean(relu(1 - sqrt(var + eps)))` over dimensions (unbiased variance, centred batch)."""
    x = x - x.mean(dim=0)
    return F.relu(1 - torch.sqrt(x.var(dim=0) + eps)).mean()


def covariance_loss(x: torch.Tensor) -> torch.Tensor:
    """VICReg `sum(offdiag(cov)^2) / dim` with `cov = x_c^T x_c / (N - 1)`."""
    n, d = x.shape
    x = x - x.mean(dim=0)
    cov = (x.T @ x) / (n - 1)
    return off_diagonal(cov).pow(2).sum() / d


class HyperNetworkPredictor(nn.Module):
    """Official `ParametrizedNet`: a hypernetwork maps the transformation parameters `t` [B, P] to the weights
    (and optionally biases) of a per-sample MLP `E -> hidden... -> E` applied to the equivariant embedding."""

    def __init__(self, dim: int, num_params: int, hidden_dims=(), hypernetwork: str = "linear",
                 predictor_bias: bool = False, hypernetwork_bias: bool = False, relu: bool = False):
        super().__init__()
        self.widths = [dim] + list(hidden_dims) + [dim]
        self.predictor_bias = predictor_bias
        self.num_weights = [self.widths[i] * self.widths[i + 1] for i in range(len(self.widths) - 1)]
        sizes = [w + (self.widths[i + 1] if predictor_bias else 0) for i, w in enumerate(self.num_weights)]
        self.offsets = [0]
        for s in sizes:
            self.offsets.append(self.offsets[-1] + s)
        total = self.offsets[-1]
        if hypernetwork == "linear":
            self.hypernet = nn.Sequential(nn.Linear(num_params, total, bias=hypernetwork_bias))
        else:
            self.hypernet = nn.Sequential(
                nn.Linear(num_params, num_params, bias=hypernetwork_bias), nn.ReLU(),
                nn.Linear(num_params, num_params, bias=hypernetwork_bias), nn.ReLU(),
                nn.Linear(num_params, total, bias=hypernetwork_bias))
        self.activation = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        generated = self.hypernet(params)
        out = x
        n_layers = len(self.widths) - 1
        for i in range(n_layers):
            start = self.offsets[i]
            w = generated[:, start:start + self.num_weights[i]].view(-1, self.widths[i + 1], self.widths[i])
            out = torch.einsum("boi,bi->bo", w, out)
            if self.predictor_bias:
                out = out + generated[:, start + self.num_weights[i]:self.offsets[i + 1]]
            if i < n_layers - 1:
                out = self.activation(out)
        return out


class SIEForSelfSupervisedPretraining(SSLPreTrainedModel):
    """SIE (Garrido, Najman & LeCun, ICML 2023) on any stock transformers backbone.

    Attributes:
        encoder: the stock backbone; its pooled representation is split into `[invariant | equivariant]`.
        projector_inv, projector_equi: the two projectors (official widths scaled by each part's share).
        predictor: `HyperNetworkPredictor` conditioned on the relative transformation parameters.
    """

    config_class = SIEConfig

    def __init__(self, config: SIEConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        inv_dims = config.part_projection_dims(config.invariant_dim)
        equi_dims = config.part_projection_dims(config.equivariant_dim)
        self.inv_emb_dim, self.equi_emb_dim = inv_dims[-1], equi_dims[-1]
        self.projector_inv = sie_projector(config.invariant_dim, inv_dims, config.projection_batch_norm)
        self.projector_equi = sie_projector(config.equivariant_dim, equi_dims, config.projection_batch_norm)
        self.predictor = HyperNetworkPredictor(
            self.equi_emb_dim, config.num_transformation_params, config.predictor_hidden_dims, config.hypernetwork,
            config.predictor_bias, config.hypernetwork_bias, config.predictor_relu)
        self.post_init()

    def _init_weights(self, module):
        # official: PyTorch-default initialisation of the projectors and the hypernetwork
        if isinstance(module, nn.Linear):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
        else:
            super()._init_weights(module)

    # -- building blocks --------------------------------------------------------------------------------------
    def split(self, h: torch.Tensor):
        """`(h_inv, h_equi)`: the first `D - E` and the last `E` dimensions of the representation."""
        k = self.config.invariant_dim
        return h[..., :k], h[..., k:]

    def embed(self, h: torch.Tensor):
        h_inv, h_equi = self.split(h)
        return self.projector_inv(h_inv), self.projector_equi(h_equi)

    def sie_losses(self, z1_inv, z1_equi, z2_inv, z2_equi, params):
        """The official SIE criterion; returns `(loss, terms)`."""
        c = self.config
        repr_loss_inv = F.mse_loss(z1_inv, z2_inv)
        pred = self.predictor(z1_equi, params)
        repr_loss_equi = F.mse_loss(pred, z2_equi)
        pred_all = all_gather(pred, with_grad=True)
        x = all_gather(torch.cat([z1_inv, z1_equi], dim=1), with_grad=True)
        y = all_gather(torch.cat([z2_inv, z2_equi], dim=1), with_grad=True)
        pred_std_loss = variance_loss(pred_all) / 2
        std_loss = variance_loss(x) / 2 + variance_loss(y) / 2
        cov_loss = covariance_loss(x) + covariance_loss(y)
        loss = (c.sim_coeff * repr_loss_inv + c.equi_factor * c.sim_coeff * repr_loss_equi
                + c.std_coeff * std_loss + c.std_coeff * pred_std_loss + c.cov_coeff * cov_loss)
        terms = {"repr_loss_inv": repr_loss_inv, "repr_loss_equi": repr_loss_equi, "std_loss": std_loss,
                 "pred_std_loss": pred_std_loss, "cov_loss": cov_loss}
        return loss, terms, pred

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values, transformation_params=None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[view1, view2]`, two `[B, C, H, W]` tensors, or one `[B, C, H, W]` tensor (embeddings
                only, no loss).
            transformation_params: `[B, P]` float, the parameters of the transformation taking view 1 to view 2
                (from the `"sie"` view policy); required with two views.

        Returns:
            `SSLOutput(loss, embeddings=view-1 representation (detached), logits=predicted view-2 equivariant
            embedding, metrics=the loss terms)`.
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            with torch.no_grad():
                emb = encode(self.encoder, pixel_values, self.config.feature_pooling)
            return SSLOutput(embeddings=emb)
        views = list(pixel_values)
        if len(views) != 2:
            raise ValueError(f"SIE needs exactly 2 views, got {len(views)}")
        for i, v in enumerate(views):
            self.check_pixel_values(v, name=f"pixel_values[{i}]")
        if views[0].shape[0] != views[1].shape[0]:
            raise ValueError(f"both views need the same batch size, got {views[0].shape[0]} and {views[1].shape[0]}")
        if transformation_params is None:
            raise ValueError("SIE needs `transformation_params` [B, P] relating view 1 to view 2 (use the 'sie' "
                             "view policy)")
        batch = views[0].shape[0]
        p = self.config.num_transformation_params
        if transformation_params.ndim != 2 or tuple(transformation_params.shape) != (batch, p):
            raise ValueError(f"transformation_params must have shape [{batch}, {p}], got "
                             f"{tuple(transformation_params.shape)}")
        if batch < 2:
            raise ValueError("SIE's variance/covariance terms need a batch of at least 2 images")
        params = transformation_params.to(views[0].device, torch.float32)
        # the official code encodes the two views in separate calls (BatchNorm statistics per view)
        h1 = encode(self.encoder, views[0], self.config.feature_pooling)
        h2 = encode(self.encoder, views[1], self.config.feature_pooling)
        z1_inv, z1_equi = self.embed(h1)
        z2_inv, z2_equi = self.embed(h2)
        loss, terms, pred = self.sie_losses(z1_inv.float(), z1_equi.float(), z2_inv.float(), z2_equi.float(),
                                            params)
        metrics = {k: v.detach() for k, v in terms.items()}
        return SSLOutput(loss=loss, embeddings=h1.detach(), logits=pred.detach(), metrics=metrics)


__all__ = ["SIEForSelfSupervisedPretraining", "HyperNetworkPredictor", "variance_loss", "covariance_loss"]
