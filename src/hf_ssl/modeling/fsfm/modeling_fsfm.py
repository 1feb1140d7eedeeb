"""FSFM model: CRFR-P masked image modeling + instance-discrimination self-distillation with an EMA teacher.

One step (B images, N patches, CRFR-P masks with M = round(N * mask_ratio) hidden patches, one facial region
fully covered per image):

    student:  visible patches --encoder--> Z --rep decoder (mask tokens, sin-cos pos)--> R [B, 1+N, D]
              mean(R) --projector--> --predictor--> p (L2-normalised)
              Z --pixel decoder (mask tokens, sin-cos pos)--> patch predictions [B, N, P]
    teacher (EMA, no gradient): full image --encoder--> --rep decoder--> mean --projector--> z (L2-normalised)
    loss = L_rec(masked patches) + region_loss_weight * L_rec(covered region) + id_loss_weight * L_id(p, z)
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init

from ..backbones import patchify, pool_vit_tokens, init_sincos_position_embeddings_, vit_forward_visible, vit_grid
from ..base import SSLPreTrainedModel
from ..heads import MaskedAutoencoderDecoder, MLPHead
from ..losses import normalized_pixel_targets
from ..masking import mask_to_index
from ..momentum import cosine_schedule, ema_update_
from ..outputs import SSLOutput
from .configuration_fsfm import FSFMConfig
from .masking_fsfm import crfrp_mask, grid_region_groups, grid_region_parser, region_membership


def byol_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> MLPHead:
    """Official `BYOLMLP`: Linear - LayerNorm - ReLU - Linear."""
    return MLPHead(in_dim, hidden_dim, out_dim, num_layers=2, batch_norm=False, layer_norm=True)


class FSFMForSelfSupervisedPretraining(SSLPreTrainedModel):
    """FSFM pretraining model. See the package docstring (`hf_ssl.modeling.fsfm`) for the method and deviations.

    Attributes:
        encoder / rep_decoder / projector / predictor / decoder: the online (student) branch.
        teacher_encoder / teacher_rep_decoder / teacher_projector: EMA copies (frozen, no predictor).
    """

    config_class = FSFMConfig

    def __init__(self, config: FSFMConfig):
        super().__init__(config)
        bb = config.backbone_config
        enc = bb.hidden_size
        rep = config.resolved_rep_decoder_hidden_size
        patch = bb.patch_size
        self.encoder = self._build_encoder()
        self.rep_decoder = self._build_rep_decoder()
        self.projector = byol_mlp(enc, config.projection_hidden_dim, config.projection_dim)
        self.predictor = byol_mlp(config.projection_dim, config.projection_hidden_dim, config.projection_dim)
        self.decoder = MaskedAutoencoderDecoder(
            in_dim=enc, dim=config.decoder_hidden_size, depth=config.decoder_depth,
            num_heads=config.decoder_num_heads, out_dim=patch * patch * config.num_channels,
            mlp_ratio=config.decoder_mlp_ratio, num_prefix_tokens=1, pos_embed="sincos")
        self.teacher_encoder = self._build_encoder()
        self.teacher_rep_decoder = self._build_rep_decoder()
        self.teacher_projector = byol_mlp(enc, config.projection_hidden_dim, config.projection_dim)
        del rep
        self.apply_frozen_parameters_()
        self.__dict__["_region_parser"] = None  # plain attribute: never saved
        self.__dict__["_momentum"] = config.teacher_momentum
        self.post_init()
        # the teacher starts as a copy of the student (after every module has been initialised; a checkpoint
        # loaded by from_pretrained overwrites both afterwards)
        with torch.no_grad():
            for teacher, student in self.teacher_pairs():
                for t, s in zip(teacher.parameters(), student.parameters()):
                    if t.device.type != "meta":
                        t.copy_(s)

    def _build_rep_decoder(self) -> MaskedAutoencoderDecoder:
        cfg = self.config
        enc = cfg.backbone_config.hidden_size
        # official rep decoder: embed to its width, mask tokens, sin-cos positions, blocks, norm, linear back to the
        # encoder width; the CLS token is kept and averaged with the patch tokens
        return MaskedAutoencoderDecoder(
            in_dim=enc, dim=cfg.resolved_rep_decoder_hidden_size, depth=cfg.rep_decoder_depth,
            num_heads=cfg.rep_decoder_num_heads, out_dim=enc, mlp_ratio=cfg.decoder_mlp_ratio,
            num_prefix_tokens=1, pos_embed="sincos")

    def frozen_parameter_prefixes(self) -> tuple:
        return ("teacher_encoder.", "teacher_rep_decoder.", "teacher_projector.",
                "encoder.embeddings.position_embeddings", "teacher_encoder.embeddings.position_embeddings")

    def teacher_pairs(self):
        return ((self.teacher_encoder, self.encoder), (self.teacher_rep_decoder, self.rep_decoder),
                (self.teacher_projector, self.projector))

    # -- initialisation (official: xavier-uniform linears, LN 1/0, normal(0.02) CLS/mask tokens, sin-cos pos) -----
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, nn.Linear):
            init.xavier_uniform_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        if isinstance(module, MaskedAutoencoderDecoder):
            init.normal_(module.mask_token, std=0.02)
        if module is self:
            for encoder in (self.encoder, self.teacher_encoder):
                init_sincos_position_embeddings_(encoder)

    # -- regions & masks -----------------------------------------------------------------------------------------
    def set_region_parser(self, parser: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> None:
        """Register `region_parser(pixel_values [B, C, H, W]) -> [B, H, W]` face-parsing label map (official 11
        labels), used when `forward` gets neither masks nor `parsing_map`/`region_ids`. Not saved."""
        if parser is not None and not callable(parser):
            raise TypeError("region_parser must be callable")
        self.__dict__["_region_parser"] = parser

    def region_groups(self):
        if self.config.region_source == "grid":
            groups = grid_region_groups(tuple(self.config.grid_regions))
            return groups, list(range(len(groups)))
        return self.config.region_groups, [int(c) for c in self.config.candidate_region_groups]

    def generate_masks(self, pixel_values: torch.Tensor, parsing_map=None, region_ids=None,
                       rng: Optional[np.random.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """CRFR-P masks `[B, N]` and covered-region masks `[B, N]` for a batch. As in the official collate function
        one candidate region group is drawn per batch (images where it is absent draw their own)."""
        rng = rng if rng is not None else np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,)).item()))
        b = pixel_values.shape[0]
        h, w = pixel_values.shape[-2:]
        patch = self.config.backbone_config.patch_size
        grid = (h // patch, w // patch)
        groups, candidates = self.region_groups()
        if region_ids is not None:
            maps, per_pixel = torch.as_tensor(region_ids).reshape(b, -1).cpu().numpy(), False
        elif parsing_map is not None:
            maps, per_pixel = torch.as_tensor(parsing_map).reshape(b, h, w).cpu().numpy(), True
        elif self.config.region_source == "grid":
            maps, per_pixel = np.broadcast_to(grid_region_parser(h, w, tuple(self.config.grid_regions)), (b, h, w)), True
        elif self._region_parser is not None:
            with torch.no_grad():
                maps, per_pixel = torch.as_tensor(self._region_parser(pixel_values)).reshape(b, h, w).cpu().numpy(), True
        else:
            raise ValueError("region_source='face_parsing' needs `parsing_map` [B, H, W] or `region_ids` [B, N] in the "
                             "batch, a parser registered with `model.set_region_parser(fn)`, or precomputed "
                             "`bool_masked_pos` + `region_mask` (or use region_source='grid').")
        batch_region = int(rng.choice(candidates))
        masks, regions = [], []
        for i in range(b):
            membership = region_membership(maps[i], groups, patch_size=patch if per_pixel else None, grid=grid)
            region = batch_region if membership[batch_region].any() else None
            m, r, _ = crfrp_mask(membership, self.config.mask_ratio, candidates, rng=rng, region=region)
            masks.append(m)
            regions.append(r)
        device = pixel_values.device
        return torch.from_numpy(np.stack(masks)).to(device), torch.from_numpy(np.stack(regions)).to(device)

    # -- branches ---------------------------------------------------------------------------------------------------
    def _represent(self, encoder, rep_decoder, projector, pixel_values, visible_index, n, grid):
        tokens = vit_forward_visible(encoder, pixel_values, visible_index)
        rep = rep_decoder(tokens, visible_index, n, grid)  # [B, 1 + N, D] (CLS kept, as officially)
        return tokens, projector(rep.mean(dim=1))

    @torch.no_grad()
    def teacher_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Teacher branch on the FULL image: L2-normalised projection `[B, projection_dim]` (stop-gradient)."""
        b = pixel_values.shape[0]
        grid = self._grid(pixel_values)
        n = grid[0] * grid[1]
        every = torch.arange(n, device=pixel_values.device).unsqueeze(0).expand(b, -1)
        _, z = self._represent(self.teacher_encoder, self.teacher_rep_decoder, self.teacher_projector,
                               pixel_values, every, n, grid)
        return F.normalize(z.float(), dim=-1).detach()

    def _grid(self, pixel_values: torch.Tensor) -> Tuple[int, int]:
        patch = self.config.backbone_config.patch_size
        h, w = pixel_values.shape[-2:]
        if h % patch or w % patch:
            raise ValueError(f"pixel_values size {(h, w)} is not divisible by the ViT patch size {patch}")
        return vit_grid(self.encoder.config, (h, w))

    def id_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Per-sample loss between L2-normalised student predictions and teacher projections (no cross-batch
        term): SimSiam `-0.5 * cos` (official default) or BYOL `2 - 2 cos`, averaged over the batch."""
        cos = (student * teacher).sum(dim=-1)
        return (-0.5 * cos).mean() if self.config.id_loss == "simsiam" else (2 - 2 * cos).mean()

    # -- forward ----------------------------------------------------------------------------------------------------
    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: Optional[torch.Tensor] = None,
                region_mask: Optional[torch.Tensor] = None, parsing_map: Optional[torch.Tensor] = None,
                region_ids: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        """
        Args:
            pixel_values: `[B, C, H, W]` normalised face crops.
            bool_masked_pos: `[B, N]` CRFR-P masks (True = hidden), e.g. from the `fsfm` view policy; with it
                `region_mask` `[B, N]` (the fully covered region) is required when `region_loss_weight > 0`.
            parsing_map / region_ids: per-pixel `[B, H, W]` face-parsing labels or per-patch ids `[B, N]`, used to
                draw CRFR-P masks when `bool_masked_pos` is omitted.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `embeddings` = pooled visible-token encoding (detached),
            `logits` = pixel predictions for all patches `[B, N, patch**2 * C]`.
        """
        self.check_pixel_values(pixel_values)
        b = pixel_values.shape[0]
        grid = self._grid(pixel_values)
        n = grid[0] * grid[1]
        cfg = self.config
        if bool_masked_pos is None:
            mask, region = self.generate_masks(pixel_values, parsing_map, region_ids)
        else:
            mask = torch.as_tensor(bool_masked_pos, device=pixel_values.device).reshape(b, -1).bool()
            if mask.shape[1] != n:
                raise ValueError(f"bool_masked_pos must have shape [batch, num_patches] = {[b, n]}")
            if region_mask is None:
                if cfg.region_loss_weight > 0:
                    raise ValueError("bool_masked_pos given without region_mask (the fully covered facial region "
                                     "[batch, num_patches]) while region_loss_weight > 0")
                region = torch.zeros_like(mask)
            else:
                region = torch.as_tensor(region_mask, device=pixel_values.device).reshape(b, -1).bool()
                if region.shape != mask.shape:
                    raise ValueError("region_mask must have the shape of bool_masked_pos")
                if bool((region & ~mask).any()):
                    raise ValueError("region_mask must be covered by bool_masked_pos (CRFR-P masks the whole region)")
        counts = mask.sum(1)
        if int(counts.min()) == 0 or int(counts.max()) == n:
            raise ValueError(f"bool_masked_pos must mask at least one and at most {n - 1} of {n} patches")
        visible_index, _ = mask_to_index(mask)  # raises for uneven counts

        # student
        tokens, proj = self._represent(self.encoder, self.rep_decoder, self.projector, pixel_values, visible_index,
                                       n, grid)
        student = F.normalize(self.predictor(proj).float(), dim=-1)
        pred = self.decoder(tokens, visible_index, n, grid)[:, 1:]
        # teacher (full image, EMA, stop-gradient)
        teacher = self.teacher_features(pixel_values)

        target = patchify(pixel_values.detach().float(), cfg.backbone_config.patch_size)
        if cfg.norm_pix_loss:
            target = normalized_pixel_targets(target)
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)  # [B, N]
        m = mask.float()
        rec_all = (per_patch * m).sum() / m.sum()
        r = region.float()
        rec_region = (per_patch * r).sum() / r.sum() if bool(region.any()) else per_patch.new_zeros(())
        id_loss = self.id_loss(student, teacher)
        loss = rec_all + cfg.region_loss_weight * rec_region + cfg.id_loss_weight * id_loss

        output = SSLOutput(
            loss=loss,
            embeddings=pool_vit_tokens(tokens, cfg.feature_pooling).detach(),
            logits=pred,
            metrics={"reconstruction_loss": rec_all.detach(), "region_reconstruction_loss": rec_region.detach(),
                     "id_loss": id_loss.detach(), "teacher_momentum": torch.tensor(float(self._momentum))},
        )
        return output if return_dict else output.to_tuple()

    def on_step_end(self, step: int, max_steps: int) -> None:
        """EMA update of the teacher with the cosine momentum schedule 0.996 -> 1 (official `cosine_scheduler`)."""
        momentum = cosine_schedule(step, max_steps, self.config.teacher_momentum, 1.0)
        for teacher, student in self.teacher_pairs():
            ema_update_(teacher, student, momentum)
        self.__dict__["_momentum"] = momentum


__all__ = ["FSFMForSelfSupervisedPretraining", "byol_mlp"]
