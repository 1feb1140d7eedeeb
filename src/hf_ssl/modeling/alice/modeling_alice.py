"""Alice model: an EMA teacher sees two overlapping 3-D views whole, the student sees them with 75% of the 3-D
patches replaced by a mask token; cross-view self-distillation of the global embeddings, masked voxel
reconstruction, and CAFA (conditional anatomical feature alignment) on the overlap region.

One training step (views a, b in {1, 2}, a != b; N tokens per view; `overlap_index` from the view policy):

    S_a = student(mask_a(view_a)) [B, N, D]       T_a = teacher(view_a) [B, N, D]          (no gradient)
    global:  DINO CE( softmax((h_t(mean T_a) - c) / tau_t), log_softmax(h_s(mean S_b) / tau_s) )  over a != b
    MIM:     decoder(S_a) -> voxels, MSE to the input on masked patches
    CAFA:    tokens of view a inside view b (k = 1..K_a, matching token m_k of view b)
             Q = p_s(S_a)[k]  (student patch head: the local content the alignment is conditioned on)
             online = CA(Q, keys/values = p_s(decoder(S_a))[k]),  target = CA(Q, keys/values = p_t(T_b)[m_k])
             CE( softmax((target - c2) / tau_t), log_softmax(online / tau_s) )  per overlap token (target no grad)
    loss = lambda_global * global + lambda_cafa * CAFA + lambda_mim * MIM
"""

from __future__ import annotations

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import encode, patchify_3d, sincos_pos_embed_3d, video_patch_grid, volume_to_video
from ..base import SSLPreTrainedModel
from ..distillation import DINOHead, NormalizedLinear, SelfDistillationLoss
from ..heads import TransformerBlock
from ..momentum import cosine_schedule, ema_update_, init_teacher_from_student_, warmup_then_constant
from ..outputs import SSLOutput
from ..video_base import VolumeInputsMixin
from .configuration_alice import AliceConfig


def video_forward_with_mask_token(encoder: nn.Module, video: torch.Tensor, mask: Optional[torch.Tensor],
                                  mask_token: Optional[torch.Tensor]) -> torch.Tensor:
    """Tokens `[B, N, D]` of a stock VideoMAEModel whose masked patch embeddings (`mask [B, N]` True) are replaced
    by `mask_token` before the fixed positions are added (SimMIM-style: every position goes through the
    transformer); with `mask=None` this is exactly the stock forward."""
    emb = encoder.embeddings
    tokens = emb.patch_embeddings(video.to(emb.patch_embeddings.projection.weight.dtype))
    if mask is not None:
        tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype).expand_as(tokens), tokens)
    tokens = tokens + emb.position_embeddings.detach().to(device=tokens.device, dtype=tokens.dtype)
    for layer in encoder.encoder.layer:
        out = layer(tokens)
        tokens = out[0] if isinstance(out, tuple) else out
    return encoder.layernorm(tokens) if encoder.layernorm is not None else tokens


