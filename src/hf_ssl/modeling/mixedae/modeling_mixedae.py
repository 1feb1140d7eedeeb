"""MixedAE model: groups of `1 / r` images are mixed patch-wise into one input (each source contributes exactly
`r * N` random positions, plus one CLS token per source), a ViT encodes the mixed sequence with homologous
attention (TopK or an oracle homology mask), a homologous contrastive loss pulls together output tokens of the same
source image, and an MAE decoder reconstructs every source image from its own tokens (its CLS first, mask tokens
elsewhere) with a normalized-pixel MSE on the positions the image did not contribute.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import _vit_layers, patchify, vit_embed_patches, vit_grid
from ..base import SSLPreTrainedModel
from ..heads import MaskedAutoencoderDecoder, MLPHead
from ..losses import normalized_pixel_targets
from ..masking import mask_to_index
from ..outputs import SSLOutput
from .configuration_mixedae import MixedAEConfig


def random_mixing_assignment(num_groups: int, num_patches: int, group_size: int, device=None,
                             generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """`[G, N]` source slot (0 .. group_size-1) of every position of each mixed image; every slot owns exactly
    `N / group_size` positions, placed uniformly at random (a random permutation of a balanced label vector)."""
    if num_patches % group_size:
        raise ValueError(f"{num_patches} patches cannot be split evenly among {group_size} images")
    labels = torch.arange(group_size, device=device).repeat_interleave(num_patches // group_size)
    order = torch.rand(num_groups, num_patches, device=device, generator=generator).argsort(dim=1)
    return labels[order]


def sequence_sources(assignment: torch.Tensor, group_size: int) -> torch.Tensor:
    """Source slot of every token of the mixed sequence `[G, g + N]`: the `g` per-source CLS tokens come first
    (CLS j belongs to slot j), then the `N` mixed patches."""
    prefix = torch.arange(group_size, device=assignment.device).expand(assignment.shape[0], -1)
    return torch.cat([prefix, assignment], dim=1)


def homology_attention_mask(sources: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """Additive mask `[G, 1, L, L]` from the source slot of every token `sources [G, L]`: a query attends only to
    tokens of its own source image (allowed entries 0, blocked ones the dtype's most negative value)."""
    allowed = sources.unsqueeze(2) == sources.unsqueeze(1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=sources.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min).unsqueeze(1)


def topk_attention_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """HomoAtt's TopK sampling as an additive mask: for attention scores `[G, H, L, L]` every query keeps its `k`
    highest-scoring keys. Computed without gradient (the selection is discrete; gradients flow through the softmax
    over the kept keys)."""
    with torch.no_grad():
        k = min(int(k), scores.shape[-1])
        keep = torch.zeros_like(scores, dtype=torch.bool)
        keep.scatter_(-1, scores.topk(k, dim=-1).indices, True)
        mask = torch.zeros(scores.shape, dtype=scores.dtype, device=scores.device)
        return mask.masked_fill(~keep, torch.finfo(scores.dtype).min)


def homologous_contrastive_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """HomoCon: supervised-contrastive loss inside each mixed image. `features [G, N, D]` (token features),
    `labels [G, N]` (source slot). For anchor i: positives = other tokens of the same source, candidates = all other
    tokens of the same mixed image;
    `l_i = -1/|P(i)| sum_{p in P(i)} log( exp(s_ip / t) / sum_{a != i} exp(s_ia / t) )` with cosine similarities
    `s`, averaged over anchors with at least one positive and over mixed images."""
    z = F.normalize(features.float(), dim=-1)
    logits = z @ z.transpose(1, 2) / temperature
    n = logits.shape[-1]
    eye = torch.eye(n, dtype=torch.bool, device=logits.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    positive = (labels.unsqueeze(2) == labels.unsqueeze(1)) & ~eye
    num_pos = positive.sum(-1)
    per_anchor = -(log_prob.masked_fill(~positive, 0.0)).sum(-1) / num_pos.clamp(min=1)
    valid = num_pos > 0
    return per_anchor[valid].mean() if bool(valid.any()) else logits.new_zeros(())


class MixedAEForSelfSupervisedPretraining(SSLPreTrainedModel):
    """MixedAE pretraining model (see `hf_ssl.modeling.mixedae`)."""

    config_class = MixedAEConfig

    def __init__(self, config: MixedAEConfig):
        super().__init__(config)
        self.encoder = self._build_encoder()
        bb = config.backbone_config
        dim = bb.hidden_size
        self.segment_embed = nn.Embedding(config.group_size, dim) if config.segment_embedding else None
        self.homocon_head = None
        if config.homocon_projection_dim:
            self.homocon_head = MLPHead(dim, dim, config.homocon_projection_dim, num_layers=2, batch_norm=False,
                                        layer_norm=True, activation="gelu")
        self.decoder = MaskedAutoencoderDecoder(
            in_dim=dim, dim=config.decoder_hidden_size, depth=config.decoder_depth,
            num_heads=config.decoder_num_heads, out_dim=bb.patch_size * bb.patch_size * config.num_channels,
            mlp_ratio=config.decoder_mlp_ratio, num_prefix_tokens=1, pos_embed="sincos")
        self.post_init()

    def _init_weights(self, module):
        super()._init_weights(module)
        from transformers import initialization as init

        if isinstance(module, MaskedAutoencoderDecoder):
            init.normal_(module.mask_token, std=0.02)  # MAE: normal_(mask_token, std=.02)
        if isinstance(module, nn.Embedding) and module is self.segment_embed:
            init.normal_(module.weight, std=0.02)

    # -- pieces ---------------------------------------------------------------------------------------------------
    def generate_assignment(self, num_groups: int, num_patches: int, device=None, generator=None) -> torch.Tensor:
        return random_mixing_assignment(num_groups, num_patches, self.config.group_size, device=device,
                                        generator=generator)

    def _check_assignment(self, assignment, num_groups: int, num_patches: int, device) -> torch.Tensor:
        a = torch.as_tensor(assignment, device=device).long()
        g = self.config.group_size
        if a.shape != (num_groups, num_patches):
            raise ValueError(f"mixing_assignment must be [num_groups={num_groups}, {num_patches}], got {list(a.shape)}")
        if int(a.min()) < 0 or int(a.max()) >= g:
            raise ValueError(f"mixing_assignment values must lie in [0, {g})")
        counts = F.one_hot(a, g).sum(1)
        if not bool((counts == num_patches // g).all()):
            raise ValueError(f"every source must own exactly {num_patches // g} positions of each mixed image")
        return a

    def mix_tokens(self, tokens: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
        """`tokens [G*g, N, D]` (group members in slot order) -> mixed tokens `[G, N, D]`: position n of mixed image
        G comes from member `assignment[G, n]` (plus that slot's segment embedding)."""
        g = self.config.group_size
        n, d = tokens.shape[1], tokens.shape[2]
        grouped = tokens.reshape(-1, g, n, d)
        if self.segment_embed is not None:
            grouped = grouped + self.segment_embed.weight.to(grouped.dtype)[None, :, None, :]
        index = assignment[:, None, :, None].expand(-1, 1, n, d)
        return grouped.gather(1, index).squeeze(1)

    def encode_mixed(self, hidden_states: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
        """Run the stock ViT layers on mixed sequences `[G, g + N, D]` (the `g` per-source CLS tokens first) with
        homologous attention; the restriction enters each layer as its additive `attention_mask`."""
        vit = self.encoder
        g = self.config.group_size
        mode = self.config.homologous_attention
        hidden_states = vit.embeddings.dropout(hidden_states)
        static_mask = None
        if mode == "mask":
            static_mask = homology_attention_mask(sequence_sources(assignment, g), hidden_states.dtype)
        k = assignment.shape[1] // g + 1  # a source's patches plus its CLS
        for layer in _vit_layers(vit):
            mask = static_mask
            if mode == "topk":
                attn = layer.attention
                with torch.no_grad():
                    x = layer.layernorm_before(hidden_states)
                    shape = (*x.shape[:-1], -1, attn.head_dim)
                    q = attn.q_proj(x).view(shape).transpose(1, 2)
                    key = attn.k_proj(x).view(shape).transpose(1, 2)
                    mask = topk_attention_mask(q @ key.transpose(-1, -2) * attn.scaling, k)
            out = layer(hidden_states, mask)
            hidden_states = out[0] if isinstance(out, tuple) else out
        return vit.layernorm(hidden_states)

    def forward(self, pixel_values, mixing_assignment: Optional[torch.Tensor] = None, return_dict: bool = True,
                **kwargs):
        """
        Args:
            pixel_values: `[B, C, H, W]` images. Consecutive runs of `g = 1 / mixing_ratio` images form the groups
                mixed together; an incomplete last group is filled with images from the start of the batch
                (wrap-around) that are mixed in but not reconstructed a second time.
            mixing_assignment: optional `[ceil(B / g), N]` source slot of every position of each mixed image (exactly
                `N / g` positions per slot); drawn at random when omitted.

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`: `logits` = decoder predictions `[B, N, p*p*C]` for every
            patch of each source image (the loss covers the positions it did not contribute); `embeddings` = each
            image's own CLS token (`feature_pooling="cls"`) or the mean of its own output tokens (detached).
        """
        if isinstance(pixel_values, (list, tuple)):
            if len(pixel_values) != 1:
                raise ValueError("MixedAE takes one view per image: pixel_values must be [B, C, H, W]")
            pixel_values = pixel_values[0]
        self.check_pixel_values(pixel_values)
        b = pixel_values.shape[0]
        g = self.config.group_size
        grid = vit_grid(self.encoder.config, tuple(pixel_values.shape[-2:]))
        n = grid[0] * grid[1]
        if n % g:
            raise ValueError(f"{n} patches cannot be split evenly among {g} images (mixing_ratio "
                             f"{self.config.mixing_ratio})")
        num_groups = -(-b // g)
        device = pixel_values.device
        if mixing_assignment is None:
            assignment = self.generate_assignment(num_groups, n, device=device)
        else:
            assignment = self._check_assignment(mixing_assignment, num_groups, n, device)

        tokens, cls = vit_embed_patches(self.encoder, pixel_values)
        members = torch.arange(num_groups * g, device=device) % b  # wrap-around fillers for the last group
        mixed = self.mix_tokens(tokens[members], assignment)
        hidden = torch.cat([cls[:1].expand(num_groups, g, -1), mixed], dim=1)  # one CLS per source slot
        out = self.encode_mixed(hidden, assignment)
        patch_out = out[:, g:]
        source_cls = out[:, :g].reshape(num_groups * g, 1, -1)[:b]

        # homologous contrastive loss on the encoder's output tokens, inside every mixed image
        homocon_features = patch_out if self.homocon_head is None else self.homocon_head(patch_out)
        homocon = homologous_contrastive_loss(homocon_features, assignment, self.config.homocon_temperature)

        # reconstruction: member i of group G (slot i % g) sees only its own positions; the first B members are the
        # batch images in order
        slot = torch.arange(num_groups * g, device=device) % g
        own = assignment.repeat_interleave(g, dim=0) == slot[:, None]  # [G*g, N]
        own = own[:b]
        visible_index, _ = mask_to_index(~own)
        source_tokens = patch_out.repeat_interleave(g, dim=0)[:b]
        visible = torch.gather(source_tokens, 1, visible_index.unsqueeze(-1).expand(-1, -1, patch_out.shape[-1]))
        pred = self.decoder(torch.cat([source_cls, visible], dim=1), visible_index, n, grid)[:, 1:]
        target = patchify(pixel_values.detach().float(), self.encoder.config.patch_size)
        if self.config.norm_pix_loss:
            target = normalized_pixel_targets(target)
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        masked = (~own).float()
        recon = (per_patch * masked).sum() / masked.sum()
        loss = recon + self.config.homocon_weight * homocon

        own_f = own.unsqueeze(-1).to(source_tokens.dtype)
        if self.config.feature_pooling == "cls":
            embeddings = source_cls[:, 0].detach()
        else:
            embeddings = ((source_tokens * own_f).sum(1) / own_f.sum(1)).detach()
        metrics = {"reconstruction_loss": recon.detach(), "homocon_loss": homocon.detach(),
                   "mask_fraction": masked.mean().detach()}
        output = SSLOutput(loss=loss, embeddings=embeddings, logits=pred, metrics=metrics)
        return output if return_dict else output.to_tuple()


__all__ = ["MixedAEForSelfSupervisedPretraining", "random_mixing_assignment", "sequence_sources",
           "homology_attention_mask", "topk_attention_mask", "homologous_contrastive_loss"]
