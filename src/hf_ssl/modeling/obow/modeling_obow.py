"""OBoW model: EMA teacher -> online bag-of-visual-words targets; student -> dynamic BoW prediction head.

One training step (B images; views[0] = teacher view, views[1:] = student crops/patches):

    V_l = vocabulary of level l (a FIFO queue of teacher local features, [K, C_l]), read at the start of the step
    student: g = avgpool(encoder(crop)) [N, D];  W_l = kappa * L2norm(MLP_l(L2norm(V_l))) [K, D]  (weight generator)
             prediction_l = softmax(g @ W_l^T)
    teacher (no gradient): F_l = stage-l map of teacher_encoder(views[0]) with a `feature_border` crop
             d = ||F_l(u) - V_l(k)||^2; mu <- decay * mu + (1 - decay) * mean_u min_k d  (global mean over processes)
             codes = softmax_k(-(inv_delta / mu) d);  bow_l = L1norm(maxpool_u codes)     (the BoW target)
             V_l <- enqueue(all_gather(one local feature per image))                     (after the codes)
    loss = sum over student resolutions of mean_l KL(bow_l || prediction_l)  (batch mean over crops of that size)
    on_step_end: teacher <- EMA(student) with a cosine momentum schedule 0.99 -> 1.
"""

from __future__ import annotations

import math
from typing import List

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import encode, encode_multicrop, feature_dim
from ..base import SSLPreTrainedModel
from ..losses import all_gather, all_reduce, rank, world_size
from ..momentum import cosine_schedule, ema_update_, init_teacher_from_student_
from ..outputs import SSLOutput
from .configuration_obow import OBoWConfig