class AliceHead(DINOHead):
    """iBOT/Alice head: a shared DINO MLP (-> L2-normalised bottleneck) with one weight-normalised last layer for
    the global ([CLS]) output and one for patch tokens (official `AliceHead`, `shared_head=False`). A `DINOHead`
    subclass, so the trainer's first-steps freezing (`freeze_last_layer_steps`) reaches both last layers, as the
    official `cancel_gradients_last_layer` (every parameter named `last_layer*`) does."""

    def __init__(self, in_dim: int, out_dim: int, patch_out_dim: int, hidden_dim: int, bottleneck_dim: int,
                 norm_last_layer: bool = True):
        super().__init__(in_dim, out_dim, hidden_dim, bottleneck_dim, norm_last_layer=norm_last_layer)
        self.last_layer_patch = NormalizedLinear(bottleneck_dim, patch_out_dim, learn_scale=not norm_last_layer)

    def forward_global(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))

    def forward_patch(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer_patch(F.normalize(self.mlp(x), dim=-1))


class CAFA(nn.Module):
    """Conditional anatomical feature alignment: one cross-attention layer (official `CrossAttentionLayer`:
    multi-head attention without biases, residual on the query, post-LayerNorm, then a ReLU FFN with residual and
    post-LayerNorm). `forward(query [B, K, d], keys_values [B, K', d], key_padding [B, K'] True = valid)`."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, intermediate_size: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.w_q = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.w_k = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.w_v = nn.Linear(dim, num_heads * head_dim, bias=False)
        self.fc = nn.Linear(num_heads * head_dim, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.ffn = nn.Sequential(nn.Linear(dim, intermediate_size), nn.ReLU(), nn.Linear(intermediate_size, dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, query: torch.Tensor, keys_values: torch.Tensor,
                key_valid: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, k, _ = query.shape
        h, dh = self.num_heads, self.head_dim
        q = self.w_q(query).view(b, k, h, dh).transpose(1, 2)
        key = self.w_k(keys_values).view(b, -1, h, dh).transpose(1, 2)
        val = self.w_v(keys_values).view(b, -1, h, dh).transpose(1, 2)
        attn_mask = None if key_valid is None else key_valid[:, None, None, :]
        out = F.scaled_dot_product_attention(q, key, val, attn_mask=attn_mask)
        x = self.norm1(self.fc(out.transpose(1, 2).reshape(b, k, h * dh)) + query)
        return self.norm2(self.ffn(x) + x)


class VolumeDecoder(nn.Module):
    """Light transformer decoder over all N student tokens: linear embedding, fixed 3-D sin-cos positions,
    pre-norm blocks, LayerNorm. Returns decoder features `[B, N, dim]` (voxels come from a separate linear head)."""

    def __init__(self, in_dim: int, dim: int, depth: int, num_heads: int, grid: tuple):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.register_buffer("pos_embed", sincos_pos_embed_3d(dim, tuple(grid)).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList([TransformerBlock(dim, num_heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos_embed.to(tokens.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


def gather_overlap(overlap_index: torch.Tensor):
    """`overlap_index [B, N]` (matching token of the other view, -1 outside) -> padded `(tokens [B, K], matches
    [B, K], valid [B, K])` with K the largest overlap in the batch; padded entries point at token 0, valid False.
    Samples with no overlap get one dummy (invalid) entry so attention stays defined."""
    inside = overlap_index >= 0
    k = max(int(inside.sum(1).max()), 1)
    order = torch.sort((~inside).to(torch.int8), dim=1, stable=True).indices[:, :k]  # inside tokens first, ascending
    valid = torch.gather(inside, 1, order)
    matches = torch.gather(overlap_index, 1, order).clamp_min(0)
    tokens = torch.where(valid, order, torch.zeros_like(order))
    return tokens, matches, valid


def _take(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class AliceForSelfSupervisedPretraining(VolumeInputsMixin, SSLPreTrainedModel):
    """Alice (see `hf_ssl.modeling.alice`). Main input `pixel_values_volumes`: two overlapping views `[v1, v2]`
    `[B, C, D, H, W]`; `get_input_features` = mean of the (student) encoder's tokens on the whole volume.

    Attributes: `encoder` / `teacher_encoder` (stock VideoMAEModel, the teacher an EMA copy), `head` / `teacher_head`
    (:class:`AliceHead`), `mask_token`, `decoder` + `pixel_head` + `decoder_projection` (MIM and CAFA's online
    features), `cafa` (:class:`CAFA`, shared by both branches, not EMA'd), `global_loss` / `patch_loss`
    (:class:`SelfDistillationLoss`, holding the two DDP-synchronised centers), buffers `optimizer_step` /
    `schedule_max_steps` (temperature and momentum schedules survive a resume)."""

    config_class = AliceConfig
    main_input_name = "pixel_values_volumes"
    input_modalities = ("video",)
    input_channel_dim = 1

    def __init__(self, config: AliceConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        self.teacher_encoder = self._build_encoder()
        bb = config.backbone_config
        self.grid = video_patch_grid(bb)
        self.patch = (bb.tubelet_size, bb.patch_size, bb.patch_size)
        d = bb.hidden_size
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.head = AliceHead(d, config.head_out_dim, config.patch_out_dim, config.head_hidden_dim,
                              config.head_bottleneck_dim, config.norm_last_layer)
        self.teacher_head = copy.deepcopy(self.head)
        self.decoder = VolumeDecoder(d, config.decoder_hidden_size, config.decoder_depth, config.decoder_num_heads,
                                     self.grid)
        self.pixel_head = nn.Linear(config.decoder_hidden_size, self.patch[0] * self.patch[1] * self.patch[2]
                                    * config.num_channels)
        self.decoder_projection = nn.Linear(config.decoder_hidden_size, d)
        self.cafa = CAFA(config.patch_out_dim, config.cafa_num_heads, config.cafa_head_dim,
                         config.cafa_intermediate_size)
        self.global_loss = SelfDistillationLoss(config.head_out_dim, config.student_temperature,
                                                config.center_momentum)
        self.patch_loss = SelfDistillationLoss(config.patch_out_dim, config.student_temperature,
                                               config.center_momentum)
        self.register_buffer("optimizer_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("schedule_max_steps", torch.zeros((), dtype=torch.long))
        self.post_init()
        self.apply_frozen_parameters_()

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            from transformers import initialization as init

            init.normal_(self.mask_token, std=0.02)
            init.zeros_(self.optimizer_step)
            init.zeros_(self.schedule_max_steps)
            init.zeros_(self.global_loss.center)
            init.zeros_(self.patch_loss.center)
            init_teacher_from_student_((self.teacher_encoder, self.encoder), (self.teacher_head, self.head))

    def frozen_parameter_prefixes(self) -> tuple:
        return super().frozen_parameter_prefixes() + ("teacher_head.",)

    # -- schedules ----------------------------------------------------------------------------------------------
    def schedule_state(self):
        """`(optimizer step, max steps)` from host mirrors of their buffers (`SSLPreTrainedModel.host_int`)."""
        return self.host_int("optimizer_step"), self.host_int("schedule_max_steps")

    def teacher_temperature(self) -> float:
        step, max_steps = self.schedule_state()
        warmup = int(round(self.config.teacher_temperature_warmup_fraction * max_steps))
        if max_steps == 0:  # before the first optimizer step: the start of the warm-up
            return self.config.warmup_teacher_temperature if self.config.teacher_temperature_warmup_fraction > 0 \
                else self.config.teacher_temperature
        return warmup_then_constant(step, warmup, self.config.warmup_teacher_temperature,
                                    self.config.teacher_temperature)

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA update of the teacher encoder and head with the cosine momentum schedule (official: 0.996 -> 1 over
        training, per iteration), and the step count for the teacher-temperature warm-up."""
        momentum = cosine_schedule(step, max_steps, self.config.teacher_momentum, 1.0)
        ema_update_(self.teacher_encoder, self.encoder, momentum)
        ema_update_(self.teacher_head, self.head, momentum)
        self.set_host_int("optimizer_step", step)
        self.set_host_int("schedule_max_steps", max_steps)

    # -- inputs -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def get_input_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Pooled `[B, hidden]` feature of volumes `[B, C, D, H, W]`: mean of all student-encoder tokens. The stock
        encoder's clip layout `[B, D, C, H, W]` (`export_check_input`) is accepted too when it is unambiguous (axis 1
        is not the channel count, axis 2 is, and the sizes are the model's volume)."""
        c = self.config.num_channels
        if (torch.is_tensor(inputs) and inputs.dim() == 5 and inputs.shape[1] != c and inputs.shape[2] == c
                and (inputs.shape[1], inputs.shape[3], inputs.shape[4]) == self.volume_size):
            inputs = inputs.permute(0, 2, 1, 3, 4)
        return super().get_input_features(inputs)

    def _pair(self, value, name: str, batch: int, n: int, dtype):
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"{name} must be a pair [view1, view2] of [batch, {n}] tensors")
        out = []
        for i, v in enumerate(value):
            v = torch.as_tensor(v)
            if tuple(v.shape) != (batch, n):
                raise ValueError(f"{name}[{i}] must be [batch={batch}, tokens={n}], got {list(v.shape)}")
            out.append(v.to(dtype))
        return out

    # -- losses -------------------------------------------------------------------------------------------------
    def mim_loss(self, pred: torch.Tensor, volumes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE between predicted and input voxels (un-normalised), per patch, over masked patches (or all)."""
        c = self.config.num_channels
        mean = torch.tensor(self.config.image_mean, device=volumes.device).view(1, c, 1, 1, 1)
        std = torch.tensor(self.config.image_std, device=volumes.device).view(1, c, 1, 1, 1)
        target = patchify_3d(volumes.detach().float() * std + mean, self.patch)
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        if self.config.mim_loss_region == "all":
            return per_patch.mean()
        m = mask.float()
        return (per_patch * m).sum() / m.sum().clamp_min(1.0)

    def cafa_loss(self, query: torch.Tensor, online_kv: torch.Tensor, target_kv: torch.Tensor,
                  overlap_index: torch.Tensor, temperature: float):
        """CAFA term for one direction. `query` / `online_kv` `[B, N, P]` are the student's patch-head outputs of view
        a (encoder, decoder), `target_kv` `[B, N, P]` the teacher's of view b, `overlap_index [B, N]` view a ->
        view b. Returns `(loss, per-sample teacher mean [B, P] for the center)`; samples without overlap add 0."""
        tokens, matches, valid = gather_overlap(overlap_index)
        q = _take(query, tokens)
        online = self.cafa(q, _take(online_kv, tokens), valid)
        with torch.no_grad():  # the target branch is a constant target (official: teacher output detached)
            target = self.cafa(q.detach(), _take(target_kv, matches), valid)
            probs = self.patch_loss.teacher_probabilities(target, temperature)
        ce = torch.sum(-probs * F.log_softmax(online.float() / self.config.student_temperature, dim=-1), dim=-1)
        v = valid.float()
        count = v.sum(1)
        per_sample = (ce * v).sum(1) / count.clamp_min(1.0)
        center_rows = (target.float() * v.unsqueeze(-1)).sum(1) / count.clamp_min(1.0).unsqueeze(-1)
        return per_sample.mean(), center_rows, count

    # -- forward ------------------------------------------------------------------------------------------------
    def forward(self, pixel_values_volumes=None, bool_masked_pos=None, overlap_index=None, return_dict: bool = True,
                **kwargs):
        """
        Args:
            pixel_values_volumes: two overlapping 3-D views `[v1, v2]`, each `[B, C, D, H, W]` (a single tensor
                only returns embeddings).
            bool_masked_pos: `[m1, m2]`, each `[B, N]` (True = the student sees the mask token there).
            overlap_index: `[o12, o21]`, each `[B, N]` long: for every token of one view the token of the other view
                covering the same voxels, -1 outside the overlap (the `alice_views` policy computes them).
        """
        cfg = self.config
        if pixel_values_volumes is None:
            raise ValueError("Alice needs pixel_values_volumes: two overlapping views [v1, v2] of "
                             "[batch, channels, depth, height, width] volumes")
        if torch.is_tensor(pixel_values_volumes):
            self.check_volumes(pixel_values_volumes)
            output = SSLOutput(embeddings=encode(self.encoder, volume_to_video(pixel_values_volumes), "mean"))
            return output if return_dict else output.to_tuple()
        if not isinstance(pixel_values_volumes, (list, tuple)) or len(pixel_values_volumes) != 2:
            raise ValueError("pixel_values_volumes must be two overlapping views [v1, v2]")
        for i, v in enumerate(pixel_values_volumes):
            self.check_volumes(v, f"pixel_values_volumes[{i}]")
        b = pixel_values_volumes[0].shape[0]
        n = self.grid[0] * self.grid[1] * self.grid[2]
        if bool_masked_pos is None or overlap_index is None:
            raise ValueError("Alice needs bool_masked_pos = [m1, m2] and overlap_index = [o12, o21] (the "
                             "'alice_views' view policy provides both)")
        masks = self._pair(bool_masked_pos, "bool_masked_pos", b, n, torch.bool)
        overlaps = self._pair(overlap_index, "overlap_index", b, n, torch.long)
        if any(bool((o >= n).any()) for o in overlaps):
            raise ValueError(f"overlap_index entries must be -1 or token indices < {n}")
        device = pixel_values_volumes[0].device
        masks = [m.to(device) for m in masks]
        overlaps = [o.to(device) for o in overlaps]
        t_temp = self.teacher_temperature()

        videos = [volume_to_video(v) for v in pixel_values_volumes]
        student = [video_forward_with_mask_token(self.encoder, x, m, self.mask_token) for x, m in zip(videos, masks)]
        with torch.no_grad():
            teacher = [self.teacher_encoder(pixel_values=x).last_hidden_state for x in videos]
            teacher_global = [self.teacher_head.forward_global(t.mean(dim=1)) for t in teacher]
            teacher_patch = [self.teacher_head.forward_patch(t) for t in teacher]
        student_global = [self.head.forward_global(s.mean(dim=1)) for s in student]
        loss_global = self.global_loss(student_global, teacher_global, t_temp)

        dec = [self.decoder(s) for s in student]
        loss_mim = sum(self.mim_loss(self.pixel_head(f), v, m) for f, v, m in zip(dec, pixel_values_volumes,
                                                                                     masks)) / 2
        query = [self.head.forward_patch(s) for s in student]
        online_kv = [self.head.forward_patch(self.decoder_projection(f)) for f in dec]
        loss_cafa, rows, counts = 0.0, [], []
        for a in range(2):
            term, row, count = self.cafa_loss(query[a], online_kv[a], teacher_patch[1 - a], overlaps[a], t_temp)
            loss_cafa = loss_cafa + term / 2
            rows.append(row)
            counts.append(count)
        if self.training:
            self.patch_loss.update_center(torch.cat(rows))
        loss = cfg.lambda_global * loss_global + cfg.lambda_cafa * loss_cafa + cfg.lambda_mim * loss_mim
        metrics = {"loss_global": loss_global.detach(), "loss_cafa": loss_cafa.detach(), "loss_mim": loss_mim.detach(),
                   "overlap_tokens": torch.cat(counts).float().mean(),
                   "teacher_temperature": torch.tensor(t_temp, device=device)}
        output = SSLOutput(loss=loss, embeddings=student[0].mean(dim=1).detach(), logits=student_global[0],
                           metrics=metrics)
        return output if return_dict else output.to_tuple()


__all__ = ["AliceForSelfSupervisedPretraining", "AliceHead", "CAFA", "VolumeDecoder", "gather_overlap",
           "video_forward_with_mask_token"]
