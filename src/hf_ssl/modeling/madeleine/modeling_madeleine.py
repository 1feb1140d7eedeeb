"""MADELEINE model: a patch encoder, a multi-head gated-attention MIL slide encoder shared by all stains, a symmetric
cross-stain InfoNCE on slide embeddings (DDP-gathered) and a graph-optimal-transport loss on patch tokens."""

from __future__ import annotations

from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import backbone_family, build_backbone, check_pixel_values, encode
from ..base import SSLPreTrainedModel
from ..losses import symmetric_contrastive_loss, world_size
from ..outputs import SSLOutput
from .configuration_madeleine import MadeleineConfig
from .optimal_transport import graph_optimal_transport


class GatedAttention(nn.Module):
    """One ABMIL attention head (Ilse et al. 2018, official `BatchedABMIL`): `w^T (tanh(V h) * sigmoid(U h))`."""

    def __init__(self, dim: int, hidden: int = 512, dropout: float = 0.25):
        super().__init__()
        self.attention_a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, N, dim] -> raw scores [B, N]
        return self.attention_c(self.attention_a(x) * self.attention_b(x)).squeeze(-1)


class MultiHeadABMIL(nn.Module):
    """Official `ABMILEmbedder` + MADELEINE heads: a shared pre-attention MLP maps each patch feature to
    `heads x hidden` values (split as `(hidden, heads)`, einops `b t (e c) -> b t e c`), head h pools its slice with
    its own gated attention (softmax over the slide's patches, padded patches excluded); the pooled `[hidden, heads]`
    is flattened and projected to the slide embedding `[hidden]`; the patch tokens are projected to `token_dim` for the
    local (GOT) loss."""

    def __init__(self, in_dim: int, hidden: int, heads: int, token_dim: int, attention_dropout: float = 0.25,
                 feature_dropout: float = 0.1):
        super().__init__()
        self.heads, self.hidden = heads, hidden
        self.pre_attn = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(feature_dropout),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Dropout(feature_dropout),
            nn.Linear(hidden, hidden * heads), nn.LayerNorm(hidden * heads), nn.GELU(), nn.Dropout(feature_dropout))
        self.attn = nn.ModuleList([GatedAttention(hidden, 512, attention_dropout) for _ in range(heads)])
        self.projector = nn.Linear(hidden * heads, hidden)
        self.token_projector = nn.Linear(hidden * heads, token_dim)

    def attention(self, features: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """Per-head patch embeddings `[B, N, hidden, heads]` and attention weights `[B, N, heads]` (softmax over N)."""
        b, n, _ = features.shape
        emb = self.pre_attn(features).reshape(b, n, self.hidden, self.heads)
        scores = torch.stack([head(emb[..., h]) for h, head in enumerate(self.attn)], dim=-1)  # [B, N, heads]
        if mask is not None:
            scores = scores.masked_fill(~mask.bool().unsqueeze(-1), float("-inf"))
        return emb, F.softmax(scores.float(), dim=1).to(emb.dtype)

    def forward(self, features: torch.Tensor, mask: Optional[torch.Tensor] = None):
        """`features` `[B, N, in_dim]`, optional `mask` `[B, N]` (True = real patch) -> slide `[B, hidden]`, tokens
        `[B, N, token_dim]`, attention `[B, N, heads]`."""
        emb, weights = self.attention(features, mask)
        pooled = (emb * weights.unsqueeze(2)).sum(dim=1)  # [B, hidden, heads]
        slide = self.projector(pooled.flatten(1))
        tokens = self.token_projector(emb.flatten(2))
        return slide, tokens, weights


class MadeleineForSelfSupervisedPretraining(SSLPreTrainedModel):
    config_class = MadeleineConfig
    input_modalities = ("image", "patch_features")

    def __init__(self, config: MadeleineConfig):
        super().__init__(config)
        self.encoder = build_backbone(config.backbone_config)
        from ..backbones import feature_dim

        self.patch_dim = feature_dim(config.backbone_config)
        extra = config.stain_encoding_dim if config.add_stain_encoding else 0
        self.stain_embedding = nn.Embedding(len(config.stains), config.stain_encoding_dim) \
            if config.add_stain_encoding else None
        self.slide_encoder = MultiHeadABMIL(self.patch_dim + extra, config.wsi_hidden_dim, config.num_heads,
                                            config.token_dim, config.attention_dropout, config.feature_dropout)
        self.post_init()
        self.apply_frozen_parameters_()

    def frozen_parameter_prefixes(self) -> tuple:
        extra = () if self.config.train_patch_encoder else ("encoder.",)
        return super().frozen_parameter_prefixes() + extra

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.config.train_patch_encoder:
            self.encoder.eval()  # a frozen feature extractor (official: features extracted once, offline)
        return self

    # -- patches ---------------------------------------------------------------------------------
    def tile(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` -> `[B, N, C, t, t]` row-major tiles of side `tile_size`."""
        t = self.config.tile_size
        b, c, h, w = pixel_values.shape
        if h % t or w % t:
            raise ValueError(f"slide images must have sides that are multiples of tile_size={t}, got {(h, w)}")
        x = pixel_values.reshape(b, c, h // t, t, w // t, t).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // t) * (w // t), c, t, t)

    def encode_patches(self, tiles: torch.Tensor) -> torch.Tensor:
        """Pooled patch-encoder features of `[M, C, t, t]` tiles -> `[M, D]` (no gradient when frozen)."""
        if self.config.train_patch_encoder and self.training:
            return encode(self.encoder, tiles, self.config.feature_pooling)
        with torch.no_grad():
            return encode(self.encoder, tiles, self.config.feature_pooling)

    def slide_patch_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`[B, C, H, W]` slide image -> patch features `[B, N, D]`."""
        check_pixel_values(pixel_values, self.config.num_channels)
        tiles = self.tile(pixel_values)
        b, n = tiles.shape[:2]
        return self.encode_patches(tiles.flatten(0, 1)).reshape(b, n, -1)

    def embed_slides(self, patch_features: torch.Tensor, stain_index: int = 0,
                     mask: Optional[torch.Tensor] = None):
        """Slide embeddings `[B, hidden]`, tokens `[B, N, token_dim]`, attention `[B, N, heads]` of one stain."""
        if patch_features.dim() != 3 or patch_features.shape[-1] != self.patch_dim:
            raise ValueError(f"patch_features must be [batch, patches, {self.patch_dim}], got "
                             f"{tuple(patch_features.shape)}")
        x = patch_features
        if self.stain_embedding is not None:
            code = self.stain_embedding.weight[stain_index].to(x.dtype)
            x = torch.cat([x, code.expand(*x.shape[:2], -1)], dim=-1)
        return self.slide_encoder(x, mask)

    # -- features --------------------------------------------------------------------------------
    @torch.no_grad()
    def get_slide_features(self, pixel_values: Optional[torch.Tensor] = None,
                           patch_features: Optional[torch.Tensor] = None,
                           patch_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """H&E slide embedding `[B, hidden]` of slide images `[B, C, H, W]` or pre-extracted `patch_features`
        `[B, N, D]` (with optional `patch_mask` `[B, N]`, True = real patch)."""
        if patch_features is None:
            patch_features = self.slide_patch_features(pixel_values)
        return self.embed_slides(patch_features, 0, patch_mask)[0]

    @torch.no_grad()
    def get_patch_features(self, tiles: torch.Tensor) -> torch.Tensor:
        check_pixel_values(tiles, self.config.num_channels)
        return encode(self.encoder, tiles, self.config.feature_pooling)

    def get_input_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """A batch of single tiles (`[B, C, t, t]`, t = tile_size): their patch-encoder features (what the exported
        stock encoder computes); a batch of larger slide images: their H&E slide embeddings."""
        check_pixel_values(inputs, self.config.num_channels)
        t = self.config.tile_size
        if tuple(inputs.shape[-2:]) == (t, t):
            return self.get_patch_features(inputs)
        return self.get_slide_features(inputs)

    def get_image_features(self, pixel_values: torch.Tensor, pooling=None) -> torch.Tensor:
        """An image is a (small) H&E slide: its slide embedding (tile-sized inputs: patch features)."""
        return self.get_input_features(pixel_values)

    def export_check_input(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The exported (stock) patch encoder's input for slide images: their tiles `[B * N, C, t, t]`."""
        return self.tile(pixel_values).flatten(0, 1)

    # -- forward ---------------------------------------------------------------------------------
    def _stain_features(self, pixel_values, patch_features, patch_mask):
        s = len(self.config.stains)
        if patch_features is not None:
            if patch_features.dim() != 4 or patch_features.shape[1] != s:
                raise ValueError(f"patch_features must be [batch, {s} stains, patches, dim], got "
                                 f"{tuple(patch_features.shape)}")
            feats = [patch_features[:, i] for i in range(s)]
            masks = [None if patch_mask is None else patch_mask[:, i] for i in range(s)]
            return feats, masks
        if isinstance(pixel_values, torch.Tensor):
            if pixel_values.dim() != 5:
                raise ValueError("pixel_values must be a list of per-stain [B, C, H, W] batches or a [B, stains, C, H, "
                                 f"W] tensor, got shape {tuple(pixel_values.shape)}")
            pixel_values = [pixel_values[:, i] for i in range(pixel_values.shape[1])]
        if not isinstance(pixel_values, (list, tuple)) or len(pixel_values) != s:
            got = len(pixel_values) if isinstance(pixel_values, (list, tuple)) else type(pixel_values).__name__
            raise ValueError(f"MADELEINE needs one slide batch per stain {self.config.stains} (H&E first), got {got}")
        feats = [self.slide_patch_features(v) for v in pixel_values]
        n = feats[0].shape[1]
        if any(f.shape[1] != n for f in feats):
            raise ValueError("every stain's slide must give the same number of patches (same image size)")
        if self.training and n > self.config.max_tiles:  # official random subsample of n_subsamples patches
            keep = torch.randperm(n, device=feats[0].device)[: self.config.max_tiles]
            feats = [f[:, keep] for f in feats]
        return feats, [None] * s

    def forward(self, pixel_values: Union[None, torch.Tensor, List[torch.Tensor]] = None,
                patch_features: Optional[torch.Tensor] = None, patch_mask: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs) -> SSLOutput:
        cfg = self.config
        if pixel_values is None and patch_features is None:
            raise ValueError("MADELEINE needs pixel_values (one slide batch per stain) or patch_features")
        feats, masks = self._stain_features(pixel_values, patch_features, patch_mask)
        slides, tokens = [], []
        for i, (f, m) in enumerate(zip(feats, masks)):
            slide, tok, _ = self.embed_slides(f, i, m)
            slides.append(slide)
            tokens.append(tok)
        he_slide, he_tokens = slides[0], tokens[0]
        global_terms, local_terms = [], []
        for i in range(1, len(slides)):
            # symmetric InfoNCE between H&E and stain i (negatives: the other slides of the global batch)
            a, b = F.normalize(he_slide.float(), dim=-1), F.normalize(slides[i].float(), dim=-1)
            if cfg.symmetric:
                g, _ = symmetric_contrastive_loss(a, b, 1.0 / cfg.contrastive_temperature)
            else:
                from ..losses import all_gather, rank

                all_b = all_gather(b, with_grad=True)
                target = torch.arange(len(a), device=a.device) + rank() * len(a)
                g = F.cross_entropy(a @ all_b.t() / cfg.contrastive_temperature, target)
            global_terms.append(g)
            if cfg.local_loss_weight > 0:
                # GOT between the H&E and stain-i patch tokens, summed over the slides (official), scaled by the
                # world size so DDP's gradient averaging gives the sum over the global batch
                got = graph_optimal_transport(he_tokens.float(), tokens[i].float(), cfg.got_subsample)
                local_terms.append(got.sum() * world_size() * cfg.local_loss_weight)
        loss_global = torch.stack(global_terms).sum()
        loss_local = torch.stack(local_terms).sum() if local_terms else loss_global.new_zeros(())
        loss = loss_global + loss_local
        metrics = {"loss_global": loss_global.detach(), "loss_local": loss_local.detach()}
        out = SSLOutput(loss=loss, embeddings=he_slide.detach(), logits=None, metrics=metrics)
        return out if return_dict else out.to_tuple()


__all__ = ["MadeleineForSelfSupervisedPretraining", "MultiHeadABMIL", "GatedAttention"]