class BoWWeightGenerator(nn.Module):
    """Official weight generator of one level: L2norm -> Linear(C, 2D, no bias) -> BN -> ReLU -> Linear(2D, D) ->
    L2norm. Applied to the vocabulary `[K, C]` it gives the prediction weights `[K, D]`."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, hidden_dim, bias=False)
        self.bn = nn.BatchNorm1d(hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, out_dim)

    def forward(self, words: torch.Tensor) -> torch.Tensor:
        x = self.fc2(F.relu(self.bn(self.fc1(F.normalize(words, dim=1)))))
        return F.normalize(x, dim=1)


class OBoWForSelfSupervisedPretraining(SSLPreTrainedModel):
    """OBoW (Gidaris et al., CVPR 2021) on a stock transformers ConvNet.

    Attributes:
        encoder / teacher_encoder: student and EMA teacher (frozen).
        weight_generators: one :class:`BoWWeightGenerator` per BoW level; `kappa` (buffer, not learned).
        vocabulary_<i> `[num_words, C_i]`, vocabulary_ptr `[levels]`, min_distance_mean `[levels]`: BoW state,
            identical on every process. optimizer_step, forward_count: schedule / sampling state.
    """

    config_class = OBoWConfig

    def __init__(self, config: OBoWConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        self.teacher_encoder = self._build_encoder()
        dim = feature_dim(config.backbone_config)
        channels = config.level_channels()
        self.weight_generators = nn.ModuleList([BoWWeightGenerator(c, 2 * dim, dim) for c in channels])
        for i, c in enumerate(channels):
            self.register_buffer(f"vocabulary_{i}", torch.randn(config.num_words, c).clamp(min=0))
        n = len(channels)
        self.register_buffer("vocabulary_ptr", torch.zeros(n, dtype=torch.long))
        self.register_buffer("min_distance_mean", torch.full((n,), 0.5))
        self.register_buffer("kappa", torch.full((n,), float(config.kappa)))
        self.register_buffer("optimizer_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("forward_count", torch.zeros((), dtype=torch.long))
        self.post_init()

    @property
    def num_levels(self) -> int:
        return len(self.config.bow_levels)

    def vocabulary(self, level: int) -> torch.Tensor:
        return getattr(self, f"vocabulary_{level}")

    def _init_weights(self, module):
        if isinstance(module, nn.Linear) and any(module is g.fc1 or module is g.fc2 for g in self.weight_generators):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))  # PyTorch-default Linear init (official)
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.weight.shape[1])
                init.uniform_(module.bias, -bound, bound)
            return
        super()._init_weights(module)
        if module is self:
            init_teacher_from_student_((self.teacher_encoder, self.encoder))
            for i in range(self.num_levels):
                voc = self.vocabulary(i)
                init.copy_(voc, torch.randn_like(voc).clamp(min=0))
            init.zeros_(self.vocabulary_ptr)
            init.constant_(self.min_distance_mean, 0.5)
            init.constant_(self.kappa, float(self.config.kappa))
            init.zeros_(self.optimizer_step)
            init.zeros_(self.forward_count)

    # -- student ----------------------------------------------------------------------------------------------
    def prediction_weights(self, vocabularies: List[torch.Tensor]) -> List[torch.Tensor]:
        """`kappa_l * generator_l(V_l)` `[K, D]` per level (the dynamic prediction head)."""
        return [self.kappa[i] * gen(v) for i, (gen, v) in enumerate(zip(self.weight_generators, vocabularies))]

    def encode_views(self, views) -> List[torch.Tensor]:
        """Pooled student features, one tensor per run of consecutive same-size views (one encoder call each)."""
        return encode_multicrop(self.encoder, views, self.config.feature_pooling, concatenate=False)

    # -- teacher ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_feature_maps(self, pixel_values: torch.Tensor) -> List[torch.Tensor]:
        hidden = self.teacher_encoder(pixel_values=pixel_values, output_hidden_states=True).hidden_states
        b = self.config.feature_border
        maps = []
        for level in self.config.bow_levels:
            f = hidden[level]
            if b:
                if f.shape[-1] <= 2 * b or f.shape[-2] <= 2 * b:
                    raise ValueError(f"the level-{level} teacher map {tuple(f.shape[-2:])} is too small for "
                                     f"feature_border={b}; use larger images or feature_border=0")
                f = f[:, :, b:-b, b:-b]
            maps.append(f.float())
        return maps

    @torch.no_grad()
    def bow_targets(self, maps: List[torch.Tensor], update: bool):
        """BoW targets `[B, K]` per level (rows sum to 1) from teacher maps; with `update` (training) the running
        min-distance mean is updated first (as in the official code) and the codes use the updated value."""
        targets, min_dists = [], []
        for i, f in enumerate(maps):
            voc = self.vocabulary(i).float()
            dist = (f.pow(2).sum(1, keepdim=True)
                    + F.conv2d(f, (-2 * voc)[:, :, None, None], bias=voc.pow(2).sum(1)))  # [B, K, H, W]
            min_dist = dist.min(dim=1).values.mean()
            min_dist = all_reduce(min_dist.clone(), "mean")
            min_dists.append(min_dist)
            if update:
                decay = self.config.min_distance_decay
                self.min_distance_mean[i] = decay * self.min_distance_mean[i] + (1 - decay) * min_dist
            codes = F.softmax(-(self.config.inv_delta / self.min_distance_mean[i]) * dist, dim=1)
            bow = codes.amax(dim=(2, 3)) if self.config.bow_pool == "max" else codes.mean(dim=(2, 3))
            targets.append(F.normalize(bow, p=1, dim=1))
        return targets, min_dists

    @torch.no_grad()
    def select_local_features(self, f: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
        """One local feature per image for the vocabulary update (`uniform` `[B]` in [0, 1) picks the location)."""
        mode = self.config.vocabulary_update
        if mode == "global_average":
            return f.mean(dim=(2, 3))
        if mode == "local_average" and min(f.shape[-2:]) >= 3:
            f = F.avg_pool2d(f, kernel_size=3, stride=1, padding=0)
        flat = f.flatten(2)  # [B, C, L]
        loc = (uniform * flat.shape[2]).long().clamp_(max=flat.shape[2] - 1)
        return flat.gather(2, loc.view(-1, 1, 1).expand(-1, flat.shape[1], 1)).squeeze(2)

    @torch.no_grad()
    def update_vocabulary(self, level: int, selected: torch.Tensor) -> None:
        """FIFO update with the all-gathered selected features: overwrite the oldest words at the pointer (wrapping
        around; the official code asserts num_words is a multiple of the global batch)."""
        words = all_gather(selected)
        n, k = words.shape[0], self.config.num_words
        if n > k:
            raise ValueError(f"the global batch ({n}) is larger than num_words ({k})")
        ptr = int(self.vocabulary_ptr[level])
        voc = self.vocabulary(level)
        voc[(ptr + torch.arange(n, device=words.device)) % k] = words.to(voc.dtype)
        self.vocabulary_ptr[level] = (ptr + n) % k

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[teacher_view, *student_views]` (the `"obow"` policy: teacher view, crops, patches), or a
                single `[B, C, H, W]` tensor (embeddings only).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `embeddings` = student pooled features of the first student view
            (detached), `logits` = BoW prediction logits of the first student view for the last level `[B, K]`.
        """
        if isinstance(pixel_values, torch.Tensor):
            self.check_pixel_values(pixel_values)
            out = SSLOutput(embeddings=encode(self.encoder, pixel_values, self.config.feature_pooling))
            return out if return_dict else out.to_tuple()
        if not isinstance(pixel_values, (list, tuple)):
            raise TypeError(f"pixel_values must be a tensor or a list of tensors, got {type(pixel_values).__name__}")
        views = list(pixel_values)
        if len(views) < 2:
            raise ValueError(f"OBoW needs the teacher view and at least one student view, got {len(views)} view(s)")
        for i, v in enumerate(views):
            self.check_pixel_values(v, name=f"pixel_values[{i}]")
        bs = views[0].shape[0]
        if any(v.shape[0] != bs for v in views):
            raise ValueError(f"every view needs the same batch size, got {[v.shape[0] for v in views]}")

        vocabularies = [self.vocabulary(i).detach().clone() for i in range(self.num_levels)]
        weights = self.prediction_weights(vocabularies)
        groups = self.encode_views(views[1:])
        predictions = [[g @ w.t() for w in weights] for g in groups]

        with torch.no_grad():
            maps = self.teacher_feature_maps(views[0])
            targets, min_dists = self.bow_targets(maps, update=self.training)
            if self.training:
                g = torch.Generator(device=views[0].device)
                g.manual_seed(self.config.sampling_seed * 1_000_003 + int(self.forward_count))
                rows = slice(rank() * bs, (rank() + 1) * bs)
                for i, f in enumerate(maps):
                    u = torch.rand(bs * world_size(), generator=g, device=f.device)[rows]
                    self.update_vocabulary(i, self.select_local_features(f, u))
                self.forward_count += 1

        loss = 0.0
        metrics = {}
        for j, preds in enumerate(predictions):
            level_losses = []
            for i, p in enumerate(preds):
                t = targets[i].repeat(p.shape[0] // bs, 1)  # crops of one size are stacked view-major
                level_losses.append(F.kl_div(F.log_softmax(p.float(), dim=1), t, reduction="batchmean"))
            group_loss = torch.stack(level_losses).mean()
            metrics[f"bow_loss_group{j}"] = group_loss.detach()
            loss = loss + group_loss
        with torch.no_grad():
            for i, t in enumerate(targets):
                metrics[f"perplexity_image_level{i}"] = torch.exp(-(t * torch.log(t + 1e-5)).sum(1)).mean()
                metrics[f"min_distance_mean_level{i}"] = self.min_distance_mean[i].clone()
            embeddings = groups[0][:bs].detach()
        out = SSLOutput(loss=loss, embeddings=embeddings, logits=predictions[0][-1][:bs], metrics=metrics)
        return out if return_dict else out.to_tuple()

    def teacher_momentum(self, step: int, max_steps: int) -> float:
        m = self.config.teacher_momentum
        return cosine_schedule(step, max_steps, m, 1.0) if self.config.teacher_momentum_cosine else m

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        momentum = self.teacher_momentum(step, max_steps)
        if momentum < 1.0:
            ema_update_(self.teacher_encoder, self.encoder, momentum)
        self.optimizer_step.fill_(step)


__all__ = ["OBoWForSelfSupervisedPretraining", "BoWWeightGenerator"]
