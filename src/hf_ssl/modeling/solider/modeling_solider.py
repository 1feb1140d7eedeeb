"""SOLIDER pretraining model: DINO self-distillation + token-level pseudo semantic labels (per-image clustering of the
teacher's tokens) + a semantic controller (lambda) that conditions a stock Swin between its stages."""

from __future__ import annotations

import copy
import json
import os
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import map_views_batched
from ..base import SSLPreTrainedModel
from ..distillation import DINOHead, SelfDistillationLoss
from ..losses import kmeans
from ..momentum import cosine_schedule, ema_update_, init_teacher_from_student_, warmup_then_constant
from ..outputs import SSLOutput
from .configuration_solider import SOLIDERConfig


class SemanticController(nn.Module):
    """SOLIDER's semantic controller: lambda is encoded as `s = [lambda, 1 - lambda]` and, after every Swin stage that
    ends with patch merging, the tokens are modulated per channel, `x <- x * softplus(W_i s + b_i) + (W'_i s + b'_i)`
    (official `semantic_embed_w` / `semantic_embed_b`). The official model also modulates after the last stage, but
    that result never reaches an output (the final norm reads the unmodulated tokens), so it is omitted here."""

    def __init__(self, dims: Sequence[int]):
        super().__init__()
        self.scale = nn.ModuleList([nn.Linear(2, d) for d in dims])
        self.shift = nn.ModuleList([nn.Linear(2, d) for d in dims])

    @staticmethod
    def code(semantic_weight: torch.Tensor) -> torch.Tensor:
        lam = semantic_weight.float().reshape(-1, 1)
        return torch.cat([lam, 1 - lam], dim=1)

    def modulation(self, index: int, semantic_weight: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-sample `(scale [B, C], shift [B, C])` for controlled stage `index`."""
        s = self.code(semantic_weight).to(self.scale[index].weight.dtype)
        return F.softplus(self.scale[index](s)), self.shift[index](s)


def controlled_stage_dims(config) -> list:
    """Channel widths after each Swin stage that ends with patch merging (all but the last)."""
    return [int(config.embed_dim * 2 ** (i + 1)) for i in range(len(config.depths) - 1)]


class _fixed_windows:
    """transformers' `SwinLayer.set_shift_and_window_size` permanently shrinks a block's window the first time it
    sees a feature map smaller than the window (and permanently drops its shift when the map is not larger than the
    window), after which the block's relative-position table no longer matches. SOLIDER's local crops are such
    inputs. Inside this context each call keeps the configured window (the map is padded to it, as the official mmcv
    Swin does) and drops the shift only for that call when the whole map fits in one window, which is exactly the
    stock behaviour on maps at least as large as the window. The blocks' state is restored on exit."""

    def __init__(self, stage: nn.Module):
        self.blocks = [blk for blk in getattr(stage, "blocks", []) if hasattr(blk, "set_shift_and_window_size")]
        self.saved = []

    def __enter__(self):
        self.saved = [(blk.window_size, blk.shift_size) for blk in self.blocks]
        for blk in self.blocks:
            def keep(input_resolution, blk=blk):
                if min(input_resolution) <= blk.window_size:
                    blk.shift_size = 0
            blk.__dict__["set_shift_and_window_size"] = keep
        return self

    def __exit__(self, *exc):
        for blk, (window, shift) in zip(self.blocks, self.saved):
            blk.__dict__.pop("set_shift_and_window_size", None)
            blk.window_size, blk.shift_size = window, shift
        return False


def controlled_swin_forward(swin: nn.Module, controller: Optional[SemanticController], pixel_values: torch.Tensor,
                            semantic_weight: Optional[torch.Tensor] = None):
    """Run a stock transformers `SwinModel` stage by stage, modulating the patch-merged tokens with the
    controller at `semantic_weight [B]` (no modulation when either is None: then it equals `swin(pixel_values)`).
    Returns `(pooled [B, C], tokens [B, h*w, C] after the final norm, (h, w))`."""
    hidden, dims = swin.embeddings(pixel_values.to(swin.embeddings.patch_embeddings.projection.weight.dtype))
    j = 0
    for stage in swin.encoder.layers:
        with _fixed_windows(stage):
            hidden = stage(hidden, dims)[0]
        if stage.downsample is not None:
            dims = ((dims[0] + 1) // 2, (dims[1] + 1) // 2)
            if controller is not None and semantic_weight is not None:
                scale, shift = controller.modulation(j, semantic_weight)
                hidden = hidden * scale.unsqueeze(1).to(hidden.dtype) + shift.unsqueeze(1).to(hidden.dtype)
            j += 1
    tokens = swin.layernorm(hidden)
    pooled = torch.flatten(swin.pooler(tokens.transpose(1, 2)), 1)
    return pooled, tokens, dims


@torch.no_grad()
def semantic_part_labels(tokens: torch.Tensor, grid: Tuple[int, int], num_parts: int, min_foreground: float = 0.5,
                         iterations: int = 10):
    """SOLIDER's pseudo semantic labels (official `utils.get_mask`), computed per image so they never depend on the
    rest of the batch: 2-means on the token norms separates foreground (the high-norm cluster) from background; an
    image is labelled only if more than `min_foreground` of its tokens are foreground; the foreground tokens are
    clustered into `num_parts` parts (k-means), and parts are numbered 1..num_parts from top to bottom by their mean
    row (so part k means the same body region in every image); background is 0.

    `tokens [B, h*w, C]` (row-major grid). Returns `(labels [B, h*w] long, valid [B] bool)`; rows of invalid images
    are all 0."""
    b, n, _ = tokens.shape
    h, w = grid
    if h * w != n:
        raise ValueError(f"grid {grid} does not match {n} tokens")
    labels = torch.zeros(b, n, dtype=torch.long, device=tokens.device)
    valid = torch.zeros(b, dtype=torch.bool, device=tokens.device)
    rows = (torch.arange(n, device=tokens.device) // w).float()
    for i in range(b):
        x = tokens[i].detach().float()
        norms = x.norm(dim=1, keepdim=True)
        if float(norms.max() - norms.min()) <= 0:
            continue
        centers, assign = kmeans(norms, 2, iterations=iterations, seed=0)
        fg = assign == int(centers[:, 0].argmax())
        count = int(fg.sum())
        if count <= min_foreground * n or count < num_parts:
            continue
        _, part = kmeans(x[fg], num_parts, iterations=iterations, seed=0)
        fg_rows = rows[fg]
        mean_row = torch.stack([fg_rows[part == k].mean() if bool((part == k).any())
                                else fg_rows.new_tensor(float("inf")) for k in range(num_parts)])
        rank = torch.empty(num_parts, dtype=torch.long, device=tokens.device)
        rank[torch.argsort(mean_row, stable=True)] = torch.arange(1, num_parts + 1, device=tokens.device)
        labels[i, fg] = rank[part]
        valid[i] = True
    return labels, valid


def weighted_token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Official semantic loss: token cross entropy `[n, L]`, each image's tokens multiplied by its lambda, averaged
    over all tokens. `logits [n, L, P+1]`, `labels [n, L]`, `weights [n]`."""
    ce = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="none")
    return (ce.reshape(labels.shape) * weights.float().unsqueeze(1)).mean()


class SOLIDERForSelfSupervisedPretraining(SSLPreTrainedModel):
    """SOLIDER (see `hf_ssl.modeling.solider`).

    Attributes:
        encoder / controller / head / part_head: student (stock Swin, semantic controller, DINO head on the pooled
            feature, semantic head on every last-stage token with `num_parts + 1` classes).
        teacher_encoder / teacher_controller / teacher_head: EMA teacher (no gradients); used by
            `get_image_features(pixel_values, semantic_weight=...)` and `export_encoder`.
        distillation: shared :class:`~hf_ssl.modeling.distillation.SelfDistillationLoss` (DDP-synchronised center).
    """

    config_class = SOLIDERConfig
    export_attribute = "teacher_encoder"

    def __init__(self, config: SOLIDERConfig):
        super().__init__(config)
        bb = config.backbone_config
        dim = int(bb.embed_dim * 2 ** (len(bb.depths) - 1))
        self.encoder = self._build_encoder()
        self.controller = SemanticController(controlled_stage_dims(bb))
        self.head = DINOHead(dim, config.head_out_dim, config.head_hidden_dim, config.head_bottleneck_dim,
                             norm_last_layer=config.norm_last_layer)
        self.part_head = DINOHead(dim, config.num_parts + 1, config.head_hidden_dim, config.head_bottleneck_dim,
                                  num_layers=config.part_head_layers)
        self.teacher_encoder = self._build_encoder()
        self.teacher_controller = copy.deepcopy(self.controller)
        self.teacher_head = copy.deepcopy(self.head)
        self.distillation = SelfDistillationLoss(config.head_out_dim, config.student_temperature,
                                                 config.center_momentum)
        self.register_buffer("teacher_temperature_now", torch.tensor(float(warmup_then_constant(
            0, config.teacher_temperature_warmup_steps, config.teacher_temperature_warmup,
            config.teacher_temperature))))
        self.apply_frozen_parameters_()
        self.post_init()

    def _pairs(self):
        return ((self.teacher_encoder, self.encoder), (self.teacher_controller, self.controller),
                (self.teacher_head, self.head))

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_controller.", "teacher_head.")

    def _init_weights(self, module):
        super()._init_weights(module)
        if module is self:
            init_teacher_from_student_(*self._pairs())

    # -- lambda ----------------------------------------------------------------------------------------
    def _semantic_weight(self, semantic_weight, batch: int, device) -> torch.Tensor:
        if semantic_weight is None:
            semantic_weight = self.config.semantic_weight
        lam = torch.as_tensor(semantic_weight, dtype=torch.float32, device=device).reshape(-1)
        if lam.numel() == 1:
            lam = lam.expand(batch)
        if lam.numel() != batch:
            raise ValueError(f"semantic_weight must be a scalar or one value per image ({batch}), got {lam.numel()}")
        if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()) or bool((lam > 1).any()):
            raise ValueError("semantic_weight (lambda) must lie in [0, 1]")
        return lam

    def sample_semantic_weight(self, batch: int, device) -> torch.Tensor:
        """Training lambda per image: 0 or 1 with probability 1/2 (official) or U[0, 1]."""
        if self.config.semantic_weight_sampling == "uniform":
            return torch.rand(batch, device=device)
        return torch.randint(0, 2, (batch,), device=device).float()

    def encode_view(self, pixel_values: torch.Tensor, semantic_weight: torch.Tensor, teacher: bool = False):
        encoder, controller = ((self.teacher_encoder, self.teacher_controller) if teacher
                               else (self.encoder, self.controller))
        return controlled_swin_forward(encoder, controller, pixel_values, semantic_weight)

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.Tensor, pooling: Optional[str] = None,
                           semantic_weight: Union[None, float, torch.Tensor] = None) -> torch.Tensor:
        """Teacher features `[B, C]` (Swin global average pool) at lambda = `semantic_weight` (scalar or `[B]` in
        [0, 1]; default `config.semantic_weight`): 0 = appearance, 1 = semantics."""
        self.check_pixel_values(pixel_values)
        lam = self._semantic_weight(semantic_weight, pixel_values.shape[0], pixel_values.device)
        return self.encode_view(pixel_values, lam, teacher=True)[0]

    # -- export ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def encoder_at_semantic_weight(self, semantic_weight: Optional[float] = None, attribute: Optional[str] = None):
        """A stock Swin (deep copy) whose patch-merging layers absorb the controller at a fixed lambda, so that
        `swin(pixel_values).pooler_output == get_image_features(pixel_values, semantic_weight=lambda)`.

        Swin's merging is `W (gamma * n + beta)` (LayerNorm, then a bias-free reduction `W`); the modulation
        `a * (.) + c` after it becomes `W' = diag(a) W` and `beta' = beta + pinv(W') c` (exact whenever `W'` has full
        row rank, which is checked). The exported model equals this one on inputs whose last-stage map is larger than
        the window (smaller ones trigger transformers' window shrinking, see `_fixed_windows`)."""
        attribute = attribute or self.export_attribute
        lam = float(self.config.semantic_weight if semantic_weight is None else semantic_weight)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"semantic_weight must lie in [0, 1], got {lam}")
        swin = copy.deepcopy(getattr(self, attribute))
        controller = self.teacher_controller if attribute == "teacher_encoder" else self.controller
        lam_t = torch.tensor([lam], device=next(controller.parameters()).device)
        j = 0
        for stage in swin.encoder.layers:
            if stage.downsample is None:
                continue
            scale, shift = controller.modulation(j, lam_t)
            a, c = scale[0].double(), shift[0].double()
            merge = stage.downsample
            weight = merge.reduction.weight.double()
            new_weight = a.unsqueeze(1) * weight
            beta = merge.norm.bias.double()
            new_beta = beta + torch.linalg.pinv(new_weight) @ c
            residual = (new_weight @ new_beta - (new_weight @ beta + c)).abs().max()
            if float(residual) > 1e-6 * (1.0 + float(c.abs().max())):
                raise ValueError("cannot fold the semantic controller into this Swin's patch merging (rank-"
                                 f"deficient reduction, residual {float(residual):.2e}); export the base encoder "
                                 "with export_encoder(..., semantic_weight='none')")
            merge.reduction.weight.copy_(new_weight.to(merge.reduction.weight.dtype))
            merge.norm.bias.copy_(new_beta.to(merge.norm.bias.dtype))
            j += 1
        return swin

    def export_encoder(self, save_directory: Union[str, os.PathLike], image_processor=None,
                       attribute: Optional[str] = None, push_to_hub: bool = False,
                       semantic_weight: Union[None, float, str] = None, **push_kwargs) -> str:
        """A vanilla `SwinModel` equal to the teacher at a fixed lambda (default `config.semantic_weight`; the
        controller folded into patch merging, see `encoder_at_semantic_weight`). `semantic_weight="none"` writes the
        unconditioned base encoder instead (no lambda; not what training optimised)."""
        attribute = attribute or self.export_attribute
        if semantic_weight == "none":
            swin, lam = getattr(self, attribute), None
        else:
            lam = float(self.config.semantic_weight if semantic_weight is None else semantic_weight)
            swin = self.encoder_at_semantic_weight(lam, attribute)
        self.__dict__["_export_swin"] = swin
        try:
            out = super().export_encoder(save_directory, image_processor=image_processor, attribute="_export_swin",
                                         push_to_hub=push_to_hub, **push_kwargs)
        finally:
            self.__dict__.pop("_export_swin", None)
        meta_path = os.path.join(save_directory, "hf_ssl_export.json")
        meta = json.load(open(meta_path))
        meta.update(exported_attribute=attribute, semantic_weight=lam,
                    note=("semantic controller folded into patch merging at this lambda" if lam is not None
                          else "base encoder without the semantic controller"))
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=2)
        return out

    # -- training ---------------------------------------------------------------------------------------
    def _check_views(self, pixel_values):
        views = list(pixel_values) if isinstance(pixel_values, (list, tuple)) else [pixel_values]
        if not views:
            raise ValueError("pixel_values is empty: pass a list of crops [B, C, H, W] (global crops first)")
        for i, v in enumerate(views):
            self.check_pixel_values(v, f"pixel_values[{i}]")
            if v.shape[0] != views[0].shape[0]:
                raise ValueError(f"all crops need the same batch size: pixel_values[{i}] has {v.shape[0]}, "
                                 f"pixel_values[0] has {views[0].shape[0]}")
        return views

    def part_erased_views(self, globals_: torch.Tensor, labels: torch.Tensor, grid, part: int) -> torch.Tensor:
        """Official extra student views: the (normalised) pixels of the tokens labelled `part` are set to 0."""
        keep = (labels != part).float().reshape(-1, 1, grid[0], grid[1])
        keep = F.interpolate(keep, size=globals_.shape[-2:], mode="nearest")
        return globals_ * keep.to(globals_.dtype)

    def forward(self, pixel_values, semantic_weight: Optional[torch.Tensor] = None, return_dict: bool = True,
                **kwargs):
        """
        Args:
            pixel_values: list of crops `[B, C, h, w]` (first `augmentation["num_global"]` are global; the global crops
                must share one size), or one tensor (then only `embeddings` are returned).
            semantic_weight: optional lambda `[B]` for this step (default: sampled per image as configured).

        Returns:
            `SSLOutput(loss, embeddings, metrics)`; `embeddings` = student pooled features of the first crop.
        """
        views = self._check_views(pixel_values)
        b, device = views[0].shape[0], views[0].device
        lam = (self._semantic_weight(semantic_weight, b, device) if semantic_weight is not None
               else self.sample_semantic_weight(b, device))
        if len(views) < 2:
            pooled = self.encode_view(views[0], lam)[0]
            out = SSLOutput(loss=None, embeddings=pooled.detach(), metrics={})
            return out if return_dict else out.to_tuple()
        cfg = self.config
        n_global = min(max(int(cfg.augmentation.get("num_global", 2)), 1), len(views))
        if len({tuple(v.shape[-2:]) for v in views[:n_global]}) != 1:
            raise ValueError("the global crops must all have the same size")
        globals_ = torch.cat(views[:n_global])  # [G*B, C, H, W]
        lam_g = lam.repeat(n_global)
        with torch.no_grad():
            ones = torch.ones_like(lam_g)
            _, sem_tokens, grid = self.encode_view(globals_, ones, teacher=True)  # lambda = 1 for the labels
            labels, valid = semantic_part_labels(sem_tokens, grid, cfg.num_parts, cfg.foreground_min_fraction,
                                                 cfg.kmeans_iterations)
            t_pooled = self.encode_view(globals_, lam_g, teacher=True)[0]
            teacher_logits = list(self.teacher_head(t_pooled).chunk(n_global))
        s_pooled_g, s_tokens_g, s_grid = self.encode_view(globals_, lam_g)
        local = views[n_global:]
        student_pooled = list(s_pooled_g.chunk(n_global))
        if local:  # same-size local crops in one call (lambda repeated per crop), as the globals above
            runs = map_views_batched(lambda x: self.encode_view(x, lam.repeat(x.shape[0] // b))[0], local)
            student_pooled += runs
        student_logits = [self.head(p) for p in student_pooled]
        dino_loss = self.distillation(student_logits, teacher_logits, float(self.teacher_temperature_now))

        idx = valid.nonzero().flatten()
        metrics = {"dino_loss": dino_loss.detach(), "foreground_fraction": valid.float().mean()}
        if len(idx):
            tokens = [s_tokens_g[idx]]
            token_labels = [labels[idx]]
            weights = [lam_g[idx]]
            if cfg.mask_part_views:
                part = int(torch.randint(1, cfg.num_parts + 1, (1,)))
                erased = self.part_erased_views(globals_[idx], labels[idx], grid, part)
                tokens.append(self.encode_view(erased, lam_g[idx])[1])
                token_labels.append(labels[idx])
                weights.append(lam_g[idx])
            logits = self.part_head(torch.cat(tokens))
            token_labels = torch.cat(token_labels)
            semantic_loss = cfg.semantic_loss_weight * weighted_token_cross_entropy(logits, token_labels,
                                                                                    torch.cat(weights))
            metrics["semantic_accuracy"] = (logits.detach().argmax(-1) == token_labels).float().mean()
        else:  # no image with enough foreground: keep the head in the graph with a zero loss
            semantic_loss = 0.0 * self.part_head(s_tokens_g[:1]).sum()
        metrics["semantic_loss"] = semantic_loss.detach()
        metrics["teacher_temperature"] = self.teacher_temperature_now.detach().clone()
        metrics["semantic_weight_mean"] = lam.mean().detach()
        output = SSLOutput(loss=dino_loss + semantic_loss, embeddings=student_pooled[0].detach(),
                           logits=student_logits[0], metrics=metrics)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA teacher (0.996 -> 1, half-cosine) for encoder, controller and DINO head; teacher temperature warm-up."""
        m = cosine_schedule(step, max_steps, self.config.teacher_momentum, 1.0)
        for teacher, student in self._pairs():
            ema_update_(teacher, student, m)
        self.teacher_temperature_now.fill_(warmup_then_constant(step, self.config.teacher_temperature_warmup_steps,
                                                                self.config.teacher_temperature_warmup,
                                                                self.config.teacher_temperature))


__all__ = ["SOLIDERForSelfSupervisedPretraining", "SemanticController", "controlled_swin_forward",
           "semantic_part_labels", "weighted_token_cross_entropy"]
