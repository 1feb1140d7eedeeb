"""Heuristic multi-task pre-training: one shared backbone, self-supervised and supervised pretext heads.

One training step (B images per process):

    h1, h2 = pooled(encoder(view1)), pooled(encoder(view2))               clean views
    contrastive:     NT-Xent(projector(h1), projector(h2)) over the gathered batch (both views of other images are
                     negatives)                                                        [always, if weight > 0]
    MIM (SimMIM):    encoder(view1 with masked patches -> mask token) -> 1x1 conv + pixel shuffle -> L1 on masked
                     pixels                                                            [if bool_masked_pos given]
    classification:  linear head on h1 and h2; multi-label BCE (or CE) on the images that have labels; averaged over
                     the labeled images of the global batch                            [if any label in the batch]
    segmentation:    1x1 conv on view 1's feature map, upsampled; CE over labeled pixels of the global batch
                                                                                       [if segmentation_labels given]
    loss = sum over present tasks t of w_t * L_t

A task whose inputs are missing contributes exactly nothing to the loss; its head's parameters still appear in the
graph with a zero coefficient (so DDP without `find_unused_parameters` does not fail on batches without labels).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel

from ..backbones import backbone_family, encode, encoder_feature_map, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead
from ..losses import all_reduce, nt_xent, world_size
from ..outputs import SSLOutput
from .configuration_heuristic_mtl import HeuristicMTLConfig


def patch_mask_to_pixels(mask: torch.Tensor, grid, patch_size: int) -> torch.Tensor:
    """`[B, gh * gw]` patch mask -> `[B, 1, gh * p, gw * p]` float pixel mask."""
    m = mask.reshape(mask.shape[0], grid[0], grid[1]).float()
    return m.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)


def globally_normalized_sum(per_item: torch.Tensor, valid: torch.Tensor):
    """`(loss, global_count)`: `sum(per_item[valid]) / global_count * world_size`, so that DDP's gradient averaging
    gives the mean over the valid items of the global batch (the count is all-reduced). `loss` is None when no
    process has a valid item."""
    count = all_reduce(valid.sum().float().detach().clone())
    if count.item() == 0:
        return None, count
    total = (per_item * valid.to(per_item.dtype)).sum()
    return total / count * world_size(), count


class HeuristicMTLForSelfSupervisedPretraining(SSLPreTrainedModel):
    """Heuristic multi-task pre-training (Qian, arXiv 2023) on a stock transformers backbone.

    Attributes:
        encoder: the shared stock backbone (ViT / Swin built with `use_mask_token=True` when MIM is on).
        projector: contrastive projection MLP.
        mim_decoder: SimMIM's linear head (1x1 conv to `stride^2 * C` + pixel shuffle), when MIM is on.
        classifier: linear classification head on the pooled feature.
        segmentation_head: 1x1 conv on the last feature map (when `num_segmentation_classes > 0`).
    """

    config_class = HeuristicMTLConfig

    def __init__(self, config: HeuristicMTLConfig):
        super().__init__(config)
        dim = feature_dim(config.backbone_config)
        self.encoder = self._build_encoder()
        self.projector = MLPHead(dim, config.projection_hidden_dim, config.projection_dim, num_layers=2,
                                 batch_norm=config.projection_batch_norm)
        map_dim = self._map_channels()
        if config.uses_mim:
            stride = config.encoder_stride
            self.mim_decoder = nn.Sequential(nn.Conv2d(map_dim, stride**2 * config.num_channels, kernel_size=1),
                                             nn.PixelShuffle(stride))
        else:
            self.mim_decoder = None
        self.classifier = nn.Linear(dim, config.num_classes)
        self.segmentation_head = (nn.Conv2d(map_dim, config.num_segmentation_classes, kernel_size=1)
                                  if config.num_segmentation_classes > 0 else None)
        self.post_init()

    def _map_channels(self) -> int:
        bb = self.config.backbone_config
        return bb.hidden_size if backbone_family(bb) == "vit" else feature_dim(bb)

    def _build_encoder(self) -> nn.Module:
        cfg = self.config.backbone_config
        kwargs = {}
        if self.config.uses_mim:
            kwargs["use_mask_token"] = True
        if cfg.model_type == "vit":
            kwargs["add_pooling_layer"] = False
        return AutoModel.from_config(cfg, **kwargs)

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self and self.config.uses_mim:
            from transformers import initialization as init

            init.trunc_normal_(self.encoder.embeddings.mask_token, std=0.02)

    # -- task losses -------------------------------------------------------------------------------------------
    def contrastive_loss(self, h1, h2):
        return nt_xent(self.projector(h1), self.projector(h2), self.config.contrastive_temperature)

    def mim_loss(self, pixel_values, mask):
        cfg = self.config
        grid = cfg.patch_grid(pixel_values.shape[-1])
        features = encoder_feature_map(self.encoder, pixel_values, bool_masked_pos=mask)
        reconstruction = self.mim_decoder(features)
        pixel_mask = patch_mask_to_pixels(mask, grid, cfg.model_patch_size)
        l1 = F.l1_loss(reconstruction.float(), pixel_values.float(), reduction="none")
        return (l1 * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / pixel_values.shape[1]

    def _targets(self, labels, batch_size, device):
        """`(targets, valid [B])`: BCE targets `[B, C]` or CE class ids `[B]`, and which rows are labeled."""
        cfg = self.config
        labels = torch.as_tensor(labels, device=device)
        if labels.shape[0] != batch_size:
            raise ValueError(f"labels need one entry per image ({batch_size}), got {labels.shape[0]}")
        if labels.dim() == 1:
            labels = labels.long()
            valid = labels >= 0
            if (labels >= cfg.num_classes).any():
                raise ValueError(f"labels must be < num_classes={cfg.num_classes}, got max {int(labels.max())}")
            if cfg.classification_loss == "ce":
                return labels.clamp_min(0), valid
            return F.one_hot(labels.clamp_min(0), cfg.num_classes).float(), valid
        if labels.dim() != 2 or labels.shape[1] != cfg.num_classes:
            raise ValueError(f"multi-label targets must be [batch, num_classes={cfg.num_classes}], got "
                             f"{list(labels.shape)}")
        if cfg.classification_loss == "ce":
            raise ValueError('multi-hot labels need classification_loss="bce"')
        labels = labels.float()
        valid = (labels >= 0).all(dim=1)
        return labels.clamp_min(0), valid

    def classification_loss(self, feats, labels):
        """Mean over labeled images of the global batch (and over the given views) of the classification loss."""
        cfg = self.config
        b = feats[0].shape[0]
        targets, valid = self._targets(labels, b, feats[0].device)
        per_item = 0
        for h in feats:
            logits = self.classifier(h).float()
            if cfg.classification_loss == "ce":
                per_item = per_item + F.cross_entropy(logits, targets, reduction="none")
            else:
                per_item = per_item + F.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(1)
        loss, count = globally_normalized_sum(per_item / len(feats), valid)
        return loss, valid, count

    def segmentation_loss(self, pixel_values, labels):
        b, _, h, w = pixel_values.shape
        labels = torch.as_tensor(labels, device=pixel_values.device).long()
        if labels.shape != (b, h, w):
            raise ValueError(f"segmentation_labels must be [batch, height, width] = {[b, h, w]}, got "
                             f"{list(labels.shape)}")
        if (labels >= self.config.num_segmentation_classes).any():
            raise ValueError(f"segmentation_labels must be < num_segmentation_classes="
                             f"{self.config.num_segmentation_classes} (or -1 to ignore)")
        logits = self.segmentation_head(encoder_feature_map(self.encoder, pixel_values))
        logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear", align_corners=False)
        per_pixel = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
        loss, count = globally_normalized_sum(per_pixel, labels >= 0)
        return loss, count

    def _touch(self, module) -> torch.Tensor:
        """0 x (sum of a head's parameters): keeps a skipped head in the autograd graph (DDP) without any effect."""
        return sum(p.sum() for p in module.parameters()) * 0.0

    # -- forward -----------------------------------------------------------------------------------------------
    def forward(self, pixel_values, bool_masked_pos: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, segmentation_labels: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[view1, view2]` (two `[B, C, H, W]` tensors), or one tensor (embeddings only, no loss).
            bool_masked_pos: `[B, N]` SimMIM mask of view 1 over the encoder's patch grid (True = masked); without it
                the MIM head is skipped.
            labels: `[B]` class ids (-1 = unlabeled) or `[B, num_classes]` multi-hot targets (a row with a negative
                entry = unlabeled); without labels (or with none valid) the classification head is skipped.
            segmentation_labels: `[B, H, W]` class ids aligned with view 1 (-1 = ignore); needs
                `num_segmentation_classes > 0`.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `logits` = classification logits of view 1;
            `metrics` hold every task's loss and whether it was active in this batch.
        """
        cfg = self.config
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            out = SSLOutput(embeddings=encode(self.encoder, pixel_values, cfg.feature_pooling))
            return out if return_dict else out.to_tuple()
        if not isinstance(pixel_values, (list, tuple)):
            raise TypeError(f"pixel_values must be a tensor or a list of 2 tensors, got {type(pixel_values).__name__}")
        views = list(pixel_values)
        if len(views) != 2:
            raise ValueError(f"heuristic multi-task pre-training needs a list of 2 views, got {len(views)}")
        for i, v in enumerate(views):
            self.check_pixel_values(v, name=f"pixel_values[{i}]")
        v1, v2 = views
        b = v1.shape[0]
        if v2.shape[0] != b:
            raise ValueError(f"both views need the same batch size, got {b} and {v2.shape[0]}")
        device = v1.device

        h1 = encode(self.encoder, v1, cfg.feature_pooling)
        h2 = encode(self.encoder, v2, cfg.feature_pooling)
        zero = torch.zeros((), device=device)
        terms, metrics = {}, {"labeled_fraction": zero}

        # contrastive
        if cfg.contrastive_weight > 0:
            terms["contrastive"] = self.contrastive_loss(h1, h2)
        else:
            terms["contrastive_skipped"] = self._touch(self.projector)

        # masked image modeling on view 1
        if cfg.uses_mim and bool_masked_pos is not None:
            mask = torch.as_tensor(bool_masked_pos, device=device)
            if mask.dim() == 3:
                mask = mask.flatten(1)
            grid = cfg.patch_grid(v1.shape[-1])
            if mask.shape != (b, grid[0] * grid[1]):
                raise ValueError(f"bool_masked_pos must be [batch, num_patches] = {[b, grid[0] * grid[1]]}, got "
                                 f"{list(mask.shape)}")
            terms["mim"] = self.mim_loss(v1, mask.bool())
        elif self.mim_decoder is not None:
            terms["mim_skipped"] = self._touch(self.mim_decoder)

        # supervised classification on the labeled images
        logits = self.classifier(h1)
        cls_loss = None
        if cfg.classification_weight > 0 and labels is not None:
            cls_loss, valid, count = self.classification_loss([h1, h2], labels)
            metrics["labeled_fraction"] = (count / (b * world_size())).detach()
        if cls_loss is not None:
            terms["classification"] = cls_loss
        else:
            terms["classification_skipped"] = self._touch(self.classifier)

        # dense head, only when the batch has dense labels
        if self.segmentation_head is not None:
            seg_loss = None
            if segmentation_labels is not None and cfg.segmentation_weight > 0:
                seg_loss, _ = self.segmentation_loss(v1, segmentation_labels)
            terms["segmentation" if seg_loss is not None else "segmentation_skipped"] = \
                seg_loss if seg_loss is not None else self._touch(self.segmentation_head)
        elif segmentation_labels is not None:
            raise ValueError("segmentation_labels given but num_segmentation_classes = 0 (no segmentation head)")

        weights = {"contrastive": cfg.contrastive_weight, "mim": cfg.mim_weight,
                   "classification": cfg.classification_weight, "segmentation": cfg.segmentation_weight}
        loss = zero
        for name, value in terms.items():
            if name.endswith("_skipped"):
                loss = loss + value
            else:
                loss = loss + weights[name] * value
        for name in weights:
            active = name in terms
            metrics[f"{name}_active"] = torch.tensor(float(active), device=device)
            metrics[f"{name}_loss"] = terms[name].detach() if active else zero
        out = SSLOutput(loss=loss, embeddings=h1.detach(), logits=logits.detach(), metrics=metrics)
        return out if return_dict else out.to_tuple()


__all__ = ["HeuristicMTLForSelfSupervisedPretraining", "globally_normalized_sum", "patch_mask_to_pixels"]
