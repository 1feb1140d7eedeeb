"""CMD pretraining model: DINO/EsViT-style self-distillation with gated-attention multiple-instance pooling of
patch tokens, distilled within a level (teacher <-> student) and across levels (image <-> MIL bag)."""

from __future__ import annotations

import copy
from typing import List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import encode, map_views_batched
from ..base import SSLPreTrainedModel
from ..distillation import DINOHead, SelfDistillationLoss, matched_region_distillation
from ..momentum import cosine_schedule, ema_update_, init_teacher_from_student_, warmup_then_constant
from ..outputs import SSLOutput
from .configuration_cmd import CMDConfig


class GatedAttentionMIL(nn.Module):
    """Gated attention MIL pooling (Ilse, Tomczak & Welling, "Attention-based Deep Multiple Instance Learning",
    ICML 2018): instance `k` of a bag gets the score `w^T (tanh(V h_k) * sigmoid(U h_k))` and the weights are the
    softmax of the scores over the bag's instances, so they are non-negative and sum to one per bag. Instances
    marked False in `instance_mask [B, N]` (padding) get weight exactly 0."""

    def __init__(self, dim: int, attention_dim: int = 128):
        super().__init__()
        self.attention_v = nn.Linear(dim, attention_dim)
        self.attention_u = nn.Linear(dim, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)

    def scores(self, instances: torch.Tensor) -> torch.Tensor:
        gated = torch.tanh(self.attention_v(instances)) * torch.sigmoid(self.attention_u(instances))
        return self.attention_w(gated).squeeze(-1)  # [B, N]

    def forward(self, instances: torch.Tensor, instance_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """`instances [B, N, D]` -> attention weights `[B, N]`."""
        if instances.dim() != 3:
            raise ValueError(f"MIL instances must be [batch, instances, dim], got {list(instances.shape)}")
        scores = self.scores(instances).float()
        if instance_mask is not None:
            instance_mask = instance_mask.to(device=scores.device, dtype=torch.bool)
            if instance_mask.shape != scores.shape:
                raise ValueError(f"instance_mask must be {list(scores.shape)}, got {list(instance_mask.shape)}")
            if not bool(instance_mask.any(dim=1).all()):
                raise ValueError("every bag needs at least one valid instance (a row of instance_mask is all False)")
            scores = scores.masked_fill(~instance_mask, float("-inf"))
        return torch.softmax(scores, dim=1)

    @staticmethod
    def pool(instances: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """Bag embedding `sum_k a_k h_k` `[B, D]`."""
        return torch.einsum("bn,bnd->bd", weights.to(instances.dtype), instances)


def mil_bag_distribution(region_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Bag-level prediction of a view: the MIL-weighted mixture `sum_k a_k p_k` `[B, K]` of its patch distributions
    `region_probs [B, N, K]` (a distribution because the weights sum to one)."""
    return torch.einsum("bn,bnk->bk", weights.float(), region_probs.float())


def inter_level_kl(image_probs: torch.Tensor, bag_probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Inter-level multi-instance distillation inside one network: `KL(p_image || p_bag)` summed over prototypes,
    averaged over images."""
    p = image_probs.float()
    return torch.sum(p * (torch.log(p.clamp_min(eps)) - torch.log(bag_probs.float().clamp_min(eps))), dim=-1).mean()


class CMDForSelfSupervisedPretraining(SSLPreTrainedModel):
    """CMD (see `hf_ssl.modeling.cmd`).

    Attributes:
        encoder / head / region_head / mil: student (stock ViT, image-level DINO head on the CLS token, region-level
            DINO head on every patch token, gated-attention MIL scorer over the patch tokens).
        teacher_encoder / teacher_head / teacher_region_head / teacher_mil: EMA teacher (no gradients); the teacher
            encoder is what `get_image_features` and `export_encoder` use, as in DINO/EsViT.
        distillation / region_distillation: shared :class:`~hf_ssl.modeling.distillation.SelfDistillationLoss`
            objects holding the image-level and region-level centers (saved buffers, all-reduced under DDP).
    """

    config_class = CMDConfig
    export_attribute = "teacher_encoder"

    def __init__(self, config: CMDConfig):
        super().__init__(config)
        dim = config.backbone_config.hidden_size
        self.encoder = self._build_encoder()
        self.head = DINOHead(dim, config.head_out_dim, config.head_hidden_dim, config.head_bottleneck_dim,
                             norm_last_layer=config.norm_last_layer)
        self.region_head = DINOHead(dim, config.head_out_dim, config.head_hidden_dim, config.head_bottleneck_dim,
                                    norm_last_layer=config.norm_last_layer)
        self.mil = GatedAttentionMIL(dim, config.mil_attention_dim)
        self.teacher_encoder = self._build_encoder()
        self.teacher_head = copy.deepcopy(self.head)
        self.teacher_region_head = copy.deepcopy(self.region_head)
        self.teacher_mil = copy.deepcopy(self.mil)
        self.distillation = SelfDistillationLoss(config.head_out_dim, config.student_temperature,
                                                 config.center_momentum)
        self.region_distillation = SelfDistillationLoss(config.head_out_dim, config.student_temperature,
                                                        config.center_momentum)
        self.register_buffer("teacher_temperature_now", torch.tensor(float(warmup_then_constant(
            0, config.teacher_temperature_warmup_steps, config.teacher_temperature_warmup,
            config.teacher_temperature))))
        self.apply_frozen_parameters_()
        self.post_init()

    def _pairs(self):
        return ((self.teacher_encoder, self.encoder), (self.teacher_head, self.head),
                (self.teacher_region_head, self.region_head), (self.teacher_mil, self.mil))

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_head.", "teacher_region_head.", "teacher_mil.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init_teacher_from_student_(*self._pairs())

    # -- pieces -----------------------------------------------------------------------------------------
    def encode_view(self, pixel_values: torch.Tensor, teacher: bool = False):
        """`(image feature [B, D], patch tokens [B, N, D])` of one view (final layer norm applied); the image feature is
        the CLS token or the mean patch token (`config.image_feature`)."""
        vit = self.teacher_encoder if teacher else self.encoder
        _, tokens = encode(vit, pixel_values, "cls", return_tokens=True)
        image = tokens[:, 0] if self.config.image_feature == "cls" else tokens[:, 1:].mean(dim=1)
        return image, tokens[:, 1:]

    def view_outputs(self, pixel_values: torch.Tensor, teacher: bool = False) -> dict:
        """Image logits `[B, K]`, region logits `[B, N, K]`, patch features `[B, N, D]` and MIL weights `[B, N]`."""
        cls, patches = self.encode_view(pixel_values, teacher)
        head, region_head, mil = ((self.teacher_head, self.teacher_region_head, self.teacher_mil) if teacher
                                  else (self.head, self.region_head, self.mil))
        return {"cls": cls, "image_logits": head(cls), "region_logits": region_head(patches), "patches": patches,
                "mil_weights": mil(patches)}

    # -- training ---------------------------------------------------------------------------------------
    def _check_views(self, pixel_values) -> List[torch.Tensor]:
        views = list(pixel_values) if isinstance(pixel_values, (list, tuple)) else [pixel_values]
        if not views:
            raise ValueError("pixel_values is empty: pass a list of crops [B, C, H, W] (global crops first)")
        patch = self.config.backbone_config.patch_size
        for i, v in enumerate(views):
            self.check_pixel_values(v, f"pixel_values[{i}]")
            if v.shape[0] != views[0].shape[0]:
                raise ValueError(f"all crops need the same batch size: pixel_values[{i}] has {v.shape[0]}, "
                                 f"pixel_values[0] has {views[0].shape[0]}")
            if v.shape[-1] % patch or v.shape[-2] % patch:
                raise ValueError(f"pixel_values[{i}] size {tuple(v.shape[-2:])} is not divisible by the ViT patch "
                                 f"size {patch}")
        return views

    def compute_loss(self, student: Sequence[dict], teacher: Sequence[dict], teacher_temperature: float,
                     update_centers: bool = True):
        """CMD's objective from per-view outputs (`view_outputs`): teacher views are the first `len(teacher)` student
        views. Returns `(loss, terms)`."""
        cfg = self.config
        tau_s = cfg.student_temperature
        # teacher targets with the centers as they were before this step (updated at the end)
        t_image = [self.distillation.teacher_probabilities(t["image_logits"], teacher_temperature) for t in teacher]
        t_region = [self.region_distillation.teacher_probabilities(t["region_logits"], teacher_temperature)
                    for t in teacher]
        # intra-level, image: DINO cross-view CE (shared core; center updated there)
        image_loss = self.distillation([s["image_logits"] for s in student], [t["image_logits"] for t in teacher],
                                       teacher_temperature, update_center=update_centers)
        # intra-level, region: each student patch distils the best-matching teacher patch of another view
        region_loss, pairs = 0.0, 0
        for i, t in enumerate(teacher):
            for v, s in enumerate(student):
                if v == i:
                    continue
                region_loss = region_loss + matched_region_distillation(s["region_logits"], s["patches"], t_region[i],
                                                                        t["patches"], tau_s)
                pairs += 1
        region_loss = region_loss / pairs
        # inter-level: image-level prediction <-> MIL bag of the region predictions, inside the student
        detach_image = cfg.inter_level_target == "image"
        inter = [inter_level_kl(F.softmax((s["image_logits"].detach() if detach_image else s["image_logits"]).float()
                                          / tau_s, dim=-1),
                                mil_bag_distribution(F.softmax(s["region_logits"].float() / tau_s, dim=-1),
                                                     s["mil_weights"]))
                 for s in student]
        inter_loss = sum(inter) / len(inter)
        with torch.no_grad():  # the teacher's inter-level term (no gradient: EMA teacher), for monitoring
            teacher_inter = sum(inter_level_kl(p, mil_bag_distribution(r, t["mil_weights"]))
                                for p, r, t in zip(t_image, t_region, teacher)) / len(teacher)
        if update_centers and self.training:
            self.region_distillation.update_center(
                torch.cat([t["region_logits"].reshape(-1, t["region_logits"].shape[-1]) for t in teacher]))
        loss = (cfg.image_loss_weight * image_loss + cfg.region_loss_weight * region_loss
                + cfg.inter_level_weight * inter_loss)
        terms = {"image_loss": image_loss, "region_loss": region_loss, "inter_level_loss": inter_loss,
                 "teacher_inter_level_loss": teacher_inter}
        return loss, terms

    def forward(self, pixel_values, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: list of crops `[B, C, h, w]` (the first `augmentation["num_global"]` are the global crops the
                teacher sees), or one tensor (then only `embeddings` are returned).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `embeddings` = student CLS of the first crop, `logits` =
            its image-level head output.
        """
        views = self._check_views(pixel_values)
        # one call per run of same-size crops (the official multi-crop forward; equal to per-crop calls for a ViT)
        student = map_views_batched(self.view_outputs, views)
        loss, metrics = None, {}
        if len(views) >= 2:
            n_global = min(max(int(self.config.augmentation.get("num_global", 2)), 1), len(views))
            with torch.no_grad():
                teacher = map_views_batched(lambda v: self.view_outputs(v, teacher=True), views[:n_global])
            loss, terms = self.compute_loss(student, teacher, float(self.teacher_temperature_now))
            metrics = {k: v.detach() for k, v in terms.items()}
            w = student[0]["mil_weights"].detach()
            metrics["mil_weight_entropy"] = -(w * w.clamp_min(1e-12).log()).sum(1).mean()
            metrics["teacher_temperature"] = self.teacher_temperature_now.detach().clone()
        output = SSLOutput(loss=loss, embeddings=student[0]["cls"].detach(), logits=student[0]["image_logits"],
                           metrics=metrics)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA teacher (0.996 -> 1, half-cosine) for encoder, both heads and the MIL scorer; teacher temperature
        warm-up."""
        m = cosine_schedule(step, max_steps, self.config.teacher_momentum, 1.0)
        for teacher, student in self._pairs():
            ema_update_(teacher, student, m)
        self.teacher_temperature_now.fill_(warmup_then_constant(step, self.config.teacher_temperature_warmup_steps,
                                                                self.config.teacher_temperature_warmup,
                                                                self.config.teacher_temperature))


__all__ = ["CMDForSelfSupervisedPretraining", "GatedAttentionMIL", "mil_bag_distribution", "inter_level_kl"]
