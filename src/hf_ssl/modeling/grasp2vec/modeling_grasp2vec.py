"""Grasp2Vec: scene encoder phi_s and outcome encoder phi_o (stock backbones: feature map -> ReLU -> spatial mean),
trained so that phi_s(pre) - phi_s(post) matches phi_o(outcome) with the n-pairs loss in both directions over the
(DDP-gathered) batch; localisation heatmaps = phi_s spatial features . phi_o(object)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

from .. import losses
from ..backbones import build_backbone, encoder_feature_map
from ..base import SSLPreTrainedModel
from ..outputs import SSLOutput
from .configuration_grasp2vec import Grasp2VecConfig


def npairs_loss(anchor: torch.Tensor, positive: torch.Tensor, reg_lambda: float = 0.002,
                gather: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """The n-pairs loss (Sohn, NeurIPS 2016) as in TF `metric_learning.npairs_loss` with distinct labels: softmax
    cross entropy of the dot products `anchor_i . positive_j` with target j = i, plus the L2 penalty
    `0.25 * reg_lambda * (mean_i ||anchor_i||^2 + mean_i ||positive_i||^2)`. Embeddings are not normalised and
    there is no temperature (as in the paper).

    Under DDP every process scores its anchors against the positives of all processes (`losses.all_gather` with
    gradient, targets offset by `rank * B`); with equal local batches, DDP's gradient averaging then equals the
    single-process loss on the global batch. Returns `(loss, logits [B, N*B])`."""
    if anchor.shape != positive.shape or anchor.dim() != 2:
        raise ValueError(f"anchor and positive must both be [B, D], got {tuple(anchor.shape)}, {tuple(positive.shape)}")
    all_pos = losses.all_gather(positive, with_grad=True) if gather else positive
    logits = anchor.float() @ all_pos.float().t()
    offset = losses.rank() * anchor.shape[0] if gather else 0
    targets = torch.arange(anchor.shape[0], device=anchor.device) + offset
    xent = F.cross_entropy(logits, targets)
    reg = 0.25 * reg_lambda * (anchor.float().pow(2).sum(1).mean() + positive.float().pow(2).sum(1).mean())
    return xent + reg, logits


def grasp2vec_heatmap(spatial: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Localisation heatmap `[B, h, w]`: the dot product of every cell of the scene feature map `spatial`
    `[B, C, h, w]` with the object embedding `query` `[B, C]` (the paper's Fig. 4 / official
    `_GetSoftMaxResponse`)."""
    if spatial.dim() != 4 or query.dim() != 2 or spatial.shape[:2] != query.shape:
        raise ValueError(f"spatial must be [B, C, h, w] and query [B, C]; got {tuple(spatial.shape)}, "
                         f"{tuple(query.shape)}")
    return torch.einsum("bchw,bc->bhw", spatial, query)


