"""Mod-X: CLIP trained continually with off-diagonal (full similarity-matrix) distillation from the frozen old
model."""

from __future__ import annotations

import copy
import os
from typing import Optional

import torch
import torch.nn.functional as F

from .. import losses
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining, clip_contrastive_loss
from ..outputs import SSLOutput
from .configuration_modx import ModXConfig

# new-model towers and their frozen old-model copies (same order)
STUDENT_MODULES = ("encoder", "text_encoder", "visual_projection", "text_projection")
TEACHER_MODULES = ("teacher_encoder", "teacher_text_encoder", "teacher_visual_projection", "teacher_text_projection")


def screen_old_rows(old_scores: torch.Tensor, new_scores: torch.Tensor, offset: int = 0):
    """The official `cognition_align`: rows where the old model's best match is not the paired column
    (`offset + row`) are replaced by the new model's (detached) row, so they contribute neither KL nor gradient.
    Returns `(screened_old_scores, wrong_rows_mask)`."""
    targets = torch.arange(old_scores.shape[0], device=old_scores.device) + offset
    wrong = old_scores.argmax(dim=1) != targets
    return torch.where(wrong[:, None], new_scores.detach(), old_scores), wrong


def offdiagonal_kl(new_scores: torch.Tensor, old_scores: torch.Tensor, temperature: float = 1.0,
                   reduction: str = "sum") -> torch.Tensor:
    """KL(softmax(old / T) || softmax(new / T)) over each row of the similarity matrices (the whole row, diagonal
    and off-diagonal entries), summed (official) or averaged over rows."""
    log_new = F.log_softmax(new_scores.float() / temperature, dim=1)
    old = F.softmax(old_scores.float() / temperature, dim=1)
    kl = F.kl_div(log_new, old, reduction="sum")
    return kl if reduction == "sum" else kl / new_scores.shape[0]


def modx_distillation_loss(image_embeds, text_embeds, old_image_embeds, old_text_embeds, temperature: float = 1.0,
                           screen: bool = True, reduction: str = "sum", gather: bool = True):
    """Mod-X's off-diagonal information distillation for L2-normalised new / old embeddings `[B, D]`.

    Both directions (image->text rows and text->image rows) of the new and old cosine-similarity matrices are
    matched with a row-wise KL, `(KL_i2t + KL_t2i) / 2`. Under DDP every process builds its rows against the
    columns of the whole gathered batch (new columns with gradient, old ones without), exactly the rows of the
    single-process matrix; with `reduction="sum"` the local sum is scaled by the world size so DDP's gradient
    averaging gives the single-process gradient of the global sum. Returns `(loss, new_i2t, old_i2t, screened)`
    where `screened` is the fraction of rows dropped by the screening."""
    b = image_embeds.shape[0]
    offset = losses.rank() * b if gather else 0
    all_text = losses.all_gather(text_embeds, with_grad=True) if gather else text_embeds
    all_image = losses.all_gather(image_embeds, with_grad=True) if gather else image_embeds
    old_all_text = losses.all_gather(old_text_embeds) if gather else old_text_embeds.detach()
    old_all_image = losses.all_gather(old_image_embeds) if gather else old_image_embeds.detach()
    new_i2t, new_t2i = image_embeds @ all_text.t(), text_embeds @ all_image.t()
    old_i2t, old_t2i = old_image_embeds.detach() @ old_all_text.t(), old_text_embeds.detach() @ old_all_image.t()
    wrong = torch.zeros(2 * b, dtype=torch.bool, device=image_embeds.device)
    if screen:
        old_i2t_used, wrong_i = screen_old_rows(old_i2t, new_i2t, offset)
        old_t2i_used, wrong_t = screen_old_rows(old_t2i, new_t2i, offset)
        wrong = torch.cat([wrong_i, wrong_t])
    else:
        old_i2t_used, old_t2i_used = old_i2t, old_t2i
    loss = (offdiagonal_kl(new_i2t, old_i2t_used, temperature, reduction)
            + offdiagonal_kl(new_t2i, old_t2i_used, temperature, reduction)) / 2
    if gather and reduction == "sum":
        loss = loss * losses.world_size()
    return loss, new_i2t, old_i2t, wrong.float().mean()


