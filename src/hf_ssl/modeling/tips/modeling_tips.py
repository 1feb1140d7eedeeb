"""TIPS: a CLIP dual encoder whose ViT carries two image tokens (first: noisy web caption, second: synthetic dense
caption, a register-like token without position embedding), plus DINO-style self-distillation of the first token
into local crops and iBOT-style masked patch distillation from an EMA teacher."""

from __future__ import annotations

import copy
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import losses
from ..backbones import vit_forward_tokens, vit_grid
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining, clip_contrastive_loss
from ..distillation import DINOHead, SelfDistillationLoss, masked_patch_distillation
from ..masking import block_mask
from ..momentum import cosine_schedule, ema_update_, warmup_then_constant
from ..outputs import SSLOutput
from .configuration_tips import TIPSConfig


def ibot_masks(batch_size: int, grid, mask_probability: float, ratio_range: Sequence[float],
               min_block_patches: int = 16, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """iBOT-style masks `[B, gh * gw]` (True = masked): each image is masked with probability `mask_probability`,
    with a block-wise mask of a ratio drawn uniformly in `ratio_range` (others get no mask)."""
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())
    rng = np.random.default_rng(seed)
    n = grid[0] * grid[1]
    out = np.zeros((batch_size, n), dtype=bool)
    for i in range(batch_size):
        if rng.random() < mask_probability:
            ratio = float(rng.uniform(*ratio_range))
            if int(round(n * ratio)) > 0:
                out[i] = block_mask(tuple(grid), ratio, rng=rng,
                                    min_block_patches=max(1, min(int(min_block_patches), n // 2)))
    return torch.from_numpy(out)


class TIPSForSelfSupervisedPretraining(CLIPForSelfSupervisedPretraining):
    """See the package docstring. Student: `encoder` (stock ViTModel) + `second_cls_token` + `mask_token` +
    `head` (+ `patch_head`); EMA teacher: `teacher_encoder`, `teacher_second_cls_token`, `teacher_head`
    (+ `teacher_patch_head`). The export / `get_image_features` path is the stock one-CLS ViT."""

    config_class = TIPSConfig

    def __init__(self, config: TIPSConfig):
        super().__init__(config)
        dim = config.backbone_config.hidden_size
        self.second_cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.head = DINOHead(dim, config.head_out_dim, config.head_hidden_dim, config.head_bottleneck_dim,
                             norm_last_layer=config.norm_last_layer)
        self.patch_head = (DINOHead(dim, config.head_out_dim, config.head_hidden_dim, config.head_bottleneck_dim,
                                    norm_last_layer=config.norm_last_layer) if config.separate_patch_head else None)
        self.teacher_encoder = self._build_encoder()
        self.teacher_second_cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.teacher_head = copy.deepcopy(self.head)
        self.teacher_patch_head = copy.deepcopy(self.patch_head) if self.patch_head is not None else None
        self.distillation = SelfDistillationLoss(config.head_out_dim, config.student_temperature,
                                                 config.center_momentum)
        self.patch_distillation = SelfDistillationLoss(config.head_out_dim, config.student_temperature,
                                                       config.center_momentum)
        self.register_buffer("teacher_temperature_now", torch.tensor(float(warmup_then_constant(
            0, config.teacher_temperature_warmup_steps, config.teacher_temperature_warmup,
            config.teacher_temperature))))
        self.post_init()
        with torch.no_grad():  # the top module was initialised by the CLIP constructor already
            self.second_cls_token.normal_(0.0, 1e-6)  # official: normal(std 1e-6) for cls / register tokens
            self.mask_token.zero_()
            self._copy_teacher_()
        self.apply_frozen_parameters_()

    # -- teacher ----------------------------------------------------------------------------------------
    def _pairs(self):
        pairs = [(self.teacher_encoder, self.encoder), (self.teacher_head, self.head)]
        if self.patch_head is not None:
            pairs.append((self.teacher_patch_head, self.patch_head))
        return pairs

    @torch.no_grad()
    def _copy_teacher_(self):
        for teacher, student in self._pairs():
            for tp, sp in zip(teacher.parameters(), student.parameters()):
                tp.copy_(sp)
            for tb, sb in zip(teacher.buffers(), student.buffers()):
                tb.copy_(sb)
        self.teacher_second_cls_token.copy_(self.second_cls_token)

    def _init_weights(self, module):
        from transformers import initialization as init

        super()._init_weights(module)
        if isinstance(module, TIPSForSelfSupervisedPretraining) and hasattr(module, "teacher_second_cls_token"):
            init.normal_(module.second_cls_token, std=1e-6)
            init.zeros_(module.mask_token)
            from ..momentum import init_teacher_from_student_

            init_teacher_from_student_(*self._pairs())
            init.copy_(module.teacher_second_cls_token, module.second_cls_token.detach())

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_head.", "teacher_patch_head.", "teacher_second_cls_token")

    # -- the two-token ViT forward ------------------------------------------------------------------------
    def encode_tokens(self, pixel_values: torch.Tensor, bool_masked_pos: Optional[torch.Tensor] = None,
                      teacher: bool = False) -> torch.Tensor:
        """Final-norm tokens `[B, 2 + N, D]`: [first CLS (with position), second CLS (no position), patches]. The
        stock ViT's patch embedding, CLS token, position table, layers and final norm are used as they are;
        masked patch embeddings (`bool_masked_pos [B, N]`) are replaced by the learned mask token before the
        positions are added (as in the official `prepare_tokens_with_masks`)."""
        self.check_pixel_values(pixel_values)
        vit = self.teacher_encoder if teacher else self.encoder
        cls2 = self.teacher_second_cls_token if teacher else self.second_cls_token
        emb = vit.embeddings
        b, _, h, w = pixel_values.shape
        patch = vit.config.patch_size
        if h % patch or w % patch:
            raise ValueError(f"image size {(h, w)} is not divisible by the ViT patch size {patch}")
        x = emb.patch_embeddings(pixel_values.to(emb.patch_embeddings.projection.weight.dtype))
        if bool_masked_pos is not None:
            if tuple(bool_masked_pos.shape) != tuple(x.shape[:2]):
                raise ValueError(f"bool_masked_pos must be [batch, {x.shape[1]}], got {list(bool_masked_pos.shape)}")
            x = torch.where(bool_masked_pos.bool().unsqueeze(-1), self.mask_token.to(x.dtype), x)
        seq = torch.cat([emb.cls_token.expand(b, -1, -1), x], dim=1)
        seq = seq + emb.interpolate_pos_encoding(seq, h, w)
        seq = torch.cat([seq[:, :1], cls2.expand(b, -1, -1).to(seq.dtype), seq[:, 1:]], dim=1)
        return vit_forward_tokens(vit, seq)

    def encode_image(self, pixel_values: torch.Tensor, return_pooled: bool = False, token: int = 0):
        """Joint-space image embedding of the `token`-th image token (0: web-caption token, used for zero-shot and
        retrieval; 1: synthetic-caption token) of the two-token forward."""
        if token not in (0, 1):
            raise ValueError(f"token must be 0 (web caption) or 1 (synthetic caption), got {token}")
        pooled = self.encode_tokens(pixel_values)[:, token]
        joint = F.normalize(self.visual_projection(pooled), dim=-1)
        return (joint, pooled) if return_pooled else joint

    @torch.no_grad()
    def get_dual_image_features(self, pixel_values: torch.Tensor):
        """Both joint-space image embeddings `(web [B, P], synthetic [B, P])` of the two-token forward."""
        tokens = self.encode_tokens(pixel_values)
        return tuple(F.normalize(self.visual_projection(tokens[:, i]), dim=-1) for i in (0, 1))

    @torch.no_grad()
    def get_dense_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch features `[B, D, gh, gw]` of the two-token forward (dense tasks)."""
        tokens = self.encode_tokens(pixel_values)[:, 2:]
        gh, gw = pixel_values.shape[-2] // self.config.backbone_config.patch_size, \
            pixel_values.shape[-1] // self.config.backbone_config.patch_size
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, gh, gw)

    # -- training ---------------------------------------------------------------------------------------
    def _check_inputs(self, pixel_values, input_ids, attention_mask):
        views = list(pixel_values) if isinstance(pixel_values, (list, tuple)) else [pixel_values]
        if not views or views[0] is None or input_ids is None:
            raise ValueError("TIPS needs pixel_values (global view [+ local crops]) and input_ids (use the "
                             "'tips_views' view policy)")
        for i, v in enumerate(views):
            self.check_pixel_values(v, f"pixel_values[{i}]")
        if input_ids.dim() != 3 or input_ids.shape[1] != 2:
            raise ValueError(f"input_ids must be [batch, 2, length] (web caption, synthetic caption), got shape "
                             f"{tuple(input_ids.shape)}")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids "
                             f"{tuple(input_ids.shape)}")
        b = views[0].shape[0]
        if input_ids.shape[0] != b or any(v.shape[0] != b for v in views):
            raise ValueError(f"{b} global images but {input_ids.shape[0]} caption pairs / local crop batches "
                             f"{[v.shape[0] for v in views[1:]]}")
        return views

    def forward(self, pixel_values=None, input_ids: torch.Tensor = None, attention_mask: Optional[torch.Tensor] = None,
                bool_masked_pos: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs) -> SSLOutput:
        cfg = self.config
        views = self._check_inputs(pixel_values, input_ids, attention_mask)
        glob, local = views[0], views[1:]
        b, length = input_ids.shape[0], input_ids.shape[-1]
        grid = vit_grid(cfg.backbone_config, tuple(glob.shape[-2:]))
        n = grid[0] * grid[1]
        if bool_masked_pos is None:
            mask = ibot_masks(b, grid, cfg.mask_probability, cfg.mask_ratio_range,
                              cfg.mask_min_block_patches).to(glob.device)
        else:
            mask = torch.as_tensor(bool_masked_pos, device=glob.device).bool()
            mask = mask.flatten(1) if mask.dim() == 3 else mask
            if tuple(mask.shape) != (b, n):
                raise ValueError(f"bool_masked_pos must be [batch, {n}], got {list(mask.shape)}")
        # student: masked global view (+ an unmasked pass for the contrastive terms if configured)
        tokens = self.encode_tokens(glob, mask)
        clean = tokens if cfg.contrastive_on_masked_view else self.encode_tokens(glob)
        # (1) two contrastive losses: token 0 <-> web caption, token 1 <-> synthetic caption
        text = self.encode_text(input_ids.reshape(b * 2, length),
                                None if attention_mask is None else attention_mask.reshape(b * 2, length))
        text = text.reshape(b, 2, -1)
        image_web = F.normalize(self.visual_projection(clean[:, 0]), dim=-1)
        image_syn = F.normalize(self.visual_projection(clean[:, 1]), dim=-1)
        scale = self.clamped_logit_scale()
        loss_web, logits = clip_contrastive_loss(image_web, text[:, 0], scale)
        loss_syn, _ = clip_contrastive_loss(image_syn, text[:, 1], scale)
        contrastive = cfg.web_caption_loss_weight * loss_web + cfg.synthetic_caption_loss_weight * loss_syn
        # teacher on the unmasked global view
        temp = float(self.teacher_temperature_now)
        patch_head = self.patch_head if self.patch_head is not None else self.head
        teacher_patch_head = self.teacher_patch_head if self.teacher_patch_head is not None else self.teacher_head
        need_teacher = cfg.distillation_loss_weight > 0 or cfg.masked_loss_weight > 0
        zero = contrastive.new_zeros(())
        distill, masked = zero, zero
        if need_teacher:
            with torch.no_grad():
                t_tokens = self.encode_tokens(glob, teacher=True)
                t_cls_logits = self.teacher_head(t_tokens[:, 0])
                t_patch_logits = teacher_patch_head(t_tokens[:, 2:])
        # (2) DINO: teacher's first token of the global view -> student's first token of every local crop
        if cfg.distillation_loss_weight > 0:
            if not local:
                raise ValueError("the self-distillation loss needs local crops (pixel_values = [global, local, ...])")
            student = [self.head(tokens[:, 0])] + [self.head(self.encode_tokens(v)[:, 0]) for v in local]
            distill = self.distillation(student, [t_cls_logits], temp, teacher_view_index=[0])
        # (3) iBOT: masked patches of the student's global view predict the teacher's patch distributions
        if cfg.masked_loss_weight > 0:
            s_patch_logits = patch_head(tokens[:, 2:])
            t_patch_probs = self.patch_distillation.teacher_probabilities(t_patch_logits, temp)
            masked = masked_patch_distillation(s_patch_logits, t_patch_probs, mask, cfg.student_temperature)
            if self.training:
                self.patch_distillation.update_center(t_patch_logits.reshape(-1, t_patch_logits.shape[-1]))
        loss = contrastive + cfg.distillation_loss_weight * distill + cfg.masked_loss_weight * masked
        with torch.no_grad():
            targets = torch.arange(b, device=logits.device) + losses.rank() * b
            acc = (logits.argmax(-1) == targets).float().mean()
            pooled = clean[:, 0]
        metrics = {"web_contrastive_loss": loss_web.detach(), "synthetic_contrastive_loss": loss_syn.detach(),
                   "distillation_loss": distill.detach(), "masked_loss": masked.detach(),
                   "mask_fraction": mask.float().mean().detach(), "logit_scale": scale.detach(),
                   "teacher_temperature": self.teacher_temperature_now.detach().clone(), "i2t_accuracy": acc}
        output = SSLOutput(loss=loss, embeddings=pooled.detach(), logits=logits.detach(), metrics=metrics)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA teacher (encoder, second token, heads; momentum 0.996 -> 1 by a half cosine) and the teacher
        temperature warm-up."""
        m = cosine_schedule(step, max_steps, self.config.teacher_momentum, 1.0)
        for teacher, student in self._pairs():
            ema_update_(teacher, student, m)
        self.teacher_second_cls_token.lerp_(self.second_cls_token.detach(), 1.0 - m)
        self.teacher_temperature_now.fill_(warmup_then_constant(step, self.config.teacher_temperature_warmup_steps,
                                                                self.config.teacher_temperature_warmup,
                                                                self.config.teacher_temperature))


__all__ = ["TIPSForSelfSupervisedPretraining", "ibot_masks"]
