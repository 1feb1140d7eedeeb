"""Joint image-volume intra-inter contrastive clustering (Nguyen et al., AAAI 2023).

Data flow of one training step (B volumes of D slices, two 3-D views; S slices with two 2-D views each):

    slices of each 3-D view [B*D, C, H, W] --2-D encoder (stock backbone)--> multi-scale / pooled features
        --linear--> slice tokens t [B, D, d] --+ 1-D sin-cos depth positions--> slice transformer --> u [B, D, d]
    volume embedding e = mean_D(u); z3 = h(e) / |h(e)| --prototypes_3d--> scores [B, K3]   (h = projection head
        with BatchNorm, `volume_projection=True`; identity in the official code)
        3-D (inter-volume) clustering: q_v = Sinkhorn(scores_v) over the global batch (no gradient),
        loss_3d = mean_v CE(q_v, softmax(scores_{v'} / tau)),  v' != v                       (swapped prediction)
    masked embedding prediction: t with the masked slices replaced by a mask token --slice transformer--> linear
        --> predicted slice FEATURES at the masked slices; loss_mask = MSE(pred, stop_grad(slice features)) over
        masked slices only (official `mask_swav_3D.py`: the targets are the 2-D encoder's features)
    2-D (intra-volume, slice-level) clustering: 2-D views of S slices --2-D encoder, pooled--> projection MLP -> L2
        --prototypes_2d--> swapped prediction with Sinkhorn codes over the global batch of slices
    joint (stage_steps=None): loss = weight_2d * loss_2d + weight_3d * loss_3d + weight_mask * loss_mask
    staged (stage_steps=[n_2d, n_mask], the official schedule): stage 1 = weight_2d * loss_2d; stage 2 =
        weight_mask * loss_mask with the 2-D encoder frozen; stage 3 = weight_3d * loss_3d
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import check_pixel_values, check_volume_values, encode, feature_dim
from ..base import SSLPreTrainedModel
from ..heads import MLPHead, Prototypes, TransformerBlock
from ..losses import sinkhorn_knopp
from ..outputs import SSLOutput
from .configuration_image_volume_clustering import ImageVolumeClusteringConfig


def sincos_pos_embed_1d(dim: int, length: int) -> torch.Tensor:
    """Fixed 1-D sine-cosine position table `[length, dim]` (Vaswani et al.), for slice positions along depth."""
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
    out = np.einsum("m,d->md", np.arange(length, dtype=np.float64), omega)
    return torch.from_numpy(np.concatenate([np.sin(out), np.cos(out)], axis=1)).float()


def swapped_prediction_loss(scores: Sequence[torch.Tensor], temperature: float, epsilon: float,
                            iterations: int) -> tuple:
    """SwAV's swapped prediction between two views: codes `q_v = Sinkhorn(scores_v)` (no gradient, equipartition
    over the batch of ALL processes), loss `mean_v -mean_i sum_k q_v[i, k] log softmax(scores_{1-v}[i] / tau)_k`.
    Returns `(loss, codes)`."""
    if len(scores) != 2:
        raise ValueError("swapped prediction needs exactly two views")
    codes = [sinkhorn_knopp(s.detach().float(), epsilon, iterations) for s in scores]
    loss = 0.0
    for v in range(2):
        log_p = F.log_softmax(scores[1 - v].float() / temperature, dim=1)
        loss = loss - (codes[v] * log_p).sum(dim=1).mean()
    return loss / 2, codes


def masked_embedding_loss(predictions: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted and target slice embeddings `[B, D, d]` at masked slices only (`mask
    [B, D]` True = masked), averaged over masked slices and channels; the targets carry no gradient."""
    m = mask.float().unsqueeze(-1)
    err = (predictions.float() - targets.detach().float()) ** 2
    return (err * m).sum() / (m.sum() * predictions.shape[-1]).clamp_min(1.0)


