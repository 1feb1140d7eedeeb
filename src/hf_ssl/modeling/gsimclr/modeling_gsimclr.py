"""G-SimCLR model: SimCLR's NT-Xent with negatives of the anchor's pseudo-label removed.

One training step (B images per process, two views):

    h1, h2 = encoder(view1), encoder(view2)                pooled features                     [B, D]
    z1, z2 = projection(h1), projection(h2)                projection MLP (256-128-50)          [B, d]
    y = pseudo-labels: given in the batch (`pseudo_labels`), or the nearest k-means centroid of
        normalize(normalize(h1) + normalize(h2)) (detached) once centroids exist, else all distinct
    loss = NT-Xent over the 2 x global batch, where for anchor i every view of an image j != i with y_j == y_i is
           removed from the denominator (losses.nt_xent_label_masked; the positive is always kept)
    "encoder" source: bank <- all_gather(normalize(h1 + h2 ...)) (FIFO); on_step_end every `pseudo_label_interval`
    steps: centroids = k-means(bank) (deterministic, the bank is identical on every process).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from transformers import initialization as init

from ..backbones import encode, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead
from ..losses import all_gather, kmeans, nt_xent_label_masked
from ..outputs import SSLOutput
from .configuration_gsimclr import GSimCLRConfig


class GSimCLRForSelfSupervisedPretraining(SSLPreTrainedModel):
    """G-SimCLR (Chakraborty et al., ICDMW 2020) on any stock transformers backbone.

    Attributes:
        encoder / projection_head: SimCLR encoder and projection MLP (ReLU, no BatchNorm, as in the official code).
        feature_bank `[feature_bank_size, D]`, bank_ptr, bank_count: FIFO of all processes' detached, normalized
            pooled features (`"encoder"` pseudo-label source).
        centroids `[num_clusters, D]`, centroids_ready: the current k-means centroids.
        optimizer_step: last optimizer step seen by `on_step_end`.
    """

    config_class = GSimCLRConfig

    def __init__(self, config: GSimCLRConfig):
        super().__init__(config)
        dim = feature_dim(config.backbone_config)
        self.encoder = self._build_encoder()
        hidden = list(config.projection_hidden_dims)
        self.projection_head = MLPHead(dim, hidden, config.projection_dim, num_layers=len(hidden) + 1,
                                       batch_norm=False)
        bank = config.feature_bank_size if config.pseudo_label_source == "encoder" else 1
        self.register_buffer("feature_bank", torch.zeros(bank, dim))
        self.register_buffer("bank_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("bank_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(config.num_clusters, dim))
        self.register_buffer("centroids_ready", torch.zeros((), dtype=torch.bool))
        self.register_buffer("optimizer_step", torch.zeros((), dtype=torch.long))
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init.zeros_(self.feature_bank)
            init.zeros_(self.bank_ptr)
            init.zeros_(self.bank_count)
            init.zeros_(self.centroids)
            init.zeros_(self.centroids_ready)
            init.zeros_(self.optimizer_step)

    # -- pseudo-labels ----------------------------------------------------------------------------------------
    @staticmethod
    def cluster_features(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        """The (detached) per-image feature that is clustered: normalize(normalize(h1) + normalize(h2))."""
        return F.normalize(F.normalize(h1.detach().float(), dim=1) + F.normalize(h2.detach().float(), dim=1), dim=1)

    @torch.no_grad()
    def assign_pseudo_labels(self, features: torch.Tensor) -> torch.Tensor:
        """Nearest centroid (L2) of already normalized features."""
        c = self.centroids.float()
        return (features.float() @ c.t() - 0.5 * (c * c).sum(dim=1)).argmax(dim=1)

    @torch.no_grad()
    def update_bank(self, features: torch.Tensor) -> None:
        """FIFO write of already all-gathered features (rank order)."""
        n, size = features.shape[0], self.feature_bank.shape[0]
        if n > size:
            features, n = features[-size:], size
        ptr = self.host_int("bank_ptr")
        slots = (ptr + torch.arange(n, device=features.device)) % size
        self.feature_bank[slots] = features.to(self.feature_bank.dtype)
        self.set_host_int("bank_ptr", (ptr + n) % size)
        self.set_host_int("bank_count", min(size, self.host_int("bank_count") + n))

    @torch.no_grad()
    def recompute_centroids(self) -> None:
        """k-means of the filled bank entries (identical on every process: the bank only holds gathered data)."""
        cfg = self.config
        filled = self.feature_bank[: self.host_int("bank_count")]
        centroids, _ = kmeans(filled, cfg.num_clusters, cfg.kmeans_iterations, seed=cfg.kmeans_seed)
        self.centroids.copy_(centroids.to(self.centroids.dtype))
        self.set_host_int("centroids_ready", True)

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values, pseudo_labels: Optional[torch.Tensor] = None, return_dict: bool = True,
                **kwargs):
        """
        Args:
            pixel_values: `[view1, view2]` (two `[B, C, H, W]` tensors), or one tensor (embeddings only).
            pseudo_labels: `[B]` integer pseudo-labels (required with `pseudo_label_source="provided"`, ignored
                otherwise); negative entries mean "unknown" (never masked).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`; `logits` are the pseudo-labels used `[B]` (-1 = none).
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            out = SSLOutput(embeddings=encode(self.encoder, pixel_values, self.config.feature_pooling))
            return out if return_dict else out.to_tuple()
        if not isinstance(pixel_values, (list, tuple)):
            raise TypeError(f"pixel_values must be a tensor or a list of 2 tensors, got {type(pixel_values).__name__}")
        views = list(pixel_values)
        if len(views) != 2:
            raise ValueError(f"G-SimCLR needs a list of 2 views, got {len(views)}")
        for i, v in enumerate(views):
            self.check_pixel_values(v, name=f"pixel_values[{i}]")
        v1, v2 = views
        b = v1.shape[0]
        if v2.shape[0] != b:
            raise ValueError(f"both views need the same batch size, got {b} and {v2.shape[0]}")
        cfg = self.config

        # two encoder calls, one per view (official train_step: model(xis), model(xjs): separate BN batches)
        h1 = encode(self.encoder, v1, cfg.feature_pooling)
        h2 = encode(self.encoder, v2, cfg.feature_pooling)
        z1, z2 = self.projection_head(h1), self.projection_head(h2)

        labels = None
        if cfg.pseudo_label_source == "provided":
            if pseudo_labels is None:
                raise ValueError('pseudo_label_source="provided" needs `pseudo_labels` [B] in the batch')
            labels = torch.as_tensor(pseudo_labels, device=z1.device).long().view(-1)
            if labels.shape[0] != b:
                raise ValueError(f"pseudo_labels need one entry per image ({b}), got {labels.shape[0]}")
        else:
            feats = self.cluster_features(h1, h2)
            if self.host_int("centroids_ready"):
                labels = self.assign_pseudo_labels(feats)
            if self.training:
                self.update_bank(all_gather(feats))

        loss = nt_xent_label_masked(z1, z2, labels, cfg.contrastive_temperature)
        with torch.no_grad():
            if labels is not None:
                lab = all_gather(labels)
                known = lab >= 0
                same = (lab.unsqueeze(0) == lab.unsqueeze(1)) & known.unsqueeze(0) & known.unsqueeze(1)
                n = lab.shape[0]
                masked_fraction = (same.sum() - known.sum()).float() / max(n * (n - 1), 1)
            else:
                masked_fraction = torch.zeros((), device=z1.device)
        metrics = {
            "nt_xent_loss": loss.detach(),
            "masked_negative_fraction": masked_fraction,
            "pseudo_labels_active": torch.tensor(float(labels is not None), device=z1.device),
        }
        used = labels if labels is not None else torch.full((b,), -1, dtype=torch.long, device=z1.device)
        out = SSLOutput(loss=loss, embeddings=h1.detach(), logits=used, metrics=metrics)
        return out if return_dict else out.to_tuple()

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        self.set_host_int("optimizer_step", step)
        cfg = self.config
        if (cfg.pseudo_label_source == "encoder" and step % cfg.pseudo_label_interval == 0
                and self.host_int("bank_count") >= cfg.num_clusters):
            self.recompute_centroids()


__all__ = ["GSimCLRForSelfSupervisedPretraining"]