def heatmap_argmax_in_box(heatmap: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Per sample: whether the centre of the heatmap's peak cell lies in the normalised box (x0, y0, x1, y1)."""
    b, h, w = heatmap.shape
    flat = heatmap.reshape(b, -1).argmax(1)
    cy = (torch.div(flat, w, rounding_mode="floor").float() + 0.5) / h
    cx = ((flat % w).float() + 0.5) / w
    return (cx >= boxes[:, 0]) & (cx <= boxes[:, 2]) & (cy >= boxes[:, 1]) & (cy <= boxes[:, 3])


class Grasp2VecForSelfSupervisedPretraining(SSLPreTrainedModel):
    """Grasp2Vec (Jang et al., CoRL 2018). `encoder` is the outcome / object encoder phi_o (exported: it embeds a
    single object image, the representation used for instance recognition and as the goal embedding);
    `scene_encoder` is phi_s (`export_encoder(dir, attribute="scene_encoder")` writes it)."""

    config_class = Grasp2VecConfig

    def __init__(self, config: Grasp2VecConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        self.scene_encoder = build_backbone(config.scene_backbone_config)
        self.post_init()

    # -- embeddings -------------------------------------------------------------------------------------
    @staticmethod
    def _embed(encoder, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(vector [B, C], spatial [B, C, h, w]): ReLU of the last feature map and its spatial mean (official
        `networks.Embedding`)."""
        spatial = F.relu(encoder_feature_map(encoder, pixel_values))
        return spatial.mean(dim=(2, 3)), spatial

    def embed_object(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """phi_o(outcome) `[B, C]`."""
        self.check_pixel_values(pixel_values)
        return self._embed(self.encoder, pixel_values)[0]

    def embed_scene(self, pixel_values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """phi_s(scene): (vector `[B, C]`, spatial map `[B, C, h, w]`)."""
        self.check_pixel_values(pixel_values, "scene pixel values")
        return self._embed(self.scene_encoder, pixel_values)

    @torch.no_grad()
    def localization_heatmap(self, scene_pixel_values: torch.Tensor, object_pixel_values: torch.Tensor,
                             upsample: bool = False) -> torch.Tensor:
        """Where the object is in the scene: phi_s spatial features . phi_o(object), `[B, h, w]` (or bilinearly
        upsampled to the scene resolution with `upsample=True`)."""
        if scene_pixel_values.shape[0] != object_pixel_values.shape[0]:
            raise ValueError("one object image per scene is needed")
        _, spatial = self.embed_scene(scene_pixel_values)
        heat = grasp2vec_heatmap(spatial, self.embed_object(object_pixel_values))
        if upsample:
            heat = F.interpolate(heat[:, None], size=scene_pixel_values.shape[-2:], mode="bilinear",
                                 align_corners=False)[:, 0]
        return heat

    # -- training ---------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor = None, pre_grasp_pixel_values: torch.Tensor = None,
                post_grasp_pixel_values: torch.Tensor = None, grasp_box: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs) -> SSLOutput:
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = pixel_values[0]
        if pixel_values is None or pre_grasp_pixel_values is None or post_grasp_pixel_values is None:
            raise ValueError("Grasp2Vec needs pixel_values (outcome), pre_grasp_pixel_values and "
                             "post_grasp_pixel_values (use the 'simulated_grasp' view policy or grasp data)")
        b = pixel_values.shape[0]
        if pre_grasp_pixel_values.shape != post_grasp_pixel_values.shape or pre_grasp_pixel_values.shape[0] != b:
            raise ValueError(f"pre/post-grasp scenes must have the same shape and batch as the outcomes ({b}); got "
                             f"{tuple(pre_grasp_pixel_values.shape)} and {tuple(post_grasp_pixel_values.shape)}")
        goal = self.embed_object(pixel_values)
        # both scenes in one pass (official: concatenated into a single batch)
        scene_v, scene_s = self.embed_scene(torch.cat([pre_grasp_pixel_values, post_grasp_pixel_values]))
        pre_v, post_v = scene_v[:b], scene_v[b:]
        diff = pre_v - post_v
        if self.config.non_negativity_constraint:
            diff = F.relu(diff)
        lam, gather = self.config.npairs_reg_lambda, self.config.gather_negatives
        loss_1, logits = npairs_loss(diff, goal, lam, gather)
        loss_2, _ = npairs_loss(goal, diff, lam, gather)
        loss = loss_1 + loss_2
        with torch.no_grad():
            offset = losses.rank() * b if gather else 0
            targets = torch.arange(b, device=logits.device) + offset
            metrics = {"npairs_scene_to_object": loss_1.detach(), "npairs_object_to_scene": loss_2.detach(),
                       "retrieval_accuracy": (logits.argmax(1) == targets).float().mean()}
            if grasp_box is not None:
                heat = grasp2vec_heatmap(scene_s[:b].detach(), goal.detach())
                metrics["localization_accuracy"] = heatmap_argmax_in_box(heat, grasp_box.to(heat.device)).float().mean()
        return SSLOutput(loss=loss, embeddings=goal.detach(), logits=logits.detach(), metrics=metrics)


__all__ = ["Grasp2VecForSelfSupervisedPretraining", "npairs_loss", "grasp2vec_heatmap", "heatmap_argmax_in_box"]