class ModXForSelfSupervisedPretraining(CLIPForSelfSupervisedPretraining):
    config_class = ModXConfig

    def __init__(self, config: ModXConfig):
        super().__init__(config)
        # the old model: frozen copies of both towers and projections (a snapshot of the freshly built new model;
        # `from_pretrained` builds on the meta device and fills every tensor from the checkpoint afterwards)
        for student, teacher in zip(STUDENT_MODULES, TEACHER_MODULES):
            setattr(self, teacher, copy.deepcopy(getattr(self, student)))
        self.apply_frozen_parameters_()
        if config.old_model_name_or_path and not self.logit_scale.is_meta:
            self.load_old_model(config.old_model_name_or_path)

    # -- the old model ----------------------------------------------------------------------------------
    def frozen_parameter_prefixes(self) -> tuple:
        return super().frozen_parameter_prefixes() + tuple(f"{name}." for name in TEACHER_MODULES)

    @torch.no_grad()
    def snapshot_old_model(self) -> None:
        """Make the old (frozen) model a copy of the current new model (the start of a new continual phase)."""
        for student, teacher in zip(STUDENT_MODULES, TEACHER_MODULES):
            getattr(self, teacher).load_state_dict(getattr(self, student).state_dict())

    @torch.no_grad()
    def load_old_model(self, path: str) -> None:
        """Initialise the new model and the frozen old model from a previous phase's checkpoint (hf_ssl CLIP or
        Mod-X `save_pretrained` folder), like the official `--checkpoint_path`."""
        from transformers import AutoConfig

        from ..registry import get_method

        if not os.path.isdir(path):
            raise ValueError(f"old_model_name_or_path {path!r} is not a local checkpoint folder")
        old_config = AutoConfig.from_pretrained(path)
        old = get_method(old_config.model_type).model_class.from_pretrained(path)
        for student, teacher in zip(STUDENT_MODULES, TEACHER_MODULES):
            if not hasattr(old, student):
                raise ValueError(f"checkpoint {path!r} ({old_config.model_type}) has no {student!r}: the old model "
                                 "must "
                                 "be a CLIP-style dual encoder (hf_ssl_clip / hf_ssl_modx)")
            state = getattr(old, student).state_dict()
            try:
                getattr(self, student).load_state_dict(state)
                getattr(self, teacher).load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"old checkpoint {path!r} does not match this config's {student}: {err}") from err
        self.logit_scale.copy_(old.logit_scale)

    def train(self, mode: bool = True):
        super().train(mode)
        for name in TEACHER_MODULES:  # the old model always runs in eval mode (official `model_old.eval()`)
            module = getattr(self, name, None)
            if module is not None:
                module.eval()
        return self

    @torch.no_grad()
    def encode_old(self, pixel_values: torch.Tensor, input_ids: torch.Tensor,
                   attention_mask: Optional[torch.Tensor] = None):
        """L2-normalised joint-space embeddings of the frozen old model (no gradient)."""
        from ..backbones import encode

        pooled = encode(self.teacher_encoder, pixel_values, self.config.feature_pooling)
        image = F.normalize(self.teacher_visual_projection(pooled), dim=-1)
        out = self.teacher_text_encoder(input_ids=input_ids, attention_mask=attention_mask)
        text_pooled = out.pooler_output if getattr(out, "pooler_output", None) is not None else \
            out.last_hidden_state[:, 0]
        text = F.normalize(self.teacher_text_projection(text_pooled), dim=-1)
        return image, text

    # -- training ---------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor = None, input_ids: torch.Tensor = None,
                attention_mask: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs) -> SSLOutput:
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = pixel_values[0]
        if pixel_values is None or input_ids is None:
            raise ValueError("Mod-X needs both pixel_values and input_ids (use the 'image_text' view policy)")
        if pixel_values.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{pixel_values.shape[0]} images but {input_ids.shape[0]} captions")
        image_embeds, pooled = self.encode_image(pixel_values, return_pooled=True)
        text_embeds = self.encode_text(input_ids, attention_mask)
        scale = self.clamped_logit_scale()
        contrastive, logits = clip_contrastive_loss(image_embeds, text_embeds, scale)
        cfg = self.config
        metrics = {"logit_scale": scale.detach(), "contrastive_loss": contrastive.detach()}
        loss = contrastive
        if cfg.distillation_weight > 0:
            old_image, old_text = self.encode_old(pixel_values, input_ids, attention_mask)
            kl, _, _, screened = modx_distillation_loss(
                image_embeds, text_embeds, old_image, old_text, temperature=cfg.distillation_temperature,
                screen=cfg.screen_old_errors, reduction=cfg.distillation_reduction)
            loss = contrastive + cfg.distillation_weight * kl
            metrics.update(distillation_loss=kl.detach(), screened_rows=screened.detach())
        return SSLOutput(loss=loss, embeddings=pooled.detach(), logits=logits.detach(), metrics=metrics)
