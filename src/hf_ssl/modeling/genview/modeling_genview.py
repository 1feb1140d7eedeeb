"""GenView pretraining model: MoCo v3 with the quality-driven contrastive loss."""

from __future__ import annotations

import copy
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..backbones import backbone_family, encode, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead
from ..losses import all_gather, all_reduce, rank, world_size
from ..momentum import cosine_schedule, ema_update_, init_teacher_from_student_
from ..outputs import SSLOutput
from .configuration_genview import GenViewConfig


def _tokens(family: str, hidden: torch.Tensor) -> torch.Tensor:
    """Spatial tokens `[B, N, D]` from an encoder's last hidden state (ViT: drop CLS; ConvNet `[B, C, h, w]`)."""
    if family == "vit":
        return hidden[:, 1:]
    if hidden.dim() == 4:
        return hidden.flatten(2).transpose(1, 2)
    return hidden  # swin: already [B, N, D]


def _centre_mask(n: int, device) -> torch.Tensor:
    """Bool `[n]`: tokens in the central half (per axis) of a square token grid (all True for n < 4)."""
    side = int(round(n ** 0.5))
    if side * side != n or side < 2:
        return torch.ones(n, dtype=torch.bool, device=device)
    idx = torch.arange(side, device=device)
    inner = (idx >= side // 4) & (idx < side - side // 4)
    return (inner[:, None] & inner[None, :]).flatten()


def foreground_maps(tokens: torch.Tensor, direction: torch.Tensor, eps: float = 1e-7):
    """Official `make_foreground_softmask`: project tokens on the foreground direction, min-max normalise per image
    -> foreground map, background = 1 - foreground, each normalised to sum 1. Returns `(fg, bg)` `[B, N]`."""
    proj = tokens.float() @ direction.float()
    lo, hi = proj.min(dim=1, keepdim=True).values, proj.max(dim=1, keepdim=True).values
    fg = (proj - lo) / (hi - lo + eps)
    bg = 1.0 - fg
    return fg / (fg.sum(dim=1, keepdim=True) + eps), bg / (bg.sum(dim=1, keepdim=True) + eps)


def quality_weights(tokens1: torch.Tensor, tokens2: torch.Tensor, direction: torch.Tensor, gamma: float):
    """Per-pair weights `exp(gamma * (sim_fg - sim_bg))` normalised to mean 1 over the GLOBAL batch (sums are
    all-reduced across processes), plus the raw scores. Cosine similarity of fg-/bg-pooled tokens of the views."""
    fg1, bg1 = foreground_maps(tokens1, direction)
    fg2, bg2 = foreground_maps(tokens2, direction)
    pool = lambda m, t: torch.einsum("bn,bnd->bd", m, t.float())  # noqa: E731
    sim_fg = F.cosine_similarity(pool(fg1, tokens1), pool(fg2, tokens2), dim=-1)
    sim_bg = F.cosine_similarity(pool(bg1, tokens1), pool(bg2, tokens2), dim=-1)
    score = torch.exp(gamma * (sim_fg - sim_bg))
    total = all_reduce(score.sum().detach().clone())
    weight = score * (score.shape[0] * world_size()) / total
    return weight.detach(), score.detach(), sim_fg.detach(), sim_bg.detach()


class GenViewForSelfSupervisedPretraining(SSLPreTrainedModel):
    """GenView on MoCo v3 (see `hf_ssl.modeling.genview`).

    Attributes:
        encoder / projector / predictor: online branch (MoCo v3: projector 2-layer with affine-free last BN,
            predictor 2-layer).
        teacher_encoder / teacher_projector: momentum branch (EMA, half-cosine momentum schedule, no gradients).
        foreground_direction: buffer `[D]`, the unit direction whose projection marks foreground tokens (tracked
            online for `quality_scorer="momentum"`, or set with `set_foreground_direction`).
    """

    config_class = GenViewConfig

    def __init__(self, config: GenViewConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        dim = feature_dim(config.backbone_config)
        self.projector = MLPHead(dim, config.projection_hidden_dim, config.projection_dim, num_layers=2,
                                 last_norm=True)
        self.predictor = MLPHead(config.projection_dim, config.predictor_hidden_dim, config.projection_dim,
                                 num_layers=2)
        self.teacher_encoder = self._build_encoder()
        self.teacher_projector = copy.deepcopy(self.projector)
        self.register_buffer("foreground_direction", torch.zeros(dim))
        self.register_buffer("teacher_momentum_now", torch.tensor(float(config.teacher_momentum)))
        self.__dict__["_quality_scorer"] = None  # plain attribute: never registered, never saved
        self.apply_frozen_parameters_()
        self.post_init()

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_projector.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:  # the momentum branch starts as a copy of the online branch (after children init)
            from transformers import initialization as init

            init_teacher_from_student_((self.teacher_encoder, self.encoder), (self.teacher_projector, self.projector))
            init.zeros_(self.foreground_direction)

    # -- external quality scorer (the paper's frozen CLIP encoder) -----------------------------------
    def set_quality_scorer(self, fn: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        """`fn(pixel_values [B, C, H, W]) -> tokens [B, N, D]` (frozen, no grad); used with quality_scorer='external'."""
        self.__dict__["_quality_scorer"] = fn

    @torch.no_grad()
    def set_foreground_direction(self, direction: torch.Tensor) -> None:
        direction = torch.as_tensor(direction, dtype=torch.float32).flatten()
        if direction.norm() == 0:
            raise ValueError("the foreground direction must be non-zero")
        if direction.numel() != self.foreground_direction.numel():
            self.foreground_direction = direction.new_zeros(direction.numel()).to(self.foreground_direction.device)
        self.foreground_direction.copy_(F.normalize(direction, dim=0))

    # -- online foreground direction ----------------------------------------------------------------
    @torch.no_grad()
    def update_foreground_direction(self, tokens: torch.Tensor, iterations: int = 3) -> torch.Tensor:
        """First principal direction of the tokens of the global batch (power iteration on the all-reduced
        covariance, warm-started from the current direction), signed so that central tokens project higher than
        border tokens (objects tend to be centred), then an EMA into the buffer."""
        x = tokens.float().reshape(-1, tokens.shape[-1])
        count = all_reduce(torch.tensor(float(x.shape[0]), device=x.device))
        mean = all_reduce(x.sum(dim=0)) / count
        v = self.foreground_direction.float().clone()
        if v.norm() == 0:
            v = torch.linspace(1.0, 2.0, x.shape[1], device=x.device)  # deterministic start
        v = F.normalize(v, dim=0)
        for _ in range(iterations):
            cv = all_reduce(x.t() @ (x @ v)) / count - mean * (mean @ v)
            v = F.normalize(cv, dim=0)
        centre = _centre_mask(tokens.shape[1], x.device)
        proj = tokens.float() @ v
        if not bool(centre.all()):
            gap = torch.stack([proj[:, centre].mean(1).sum(), proj[:, ~centre].mean(1).sum()])
            gap = all_reduce(gap)
            if gap[0] < gap[1]:
                v = -v
        m = self.config.foreground_direction_momentum
        old = self.foreground_direction.float()
        new = v if old.norm() == 0 else F.normalize(m * old + (1 - m) * v, dim=0)
        self.foreground_direction.copy_(new.to(self.foreground_direction.dtype))
        return new

    # -- loss -----------------------------------------------------------------------------------------
    def contrastive_loss(self, q: torch.Tensor, k: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
        """MoCo v3: `2 * tau * CE(q . k_all / tau)` with the keys of every process as candidates, the positive at
        this process's offset; per-sample weights (mean over samples)."""
        tau = self.config.contrastive_temperature
        q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
        keys = all_gather(k)
        logits = q @ keys.t() / tau
        labels = torch.arange(q.shape[0], device=q.device) + rank() * q.shape[0]
        ce = F.cross_entropy(logits, labels, reduction="none")
        if weight is not None:
            ce = ce * weight
        return 2 * tau * ce.mean()

    def forward(self, pixel_values, generated_view: Optional[torch.Tensor] = None,
                noise_level: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[view1, view2]` (two `[B, C, H, W]` tensors); view 2 may come from a generated image.
            generated_view / noise_level: optional `[B]` from the view policy, logged.

        Returns:
            `SSLOutput(loss, embeddings, metrics)`; `embeddings` = pooled encoder features of view 1 (detached).
        """
        if isinstance(pixel_values, torch.Tensor) and pixel_values.dim() == 5:
            pixel_values = list(pixel_values.unbind(1))
        if not isinstance(pixel_values, (list, tuple)) or len(pixel_values) != 2:
            raise ValueError("GenView needs pixel_values = [view1, view2] (two [B, C, H, W] tensors)")
        v1, v2 = pixel_values
        self.check_pixel_values(v1, "pixel_values[0]")
        self.check_pixel_values(v2, "pixel_values[1]")
        pooling = self.config.feature_pooling
        h1, h2 = encode(self.encoder, v1, pooling), encode(self.encoder, v2, pooling)
        q1, q2 = self.predictor(self.projector(h1)), self.predictor(self.projector(h2))
        family = backbone_family(self.config.backbone_config)
        with torch.no_grad():
            t1, m1 = encode(self.teacher_encoder, v1, pooling, return_tokens=True)
            t2, m2 = encode(self.teacher_encoder, v2, pooling, return_tokens=True)
            k1, k2 = self.teacher_projector(t1), self.teacher_projector(t2)
        metrics = {}
        weight = None
        if self.config.quality_weighting and self.config.quality_scorer != "none":
            with torch.no_grad():
                if self.config.quality_scorer == "external":
                    scorer = self.__dict__.get("_quality_scorer")
                    if scorer is None:
                        raise ValueError("quality_scorer='external' needs model.set_quality_scorer(fn)")
                    tok1, tok2 = scorer(v1), scorer(v2)
                    if self.foreground_direction.norm() == 0:
                        raise ValueError("quality_scorer='external' needs model.set_foreground_direction(vector)")
                else:
                    tok1, tok2 = _tokens(family, m1), _tokens(family, m2)
                    if self.training:
                        self.update_foreground_direction(torch.cat([tok1, tok2]))
                if tok1.shape[1] > 1 and self.foreground_direction.norm() > 0:
                    weight, score, sim_fg, sim_bg = quality_weights(tok1, tok2, self.foreground_direction,
                                                                    self.config.quality_gamma)
                    metrics.update(quality_score=score.mean(), foreground_similarity=sim_fg.mean(),
                                   background_similarity=sim_bg.mean(), quality_weight_max=weight.max())
        loss = self.contrastive_loss(q1, k2, weight) + self.contrastive_loss(q2, k1, weight)
        metrics["contrastive_loss"] = loss.detach()
        metrics["teacher_momentum"] = self.teacher_momentum_now.detach()
        if generated_view is not None:
            metrics["generated_fraction"] = torch.as_tensor(generated_view).float().mean()
        output = SSLOutput(loss=loss, embeddings=h1.detach(), metrics=metrics)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA of the momentum branch with MoCo v3's half-cosine momentum (base -> 1 over training)."""
        m = cosine_schedule(step, max_steps, self.config.teacher_momentum, 1.0)
        ema_update_(self.teacher_encoder, self.encoder, m)
        ema_update_(self.teacher_projector, self.projector, m)
        self.teacher_momentum_now.fill_(m)


__all__ = ["GenViewForSelfSupervisedPretraining", "foreground_maps", "quality_weights"]
