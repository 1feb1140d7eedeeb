"""SMTC model: per-frame ViT features fused with a temporal-correspondence map, semantic-aware masked slot attention
(semantic slots from learnable Gaussian means, instance slots sampled from the same Gaussians and aggregated inside
each semantic area), an EMA teacher, and three losses:

    tokens_t      = ViT(frame_t) patch tokens                                            [B, T, N, D]
    fused_t       = tokens_t + Linear_N->D(tokens_t . tokens_{t-1}^T)                    (correspondence map)
    semantic      = SlotAttention(fused, init = mu)              -> slots [S, D], logits [S, N]
    instance      = masked SlotAttention(fused, init ~ N(mu, sigma), inside softmax_S(logits) > 0.3)   [S, P, D]
    diversity     = mean_{s != r} cos(softmax_S(logits)_s, softmax_S(logits)_r)          (student)
    consistency   = mean_pairs sum_{n, m} -P_nm sum_s q^teacher_j[s, m] log q^student_i[s, n],  i != j
                    P = Sinkhorn plan between frames i, j of the teacher tokens (cost 1 - cos), no gradient
    instance loss = Hungarian match of the instance embeddings of student frame i and teacher frame j (every i, j)
                    per semantic slot: valid_s * (mean_neg relu(cos - 0.5) - valid_t(match) * cos(match)) / sum valid_s
    loss = consistency_weight * consistency + diversity_weight * diversity + instance_weight * instance loss
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import check_pixel_values, check_video_values, encode, feature_dim, vit_grid
from ..base import SSLPreTrainedModel
from ..losses import all_reduce, world_size
from ..momentum import ema_update_, init_teacher_from_student_
from ..outputs import SSLOutput
from .configuration_smtc import SMTCConfig


# ----------------------------------------------------------------------------------------------------
# semantic-aware masked slot attention
# ----------------------------------------------------------------------------------------------------
class SemanticAwareSlotAttention(nn.Module):
    """The two-stage slot attention of SMTC (official `model_twostage.SlotAttention`).

    Stage 1 (semantic): `num_slots` slots start at the learnable Gaussian means `mu`; attention is a softmax over the
    SLOTS (competition for each input), plus `eps`, renormalised over the inputs (weighted mean); slot update
    `s <- s + updates; s <- s + MLP(LN(s))` (no GRU, as officially). Stage 2 (instance): for each semantic slot,
    `num_instances` slots are sampled from `N(mu_s, exp(log_sigma_s))` and attend with a softmax over the instances
    of their semantic slot, restricted to the pixels of that semantic area (`softmax_S(semantic logits) > threshold`).
    Both stages share the projections and the MLP. In both, gradients flow through the last iteration and straight
    to the initialisation (official `slots.detach() - init.detach() + init` before the last iteration)."""

    def __init__(self, dim: int, num_slots: int, num_instances: int, iterations: int, hidden_dim: int,
                 mask_threshold: float = 0.3, eps: float = 1e-8):
        super().__init__()
        self.num_slots, self.num_instances, self.iterations = num_slots, num_instances, iterations
        self.mask_threshold, self.eps, self.scale = mask_threshold, eps, dim ** -0.5
        self.norm_input = nn.LayerNorm(dim)
        self.norm_slots = nn.LayerNorm(dim)
        self.norm_pre_ff = nn.LayerNorm(dim)
        self.slots_mu = nn.Parameter(torch.randn(1, num_slots, 1, dim))
        self.slots_log_sigma = nn.Parameter(torch.zeros(1, num_slots, 1, dim))
        self.project_q = nn.Linear(dim, dim)
        self.project_k = nn.Linear(dim, dim)
        self.project_v = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(), nn.Linear(hidden_dim, dim))

    def _iterate(self, init_slots, k, v, slot_dim: int, mask=None):
        slots = init_slots
        dots = attn_slots = None
        for t in range(self.iterations):
            prev = slots
            q = self.project_q(self.norm_slots(slots))
            if slot_dim == 1:  # semantic: q [B, S, D]
                dots = torch.einsum("bid,bjd->bij", q, k) * self.scale
            else:  # instance: q [B, S, P, D]
                dots = torch.einsum("bkid,bjd->bkij", q, k) * self.scale
            attn_slots = dots.softmax(dim=slot_dim)  # normalised over the competing slots
            attn = attn_slots + self.eps
            if mask is not None:
                attn = attn * mask.unsqueeze(2)
            attn = attn / (attn.sum(dim=-1, keepdim=True) + (self.eps if mask is not None else 0.0))
            if slot_dim == 1:
                updates = torch.einsum("bjd,bij->bid", v, attn)
            else:
                updates = torch.einsum("bjd,bkij->bkid", v, attn)
            slots = prev + updates
            slots = slots + self.mlp(self.norm_pre_ff(slots))
            if t == self.iterations - 2:
                slots = slots.detach() - init_slots.detach() + init_slots
        return slots, dots, attn_slots

    def forward(self, inputs: torch.Tensor, instance_noise: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """`inputs` `[B, N, D]` -> semantic slots `[B, S, D]`, semantic logits `[B, S, N]` (last iteration, before the
        softmax over slots), instance slots `[B, S, P, D]`, instance logits `[B, S, P, N]`, the semantic attention
        normalised over slots `[B, S, N]` and the binary semantic mask `[B, S, N]`. `instance_noise` `[B, S, P, D]`
        (standard normal) fixes the instance-slot draw."""
        b, n, d = inputs.shape
        x = self.norm_input(inputs)
        k, v = self.project_k(x), self.project_v(x)
        mu = self.slots_mu.to(x.dtype)
        semantic_init = mu[:, :, 0].expand(b, -1, -1)
        semantic, semantic_logits, semantic_attn = self._iterate(semantic_init, k, v, slot_dim=1)
        with torch.no_grad():
            mask = (semantic_logits.softmax(dim=1) > self.mask_threshold).to(x.dtype)
        if instance_noise is None:
            instance_noise = torch.randn(b, self.num_slots, self.num_instances, d, device=x.device, dtype=x.dtype)
        instance_init = mu + self.slots_log_sigma.to(x.dtype).exp() * instance_noise  # reparameterised N(mu, sigma)
        instance, instance_logits, _ = self._iterate(instance_init, k, v, slot_dim=2, mask=mask)
        return {"semantic_slots": semantic, "semantic_logits": semantic_logits, "semantic_attention": semantic_attn,
                "semantic_mask": mask, "instance_slots": instance, "instance_logits": instance_logits}


class SMTCHead(nn.Module):
    """Everything SMTC adds on top of the frame encoder: the correspondence projection (official `transport_proj`,
    a 1x1 Conv1d over the N correlation channels = a linear map N -> D), the slot attention, and the instance MLP
    (official `mlp_slot`, D -> 2D -> D) whose L2-normalised output enters the instance loss."""

    def __init__(self, config: SMTCConfig, dim: int, num_tokens: int):
        super().__init__()
        self.correspondence_proj = nn.Linear(num_tokens, dim)
        self.slot_attention = SemanticAwareSlotAttention(dim, config.num_slots, config.num_instances,
                                                         config.slot_iterations, config.slot_mlp_hidden_dim or dim,
                                                         config.semantic_mask_threshold)
        self.instance_mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.ReLU(), nn.Linear(2 * dim, dim))

    def forward(self, tokens: torch.Tensor, instance_noise: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """`tokens` `[B, T, N, D]` per-frame patch tokens -> the slot-attention outputs with a `[B, T, ...]` layout,
        plus `instance_embeddings` `[B, T, S, P, D]` (unit norm)."""
        b, t, n, d = tokens.shape
        previous = torch.roll(tokens, shifts=1, dims=1)  # frame t vs t-1 (frame 0 vs the last one, as officially)
        correlation = torch.einsum("btnd,btmd->btnm", tokens, previous)
        fused = tokens + self.correspondence_proj(correlation)
        if instance_noise is not None:
            instance_noise = instance_noise.flatten(0, 1)
        out = self.slot_attention(fused.flatten(0, 1), instance_noise)
        out = {k: v.unflatten(0, (b, t)) for k, v in out.items()}
        out["instance_embeddings"] = F.normalize(self.instance_mlp(out["instance_slots"]), dim=-1)
        return out


# ----------------------------------------------------------------------------------------------------
# losses (official `train.py`)
# ----------------------------------------------------------------------------------------------------
def slot_diversity_loss(semantic_logits: torch.Tensor) -> torch.Tensor:
    """Mean off-diagonal cosine similarity between the slots' spatial masks (`softmax` over slots, then L2-normalised
    over pixels) of every frame (official `differ_loss`). `semantic_logits` `[B, T, S, N]`."""
    masks = F.normalize(semantic_logits.softmax(dim=-2) + 1e-8, dim=-1)
    gram = torch.einsum("btsn,btrn->btsr", masks, masks)
    s = gram.shape[-1]
    off = 1.0 - torch.eye(s, device=gram.device, dtype=gram.dtype)
    return (gram * off).sum() / (off.sum() * gram.shape[0] * gram.shape[1])


@torch.no_grad()
def sinkhorn_plan(mu_s: torch.Tensor, mu_t: torch.Tensor, cost: torch.Tensor, epsilon: float = 0.05,
                  iterations: int = 3) -> torch.Tensor:
    """Entropic optimal-transport plan `[B, N, M]` between the (normalised) masses `mu_s` `[B, N]` and `mu_t` `[B, M]`
    for `cost` `[B, N, M]` after `iterations` Sinkhorn scaling steps (official `sinkhorn_cluster`). Per sample: no
    statistic crosses the batch."""
    kernel = torch.exp(-cost.float() / epsilon)
    mu_s = mu_s.float() / mu_s.float().sum(dim=-1, keepdim=True)
    mu_t = mu_t.float() / mu_t.float().sum(dim=-1, keepdim=True)
    b = torch.ones_like(mu_t)
    for _ in range(iterations):
        a = mu_s / (kernel * b[:, None, :]).sum(dim=-1)
        b = mu_t / (kernel * a[:, :, None]).sum(dim=1)
    return a[:, :, None] * kernel * b[:, None, :]


def semantic_consistency_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, teacher_tokens: torch.Tensor,
                              epsilon: float = 0.05, iterations: int = 3):
    """Official `dense_transport_loss`: for every ordered frame pair (i, j), i != j, the student's slot distribution of
    token n in frame i is trained towards the teacher's slot distribution of token m in frame j, weighted by the
    Sinkhorn plan P between the teacher tokens of both frames (cost 1 - cos, masses = L1 norms of the unit tokens):
    `mean over pairs and batch of sum_{n, m} -P_nm sum_s q^t_j[s, m] log(q^s_i[s, n] + 1e-8)`.

    `student_logits` / `teacher_logits` `[B, T, S, N]`, `teacher_tokens` `[B, T, N, D]`. Returns (loss, plans
    `[pairs * B, N, N]`)."""
    tokens = F.normalize(teacher_tokens.detach().float(), dim=-1)
    t = student_logits.shape[1]
    log_q_s = torch.log(student_logits.float().softmax(dim=2) + 1e-8)
    q_t = teacher_logits.detach().float().softmax(dim=2)
    cross, plans = [], []
    for i in range(t):
        for j in range(t):
            if i == j:
                continue
            cost = 1.0 - torch.einsum("bnc,bmc->bnm", tokens[:, i], tokens[:, j])
            plans.append(sinkhorn_plan(tokens[:, i].abs().sum(-1), tokens[:, j].abs().sum(-1), cost, epsilon,
                                       iterations))
            cross.append(torch.einsum("bsm,bsn->bnm", q_t[:, j], log_q_s[:, i]))
    cross, plans = torch.cat(cross, dim=0), torch.cat(plans, dim=0)
    return -(cross * plans).mean(dim=0).sum(), plans


@torch.no_grad()
def valid_instances(semantic_logits: torch.Tensor, semantic_slots: torch.Tensor, instance_slots: torch.Tensor,
                    mask_threshold: float = 0.3, area_threshold: float = 0.2,
                    similarity_threshold: float = 0.5) -> torch.Tensor:
    """Official `filter_valid_instance`: instance p of semantic slot s is valid when the semantic area
    (`softmax_S > mask_threshold`) covers more than `area_threshold` of the frame AND the instance slot's cosine
    similarity to its semantic slot exceeds `similarity_threshold`. `[B, T, S, P]` float."""
    area = (semantic_logits.softmax(dim=-2) > mask_threshold).float().mean(dim=-1, keepdim=True)
    sim = torch.einsum("btsc,btspc->btsp", F.normalize(semantic_slots, dim=-1), F.normalize(instance_slots, dim=-1))
    return (sim > similarity_threshold).float() * (area > area_threshold).float()


@torch.no_grad()
def hungarian_match_order(similarity: torch.Tensor) -> torch.Tensor:
    """`[..., P, Q]` similarities -> `[..., P, Q]` index: row p starts with the teacher instance assigned to student
    instance p by the maximum-similarity bipartite matching (Hungarian, `scipy.optimize.linear_sum_assignment` on
    1 - similarity), followed by the other Q - 1 instances (the negatives), as official `matching_cost`."""
    from scipy.optimize import linear_sum_assignment

    *lead, p, q = similarity.shape
    if p > q:
        raise ValueError(f"cannot match {p} student instances to {q} teacher instances")
    cost = (1.0 - similarity.detach().double()).reshape(-1, p, q).cpu().numpy()
    out = np.empty((cost.shape[0], p, q), dtype=np.int64)
    base = np.arange(q)
    for k in range(cost.shape[0]):
        rows, cols = linear_sum_assignment(cost[k])
        order = np.tile(base, (p, 1))
        order[rows, cols] = 0
        order[rows, 0] = cols
        out[k] = order
    return torch.from_numpy(out).to(similarity.device).reshape(*lead, p, q)


def instance_consistency_terms(valid_s: torch.Tensor, valid_t: torch.Tensor, emb_s: torch.Tensor, emb_t: torch.Tensor,
                               margin: float = 0.5):
    """Official `object_loss` as (numerator, denominator): for every frame pair (i, j) (i == j included), the
    student instances of frame i are matched (Hungarian, per semantic slot) to the teacher instances of frame j; each
    valid student instance pulls its match (weighted by the match's validity) and pushes the other instances of that
    semantic slot below cosine `margin`. `valid_*` `[B, T, S, P]`, `emb_*` `[B, T, S, P, D]` unit vectors. The loss is
    `numerator / denominator` (denominator = number of valid student terms)."""
    t = emb_s.shape[1]
    num = emb_s.new_zeros((), dtype=torch.float32)
    den = emb_s.new_zeros((), dtype=torch.float32)
    for i in range(t):
        for j in range(t):
            student, teacher = emb_s[:, i].float(), emb_t[:, j].detach().float()
            sim = torch.einsum("bspc,bsqc->bspq", student, teacher)
            order = hungarian_match_order(sim)  # [B, S, P, Q]
            sim_sorted = torch.gather(sim, -1, order)
            pos, neg = sim_sorted[..., 0], sim_sorted[..., 1:]
            valid_match = torch.gather(valid_t[:, j], -1, order[..., 0])
            term = valid_s[:, i] * (F.relu(neg - margin).mean(dim=-1) - valid_match * pos)
            num = num + term.sum()
            den = den + valid_s[:, i].sum()
    return num, den


# ----------------------------------------------------------------------------------------------------
# model
# ----------------------------------------------------------------------------------------------------
class SMTCForSelfSupervisedPretraining(SSLPreTrainedModel):
    """SMTC (see `hf_ssl.modeling.smtc`): `encoder` (stock ViTModel applied to every frame) + `head` (correspondence
    projection, semantic-aware slot attention, instance MLP); EMA `teacher_encoder` / `teacher_head` (frozen)."""

    config_class = SMTCConfig
    main_input_name = "pixel_values_videos"
    input_modalities = ("video",)
    input_channel_dim = 2

    def __init__(self, config: SMTCConfig):
        super().__init__(config)
        dim = feature_dim(config.backbone_config)
        gh, gw = vit_grid(config.backbone_config, (config.image_size, config.image_size))
        self.num_tokens = gh * gw
        self.encoder = self._build_encoder()
        self.head = SMTCHead(config, dim, self.num_tokens)
        self.teacher_encoder = self._build_encoder()
        self.teacher_head = SMTCHead(config, dim, self.num_tokens)
        self.post_init()
        self.apply_frozen_parameters_()

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_head.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, SemanticAwareSlotAttention):
            init.normal_(module.slots_mu, std=1.0)
            init.xavier_uniform_(module.slots_log_sigma)
        if module is self:  # the teacher starts as an exact copy of the student (official load_state_dict)
            init_teacher_from_student_((self.teacher_encoder, self.encoder), (self.teacher_head, self.head))

    # -- inputs / features ----------------------------------------------------------------------------
    def check_video_values(self, clips, name: str = "pixel_values_videos") -> None:
        check_video_values(clips, self.config.num_channels, None, self.config.image_size, name)

    def frame_tokens(self, clips: torch.Tensor, encoder: Optional[nn.Module] = None):
        """Pooled `[B, T, D]` and patch tokens `[B, T, N, D]` of every frame."""
        b, t = clips.shape[:2]
        pooled, tokens = encode(encoder if encoder is not None else self.encoder, clips.flatten(0, 1),
                                self.config.feature_pooling, return_tokens=True)
        tokens = tokens[:, -self.num_tokens:]  # drop the CLS token
        return pooled.unflatten(0, (b, t)), tokens.unflatten(0, (b, t))

    @torch.no_grad()
    def get_input_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Clips `[B, T, C, H, W]`: mean over frames of the per-frame pooled ViT features (`feature_pooling`) of the
        exported encoder. Images `[B, C, H, W]`: the pooled features of each image (a one-frame clip)."""
        encoder = getattr(self, self.export_attribute)
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 4:
            check_pixel_values(inputs, self.config.num_channels)
            return encode(encoder, inputs, self.config.feature_pooling)
        self.check_video_values(inputs)
        b, t = inputs.shape[:2]
        return encode(encoder, inputs.flatten(0, 1), self.config.feature_pooling).unflatten(0, (b, t)).mean(dim=1)

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor, pooling: Optional[str] = None) -> torch.Tensor:
        if pooling is not None and pooling != self.config.feature_pooling:
            check_pixel_values(pixel_values, self.config.num_channels)
            return encode(getattr(self, self.export_attribute), pixel_values, pooling)
        return self.get_input_features(pixel_values)

    def export_check_input(self, x: torch.Tensor) -> torch.Tensor:
        """The exported encoder is a stock image ViTModel: clips become their frames `[B * T, C, H, W]`."""
        return x.flatten(0, 1) if x.dim() == 5 else x

    # -- object discovery -----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_instance_masks(self, pixel_values_videos: torch.Tensor, use_teacher: bool = False, seed: int = 0,
                               return_tokens: bool = False) -> torch.Tensor:
        """Instance segmentation of every frame from the two slot stages: token n goes to semantic slot
        `s* = argmax_s softmax_S(semantic logits)` and, inside it, to instance `p* = argmax_p` of that slot's instance
        logits; segment id `s* * num_instances + p*`. Returns `[B, T, H, W]` long ids at the input resolution (each
        token's id repeated over its patch; `return_tokens=True`: the `[B, T, gh, gw]` token grid).

        The instance slots are drawn from the Gaussians with ONE fixed standard-normal draw (`seed`) shared by every
        clip and frame, so predictions are deterministic and do not depend on the batch. `use_teacher=True` uses the
        EMA teacher (encoder + slot modules)."""
        self.check_video_values(pixel_values_videos)
        cfg = self.config
        encoder, head = (self.teacher_encoder, self.teacher_head) if use_teacher else (self.encoder, self.head)
        _, tokens = self.frame_tokens(pixel_values_videos, encoder)
        b, t, n, d = tokens.shape
        g = torch.Generator().manual_seed(seed)
        noise = torch.randn(1, 1, cfg.num_slots, cfg.num_instances, d, generator=g).to(tokens)
        out = head(tokens, noise.expand(b, t, -1, -1, -1))
        slot = out["semantic_logits"].argmax(dim=2)  # [B, T, N] (argmax of the softmax over slots)
        inst = out["instance_logits"]  # [B, T, S, P, N]
        index = slot[:, :, None, None, :].expand(-1, -1, 1, cfg.num_instances, -1)
        instance = torch.gather(inst, 2, index).squeeze(2).argmax(dim=2)  # [B, T, N]
        ids = slot * cfg.num_instances + instance
        gh, gw = vit_grid(cfg.backbone_config, tuple(pixel_values_videos.shape[-2:]))
        ids = ids.view(b, t, gh, gw)
        if return_tokens:
            return ids
        h, w = pixel_values_videos.shape[-2:]
        return ids.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)

    def task_metrics(self, dataset: str, split: str = "test", **kwargs) -> Dict[str, float]:
        """Object discovery (FG-ARI, video FG-ARI, mIoU of `predict_instance_masks`) on `dataset` when it carries
        ground-truth instance masks (`builtin:moving_digit_pairs` does), else `{}`. `hf-ssl pretrain` reports these
        for the random-init and the trained model."""
        from ...training.object_discovery import clips_with_masks, evaluate_object_discovery

        try:
            clips_with_masks(dataset, split)
        except (ValueError, FileNotFoundError):
            return {}
        return evaluate_object_discovery(self, dataset, split, **kwargs)

    # -- training -------------------------------------------------------------------------------------
    def forward(self, pixel_values_videos=None, synthetic_clip: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values_videos: `[student_view, teacher_view]`, two `[B, T, C, H, W]` photometric views of the same
                clips (pixel-aligned), or one tensor (embeddings only).
            synthetic_clip: optional `[B]` flags of clips made from single images (logged).

        Returns:
            `SSLOutput(loss, embeddings [B, D] (clip features of the student view), metrics)`.
        """
        if isinstance(pixel_values_videos, torch.Tensor):
            self.check_video_values(pixel_values_videos)
            pooled, _ = self.frame_tokens(pixel_values_videos)
            out = SSLOutput(embeddings=pooled.mean(dim=1))
            return out if return_dict else out.to_tuple()
        if not isinstance(pixel_values_videos, (list, tuple)) or len(pixel_values_videos) != 2:
            raise ValueError("SMTC needs pixel_values_videos = [student_view, teacher_view] clip batches")
        for i, v in enumerate(pixel_values_videos):
            self.check_video_values(v, f"pixel_values_videos[{i}]")
        student_clips, teacher_clips = pixel_values_videos
        if student_clips.shape != teacher_clips.shape:
            raise ValueError(f"student and teacher views must have the same shape, got {tuple(student_clips.shape)} "
                             f"and {tuple(teacher_clips.shape)}")
        if student_clips.shape[1] < 2:
            raise ValueError("SMTC needs clips of at least 2 frames")
        cfg = self.config
        pooled, tokens = self.frame_tokens(student_clips)
        student = self.head(tokens)
        with torch.no_grad():
            _, teacher_tokens = self.frame_tokens(teacher_clips, self.teacher_encoder)
            teacher = self.teacher_head(teacher_tokens)
        losses = self.losses(student, teacher, teacher_tokens)
        loss = (cfg.consistency_weight * losses["consistency_loss"] + cfg.diversity_weight * losses["diversity_loss"]
                + cfg.instance_weight * losses["instance_loss"])
        with torch.no_grad():
            metrics = {k: v.detach() for k, v in losses.items()}
            occupied = (student["semantic_logits"].softmax(dim=2).argmax(dim=2, keepdim=True)
                        == torch.arange(cfg.num_slots, device=loss.device).view(1, 1, -1, 1)).any(-1)
            metrics["occupied_slots"] = occupied.float().sum(-1).mean()
            if synthetic_clip is not None:
                metrics["synthetic_clip_fraction"] = torch.as_tensor(synthetic_clip, device=loss.device).float().mean()
        out = SSLOutput(loss=loss, embeddings=pooled.mean(dim=1).detach(), metrics=metrics)
        return out if return_dict else out.to_tuple()

    def losses(self, student: Dict[str, torch.Tensor], teacher: Dict[str, torch.Tensor],
               teacher_tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        cfg = self.config
        diversity = slot_diversity_loss(student["semantic_logits"])
        consistency, _ = semantic_consistency_loss(student["semantic_logits"], teacher["semantic_logits"],
                                                   teacher_tokens, cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)
        thresholds = (cfg.semantic_mask_threshold, cfg.valid_area_threshold, cfg.valid_similarity_threshold)
        valid_s = valid_instances(student["semantic_logits"], student["semantic_slots"], student["instance_slots"],
                                  *thresholds)
        valid_t = valid_instances(teacher["semantic_logits"], teacher["semantic_slots"], teacher["instance_slots"],
                                  *thresholds)
        num, den = instance_consistency_terms(valid_s, valid_t, student["instance_embeddings"],
                                              teacher["instance_embeddings"], cfg.negative_margin)
        # the normaliser is the number of valid student instances over the GLOBAL batch: with DDP's gradient average,
        # N processes then give the loss of one process on the concatenated batch
        global_den = all_reduce(den.detach().clone()) / world_size()
        instance = num / (global_den + 1e-10)
        return {"diversity_loss": diversity, "consistency_loss": consistency, "instance_loss": instance,
                "valid_instance_fraction": valid_s.mean().detach()}

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        m = self.config.teacher_momentum
        ema_update_(self.teacher_head, self.head, m)
        if self.config.ema_teacher_encoder:
            ema_update_(self.teacher_encoder, self.encoder, m)


__all__ = ["SMTCForSelfSupervisedPretraining", "SemanticAwareSlotAttention", "SMTCHead", "slot_diversity_loss",
           "sinkhorn_plan", "semantic_consistency_loss", "valid_instances", "hungarian_match_order",
           "instance_consistency_terms"]