class SliceAggregator(nn.Module):
    """Transformer over the slice tokens of a volume: fixed 1-D sin-cos depth positions, pre-norm blocks, final
    LayerNorm. `forward(tokens [B, D, d]) -> [B, D, d]`."""

    def __init__(self, dim: int, depth: int, num_heads: int, intermediate_size: int):
        super().__init__()
        self.blocks = nn.ModuleList([TransformerBlock(dim, num_heads, mlp_ratio=intermediate_size / dim)
                                     for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        pos = sincos_pos_embed_1d(tokens.shape[-1], tokens.shape[1]).to(tokens.device, tokens.dtype)
        x = tokens + pos.unsqueeze(0)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class ImageVolumeClusteringForSelfSupervisedPretraining(SSLPreTrainedModel):
    """Joint 2-D / 3-D self-supervised model (see `hf_ssl.modeling.image_volume_clustering`).

    Attributes:
        encoder: the stock 2-D slice encoder (what `export_encoder` writes: a vanilla ResNetModel / ViTModel that
            takes slices `[N, C, H, W]`).
        slice_projection: linear map of (multi-scale) slice features to the aggregator width.
        aggregator: :class:`SliceAggregator`, slice tokens -> contextual slice tokens (volume embedding = mean).
        mask_token / mask_predictor: masked embedding prediction (a learned token, a linear decoder back to the
            slice-feature space).
        projection_head / prototypes_2d: slice-level SwAV head; volume_projection_head (None with
            `volume_projection=False`) / prototypes_3d: volume-level head and prototypes.
        optimizer_step: persistent buffer, optimizer steps taken (prototype freezing survives a resume).

    Main input `pixel_values_volumes [B, C, D, H, W]`; `get_input_features` on volumes = the aggregated volume
    embedding, on slices / images `[N, C, H, W]` = the 2-D encoder's pooled feature (the exported encoder's).
    """

    config_class = ImageVolumeClusteringConfig
    main_input_name = "pixel_values_volumes"
    input_modalities = ("image", "video")
    input_channel_dim = 1

    def __init__(self, config: ImageVolumeClusteringConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        bb = config.backbone_config
        self.slice_feature_dim = (sum(bb.hidden_sizes) if config.slice_features == "multiscale"
                                  else feature_dim(bb))
        d = config.aggregator_hidden_size
        self.slice_projection = nn.Linear(self.slice_feature_dim, d)
        self.aggregator = SliceAggregator(d, config.aggregator_layers, config.aggregator_num_heads,
                                          config.aggregator_intermediate_size)
        self.mask_token = nn.Parameter(torch.zeros(d))
        self.mask_predictor = nn.Linear(d, self.slice_feature_dim)
        # optional SwAV projection head on the volume embedding (config.volume_projection; the official code has none)
        self.volume_projection_head = (MLPHead(d, config.projection_hidden_dim, config.projection_dim,
                                               batch_norm=config.projection_batch_norm)
                                       if config.volume_projection else None)
        self.prototypes_3d = Prototypes(config.projection_dim if config.volume_projection else d,
                                        config.num_prototypes)
        self.projection_head = MLPHead(feature_dim(bb), config.projection_hidden_dim, config.projection_dim,
                                       batch_norm=config.projection_batch_norm)
        self.prototypes_2d = Prototypes(config.projection_dim, config.num_prototypes_2d)
        self.register_buffer("optimizer_step", torch.zeros((), dtype=torch.long))
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, Prototypes):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            init.copy_(module.weight, F.normalize(module.weight.detach().float(), dim=1).to(module.weight.dtype))
            return
        super()._init_weights(module)
        if module is self:
            init.normal_(self.mask_token, std=0.02)
            init.zeros_(self.optimizer_step)

    # -- schedule state ---------------------------------------------------------------------------------------
    def current_step(self) -> int:
        """Optimizer steps taken (host mirror of the `optimizer_step` buffer, `SSLPreTrainedModel.host_int`)."""
        return self.host_int("optimizer_step")

    def training_stage(self) -> int:
        """0 = joint training (`stage_steps=None`); 1 / 2 / 3 = the official stages (2-D clustering, masked embedding
        prediction on the frozen encoder, 3-D clustering), chosen by the optimizer step."""
        stages = self.config.stage_steps
        if stages is None:
            return 0
        step = self.current_step()
        if step < stages[0]:
            return 1
        return 2 if step < stages[0] + stages[1] else 3

    def stage_start(self) -> int:
        stages, stage = self.config.stage_steps, self.training_stage()
        return 0 if stage <= 1 else stages[0] if stage == 2 else stages[0] + stages[1]

    def prototypes_frozen(self) -> bool:
        """Prototypes get no gradient for `freeze_prototypes_steps` steps from the start of the (joint) run or of the
        stage that uses them."""
        return self.current_step() - self.stage_start() < self.config.freeze_prototypes_steps

    @torch.no_grad()
    def on_step_end(self, step: int, max_steps: int) -> None:
        """Record the step (prototype freezing) and put both prototype sets back on the unit sphere (the official
        code normalises them at the start of every iteration)."""
        self.set_host_int("optimizer_step", step)
        self.prototypes_2d.normalize_()
        self.prototypes_3d.normalize_()

    # -- inputs -----------------------------------------------------------------------------------------------
    @property
    def volume_size(self) -> tuple:
        return self.config.volume_depth, self.config.image_size, self.config.image_size

    def check_volumes(self, volumes, name="pixel_values_volumes"):
        check_volume_values(volumes, self.config.num_channels, name, size=self.volume_size)

    def export_check_input(self, volumes: torch.Tensor) -> torch.Tensor:
        """The exported stock 2-D encoder takes slices: `[B, C, D, H, W]` -> `[B * D, C, H, W]`."""
        b, c, d, h, w = volumes.shape
        return volumes.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)

    # -- building blocks --------------------------------------------------------------------------------------
    def slice_features(self, slices: torch.Tensor) -> torch.Tensor:
        """`[N, C, H, W]` -> `[N, F]`: the official multi-scale feature (every stage globally average-pooled and
        L2-normalised, concatenated) or the encoder's pooled feature."""
        if self.config.slice_features == "multiscale":
            out = self.encoder(pixel_values=slices, output_hidden_states=True)
            stages = out.hidden_states[-len(self.config.backbone_config.hidden_sizes):]
            return torch.cat([F.normalize(s.mean(dim=(2, 3)), dim=1) for s in stages], dim=1)
        return encode(self.encoder, slices, self.config.feature_pooling)

    def volume_slice_features(self, volumes: torch.Tensor, frozen: bool = False) -> torch.Tensor:
        """Volumes `[B, C, D, H, W]` -> slice features `[B, D, F]` (the 2-D encoder on every slice). `frozen` runs
        the encoder in eval mode without gradient (the official stage 2: `resnet.eval()`, not optimised)."""
        b, _, d, _, _ = volumes.shape
        slices = self.export_check_input(volumes)
        if not frozen:
            return self.slice_features(slices).view(b, d, -1)
        was_training = self.encoder.training
        self.encoder.eval()
        try:
            with torch.no_grad():
                return self.slice_features(slices).view(b, d, -1)
        finally:
            self.encoder.train(was_training)

    def slice_tokens(self, volumes: torch.Tensor) -> torch.Tensor:
        """Volumes `[B, C, D, H, W]` -> slice tokens `[B, D, d]` (2-D encoder on every slice, then projection)."""
        return self.slice_projection(self.volume_slice_features(volumes))

    def aggregate(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.aggregator(tokens)

    def volume_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.aggregate(tokens).mean(dim=1)

    def mask_tokens(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Replace the masked slice tokens (`mask [B, D]` True) by the learned mask token."""
        return torch.where(mask.unsqueeze(-1), self.mask_token.to(tokens.dtype).expand_as(tokens), tokens)

    def prototype_scores(self, prototypes: Prototypes, z: torch.Tensor) -> torch.Tensor:
        weight = prototypes.weight.detach() if self.prototypes_frozen() else prototypes.weight
        return z @ weight.t()

    def generate_slice_mask(self, batch_size: int, device=None) -> torch.Tensor:
        from .views_image_volume_clustering import num_masked_slices

        d = self.config.volume_depth
        k = num_masked_slices(d, self.config.mask_ratio)
        order = torch.rand(batch_size, d, device=device).argsort(dim=1)
        mask = torch.zeros(batch_size, d, dtype=torch.bool, device=device)
        return mask.scatter_(1, order[:, :k], True)

    def _check_slice_mask(self, mask, batch_size: int, device) -> torch.Tensor:
        if mask is None:
            return self.generate_slice_mask(batch_size, device)
        mask = torch.as_tensor(mask, device=device).bool()
        d = self.config.volume_depth
        if tuple(mask.shape) != (batch_size, d):
            raise ValueError(f"bool_masked_pos must be a slice mask [batch, volume_depth] = [{batch_size}, {d}], got "
                             f"{list(mask.shape)}")
        if bool((mask.sum(1) == 0).any()) or bool((mask.sum(1) == d).any()):
            raise ValueError("bool_masked_pos must mask at least one and leave at least one slice of every volume")
        return mask

    def _check_slices(self, slices, batch_size: int):
        if not isinstance(slices, (list, tuple)) or len(slices) != 2:
            raise ValueError("pixel_values must be two views of the sampled slices, [s1, s2] with each "
                             "[batch, slices, channels, height, width] (the 'image_volume_views' policy makes them)")
        out = []
        for i, s in enumerate(slices):
            if not torch.is_tensor(s) or s.dim() != 5 or s.shape[0] != batch_size:
                raise ValueError(f"pixel_values[{i}] must be [batch={batch_size}, slices, channels, height, width], "
                                 f"got {tuple(s.shape) if torch.is_tensor(s) else type(s).__name__}")
            check_pixel_values(s.flatten(0, 1), self.config.num_channels, f"pixel_values[{i}] slices")
            out.append(s.flatten(0, 1))
        if out[0].shape != out[1].shape:
            raise ValueError("both slice views need the same shape")
        return out

    # -- features -----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def get_input_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Volumes `[B, C, D, H, W]` -> the aggregated volume embedding `[B, d]` (mean of the slice transformer's
        outputs, no masking); slices / images `[N, C, H, W]` -> the 2-D encoder's pooled feature `[N, F]` (what the
        exported vanilla encoder gives)."""
        if torch.is_tensor(inputs) and inputs.dim() == 4:
            return self.get_image_features(inputs)
        self.check_volumes(inputs)
        return self.volume_embedding(self.slice_tokens(inputs))

    # -- forward ----------------------------------------------------------------------------------------------
    def forward(self, pixel_values_volumes=None, pixel_values=None, bool_masked_pos: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values_volumes: two 3-D views `[v1, v2]` of the volumes, each `[B, C, D, H, W]` (a single tensor
                only returns embeddings).
            pixel_values: two 2-D views `[s1, s2]` of S slices per volume, each `[B, S, C, H, W]` (needed when
                `weight_2d > 0`).
            bool_masked_pos: slice mask `[B, D]` (True = masked) shared by both 3-D views; drawn with
                `config.mask_ratio` when omitted.

        Returns:
            `SSLOutput(loss, embeddings = volume embeddings of view 1, logits = 3-D prototype scores of view 1,
            metrics)`; embeddings / logits are None in stages 1 and 2 of the staged schedule (no 3-D term).
        """
        cfg = self.config
        if pixel_values_volumes is None:
            raise ValueError("image_volume_clustering needs pixel_values_volumes: two views [v1, v2] of "
                             "[batch, channels, depth, height, width] volumes")
        if torch.is_tensor(pixel_values_volumes):
            self.check_volumes(pixel_values_volumes)
            emb = self.volume_embedding(self.slice_tokens(pixel_values_volumes))
            output = SSLOutput(embeddings=emb)
            return output if return_dict else output.to_tuple()
        if not isinstance(pixel_values_volumes, (list, tuple)) or len(pixel_values_volumes) != 2:
            raise ValueError("pixel_values_volumes must be two 3-D views [v1, v2]")
        for i, v in enumerate(pixel_values_volumes):
            self.check_volumes(v, f"pixel_values_volumes[{i}]")
        b = pixel_values_volumes[0].shape[0]
        if pixel_values_volumes[1].shape[0] != b:
            raise ValueError("both 3-D views need the same batch size")
        device = pixel_values_volumes[0].device
        mask = self._check_slice_mask(bool_masked_pos, b, device)

        stage = self.training_stage()
        use_2d = stage in (0, 1) and cfg.weight_2d > 0
        loss, metrics = 0.0, {}
        embeddings = scores3 = codes3 = None
        if stage != 1:
            volumes = torch.cat(list(pixel_values_volumes))
            feats = self.volume_slice_features(volumes, frozen=stage == 2)  # [2B, D, F]
            tokens = self.slice_projection(feats)  # [2B, D, d]
        if stage in (0, 3):
            embeddings = self.aggregate(tokens).mean(dim=1)
            head = self.volume_projection_head
            z3 = F.normalize(embeddings if head is None else head(embeddings), dim=1)
            scores3 = self.prototype_scores(self.prototypes_3d, z3)
            loss_3d, codes3 = swapped_prediction_loss(list(scores3.split(b)), cfg.swav_temperature,
                                                      cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)
            loss = loss + cfg.weight_3d * loss_3d
            metrics["loss_3d"] = loss_3d.detach()
        if stage in (0, 2):
            mask2 = torch.cat([mask, mask])
            pred = self.mask_predictor(self.aggregate(self.mask_tokens(tokens, mask2)))
            loss_mask = masked_embedding_loss(pred, feats, mask2)
            loss = loss + cfg.weight_mask * loss_mask
            metrics["loss_mask"] = loss_mask.detach()
        if use_2d:
            if pixel_values is None:
                raise ValueError("weight_2d > 0 needs pixel_values = [s1, s2], two 2-D views of sampled slices "
                                 "[batch, slices, channels, height, width]")
            s1, s2 = self._check_slices(pixel_values, b)
            feats2 = encode(self.encoder, torch.cat([s1, s2]), cfg.feature_pooling)
            z2 = F.normalize(self.projection_head(feats2), dim=1)
            scores2 = self.prototype_scores(self.prototypes_2d, z2)
            loss_2d, _ = swapped_prediction_loss(list(scores2.split(s1.shape[0])), cfg.swav_temperature,
                                                 cfg.sinkhorn_epsilon, cfg.sinkhorn_iterations)
            loss = loss + cfg.weight_2d * loss_2d
            metrics["loss_2d"] = loss_2d.detach()
        with torch.no_grad():
            if codes3 is not None:
                q = torch.cat(codes3)
                usage = torch.zeros(cfg.num_prototypes, device=q.device).scatter_(0, q.argmax(dim=1), 1.0)
                metrics["prototype_usage_3d"] = usage.mean()
            metrics["prototypes_frozen"] = torch.tensor(float(self.prototypes_frozen()), device=device)
            if stage:
                metrics["stage"] = torch.tensor(float(stage), device=device)
        output = SSLOutput(loss=loss, embeddings=None if embeddings is None else embeddings[:b].detach(),
                           logits=None if scores3 is None else scores3[:b], metrics=metrics)
        return output if return_dict else output.to_tuple()


__all__ = ["ImageVolumeClusteringForSelfSupervisedPretraining", "SliceAggregator", "swapped_prediction_loss",
           "masked_embedding_loss", "sincos_pos_embed_1d"]
