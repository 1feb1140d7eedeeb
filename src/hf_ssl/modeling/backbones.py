"""Encoders are stock transformers models built from `config.backbone_config`.

This module knows how to build them, how wide their pooled features are, how to pool them, and, for
ViT-style encoders, how to run the transformer on a subset of patch tokens (the "visible-token forward"
that masked-image-modeling methods need so masked tokens are never processed).
"""

from __future__ import annotations

import math

from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn
from transformers import CONFIG_MAPPING, AutoModel, PretrainedConfig

VIT_FAMILY = ("vit", "deit", "dinov2", "vit_mae", "vit_msn")
CONVNET_FAMILY = ("resnet", "regnet", "convnext", "convnextv2", "bit", "efficientnet", "mobilenet_v2")
SWIN_FAMILY = ("swin", "swinv2")
# 3-D token models: VideoMAE-style ViTs with a (tubelet x patch x patch) Conv3d embedding. Their input is
# `[B, T, C, H, W]`; a volume `[B, C, D, H, W]` is fed as a "clip" along depth (see `volume_to_video`).
VIDEO_FAMILY = ("videomae",)
# token-sequence transformers driven through `inputs_embeds` (point-cloud methods: the method tokenizes its input, e.g.
# FPS + kNN point patches, and feeds the stock encoder stack; index position tables are zeroed and frozen there)
TOKEN_FAMILY = ("distilbert",)

# Named presets so users can write `SwAVConfig(backbone_config="resnet-50")`.  Sizes follow the
# original architectures; image_size is filled in from the method config.
BACKBONE_PRESETS = {
    "vit-tiny": dict(model_type="vit", hidden_size=192, num_hidden_layers=12, num_attention_heads=3,
                     intermediate_size=768, patch_size=16),
    "vit-small": dict(model_type="vit", hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                      intermediate_size=1536, patch_size=16),
    "vit-base": dict(model_type="vit", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                     intermediate_size=3072, patch_size=16),
    "vit-large": dict(model_type="vit", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                      intermediate_size=4096, patch_size=16),
    # small encoders for CPU runs on 32-64 px images (the default `hf-ssl pretrain` run, tests, benchmarks)
    "resnet-tiny": dict(model_type="resnet", layer_type="basic", depths=[1, 1, 1, 1], embedding_size=32,
                        hidden_sizes=[32, 64, 128, 256]),
    "vit-micro": dict(model_type="vit", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=512, patch_size=4),
    "resnet-18": dict(model_type="resnet", layer_type="basic", depths=[2, 2, 2, 2],
                      hidden_sizes=[64, 128, 256, 512]),
    "resnet-50": dict(model_type="resnet", layer_type="bottleneck", depths=[3, 4, 6, 3],
                      hidden_sizes=[256, 512, 1024, 2048]),
    # RegNetY-1.6GF / RegNetY-16GF (SEER uses RegNetY-{32,64,128,256}GF; those are configurable the same way)
    "regnet-y-1.6gf": dict(model_type="regnet", layer_type="y", depths=[2, 6, 17, 2],
                           hidden_sizes=[48, 120, 336, 888], groups_width=24),
    "regnet-y-16gf": dict(model_type="regnet", layer_type="y", depths=[2, 4, 11, 1],
                          hidden_sizes=[224, 448, 1232, 3024], groups_width=112),
    "regnet-y-32gf": dict(model_type="regnet", layer_type="y", depths=[2, 5, 12, 1],
                          hidden_sizes=[232, 696, 1392, 3712], groups_width=232),
    # SEER's RegNetY-256GF (Goyal et al. 2021; vissl pretrain/swav/models/regnet256Gf_1.yaml: depth 27, w_0 640,
    # w_a 230.83, w_m 2.53, group width 373 -> these stages; 10444-d features)
    "regnet-y-256gf": dict(model_type="regnet", layer_type="y", depths=[2, 7, 17, 1],
                           hidden_sizes=[746, 1492, 4103, 10444], groups_width=373),
    "convnext-tiny": dict(model_type="convnext", depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768]),
    "swinv2-tiny": dict(model_type="swinv2", embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24],
                        window_size=8),
    # plain ViTs over 3-D patches (stock VideoMAEModel: fixed 1-D sin-cos positions, no CLS token, mean pooling);
    # `tubelet_size` is the patch extent along depth / time. image_size and num_frames come from the method config.
    # stock DistilBERT stacks over point-patch tokens (I2P-MAE / Point-MAE widths: 384 x 12 layers x 6 heads)
    "point-transformer-micro": dict(model_type="distilbert", dim=128, n_layers=4, n_heads=4, hidden_dim=512,
                                    vocab_size=1, dropout=0.0, attention_dropout=0.0, activation="gelu"),
    "point-transformer-small": dict(model_type="distilbert", dim=384, n_layers=12, n_heads=6, hidden_dim=1536,
                                    vocab_size=1, dropout=0.0, attention_dropout=0.0, activation="gelu"),
    "vit3d-micro": dict(model_type="videomae", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=512, patch_size=4, tubelet_size=4, use_mean_pooling=True),
    "vit3d-small": dict(model_type="videomae", hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                        intermediate_size=1536, patch_size=16, tubelet_size=16, use_mean_pooling=True),
    "vit3d-base": dict(model_type="videomae", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                       intermediate_size=3072, patch_size=16, tubelet_size=16, use_mean_pooling=True),
    # video encoders (stock VideoMAEModel, Tong et al. 2022): 2 x p x p tubelets, fixed 1-D sin-cos positions, no CLS;
    # `use_mean_pooling=False` keeps the final LayerNorm of the official pretraining encoder. num_frames comes from the
    # method config (`video_backbone_spec`), image_size from `SSLConfig`.
    "videomae-micro": dict(model_type="videomae", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=512, patch_size=4, tubelet_size=2, use_mean_pooling=False,
                           layer_norm_eps=1e-6),
    "videomae-small": dict(model_type="videomae", hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                           intermediate_size=1536, patch_size=16, tubelet_size=2, use_mean_pooling=False,
                           layer_norm_eps=1e-6),
    "videomae-base": dict(model_type="videomae", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                          intermediate_size=3072, patch_size=16, tubelet_size=2, use_mean_pooling=False,
                          layer_norm_eps=1e-6),
    "videomae-large": dict(model_type="videomae", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, patch_size=16, tubelet_size=2, use_mean_pooling=False,
                           layer_norm_eps=1e-6),
    # ViT-H/14 with 2-frame tubelets (Orhan et al. 2024 via mae_st `mae_vit_huge_patch14`, --t_patch_size 2)
    "videomae-huge-14": dict(model_type="videomae", hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                             intermediate_size=5120, patch_size=14, tubelet_size=2, use_mean_pooling=False,
                             layer_norm_eps=1e-6),
}


def resolve_backbone_config(
    backbone_config: Union[None, str, dict, PretrainedConfig],
    default: Union[str, dict],
    image_size: Optional[int] = None,
    num_channels: Optional[int] = None,
) -> PretrainedConfig:
    """Turn a preset name, a dict (with `model_type`) or a config into a transformers config."""
    if backbone_config is None:
        backbone_config = default
    if isinstance(backbone_config, PretrainedConfig):
        config = backbone_config
    else:
        if isinstance(backbone_config, str):
            if backbone_config not in BACKBONE_PRESETS:
                raise ValueError(
                    f"Unknown backbone preset {backbone_config!r}; choose one of {sorted(BACKBONE_PRESETS)} "
                    "or pass a transformers config / dict with a `model_type`."
                )
            spec = dict(BACKBONE_PRESETS[backbone_config])
        else:
            spec = dict(backbone_config)
        model_type = spec.pop("model_type", None)
        if model_type is None or model_type not in CONFIG_MAPPING:
            raise ValueError(f"backbone_config needs a known transformers `model_type`, got {model_type!r}.")
        family = backbone_family(model_type)
        if family in ("vit", "swin", "video") and image_size is not None:
            spec.setdefault("image_size", image_size)
        if num_channels is not None:
            spec.setdefault("num_channels", num_channels)
        config = CONFIG_MAPPING[model_type](**spec)
    backbone_family(config.model_type)  # validates that the family is supported
    return config


def backbone_family(config_or_type: Union[str, PretrainedConfig]) -> str:
    model_type = config_or_type if isinstance(config_or_type, str) else config_or_type.model_type
    if model_type in VIT_FAMILY:
        return "vit"
    if model_type in CONVNET_FAMILY:
        return "convnet"
    if model_type in SWIN_FAMILY:
        return "swin"
    if model_type in VIDEO_FAMILY:
        return "video"
    if model_type in TOKEN_FAMILY:
        return "token"
    raise ValueError(
        f"Backbone model_type {model_type!r} is not supported; supported: "
        f"{sorted(VIT_FAMILY + CONVNET_FAMILY + SWIN_FAMILY + VIDEO_FAMILY + TOKEN_FAMILY)}."
    )


def build_backbone(config: PretrainedConfig) -> nn.Module:
    """A stock transformers base model (no head, ViT without its unused pooler)."""
    kwargs = {"add_pooling_layer": False} if config.model_type == "vit" else {}
    return AutoModel.from_config(config, **kwargs)


def feature_dim(config: PretrainedConfig) -> int:
    """Width of the pooled feature of a backbone built from `config`."""
    family = backbone_family(config)
    if family in ("vit", "video", "token"):
        return config.hidden_size
    if family == "swin":
        return int(config.embed_dim * 2 ** (len(config.depths) - 1))
    if hasattr(config, "hidden_sizes"):
        return config.hidden_sizes[-1]
    return config.hidden_dim  # efficientnet / mobilenet style configs


def num_channels_of(config: PretrainedConfig) -> int:
    return getattr(config, "num_channels", 3)


def encode(
    encoder: nn.Module, pixel_values: torch.Tensor, pooling: str = "cls", return_tokens: bool = False
):
    """Run a stock backbone and return pooled features `[B, D]` (and tokens / feature map if asked).

    ViT: `cls` (the CLS token after the final layer norm, as in DINO/MoCo v3) or `mean` (mean of patch
    tokens, as in MAE/CAE linear probing). Position embeddings are interpolated automatically when the
    input size differs from `config.image_size` (multi-crop). ConvNets/Swin: the backbone's global pool.
    """
    family = backbone_family(encoder.config)
    if family == "vit":
        size = encoder.config.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        interpolate = tuple(pixel_values.shape[-2:]) != tuple(size)
        out = encoder(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)
        tokens = out.last_hidden_state
        pooled = pool_vit_tokens(tokens, pooling)
        return (pooled, tokens) if return_tokens else pooled
    if family == "video":  # `[B, T, C, H, W]`; no CLS token: mean over all tokens (VideoMAE's pooling)
        tokens = encoder(pixel_values=pixel_values).last_hidden_state
        pooled = tokens.mean(dim=1)
        return (pooled, tokens) if return_tokens else pooled
    out = encoder(pixel_values=pixel_values)
    pooled = out.pooler_output
    if pooled.dim() > 2:
        pooled = pooled.flatten(1)
    if return_tokens:
        return pooled, out.last_hidden_state
    return pooled


def same_resolution_runs(views: Sequence[torch.Tensor]) -> List[Tuple[int, int]]:
    """`(start, end)` index ranges of consecutive views with the same spatial size (multi-crop: the globals, then
    the locals), the groups that the official multi-crop forward (DINO's `MultiCropWrapper`, SwAV) runs through
    the encoder in one call each."""
    runs, start = [], 0
    while start < len(views):
        end = start + 1
        while end < len(views) and views[end].shape[-2:] == views[start].shape[-2:]:
            end += 1
        runs.append((start, end))
        start = end
    return runs


def encode_multicrop(encoder: nn.Module, views: Sequence[torch.Tensor], pooling: str = "cls",
                     concatenate: bool = True):
    """Pooled features of every view, one encoder call per run of same-size views (`same_resolution_runs`).

    `concatenate=True` returns `[V*B, D]` in view order; False returns one `[n*B, D]` tensor per run. For ViT /
    Swin encoders the result equals per-view calls (no cross-sample statistics); for BatchNorm ConvNets the
    batch statistics span the run's views, as in the official multi-crop code."""
    groups = []
    for start, end in same_resolution_runs(views):
        x = views[start] if end - start == 1 else torch.cat(list(views[start:end]), dim=0)
        groups.append(encode(encoder, x, pooling))
    if not concatenate:
        return groups
    return groups[0] if len(groups) == 1 else torch.cat(groups, dim=0)


def map_views_batched(fn: Callable, views: Sequence[torch.Tensor]) -> list:
    """`[fn(v) for v in views]` computed with one `fn` call per run of same-size views: the run is concatenated
    along the batch, `fn`'s output (a tensor, a tuple or a dict of tensors, batch-first) is split back per view. Equal to
    the per-view loop whenever `fn` treats samples independently (ViT / Swin encoders and their heads)."""
    outputs = []
    for start, end in same_resolution_runs(views):
        if end - start == 1:
            outputs.append(fn(views[start]))
            continue
        sizes = [v.shape[0] for v in views[start:end]]
        out = fn(torch.cat(list(views[start:end]), dim=0))
        if isinstance(out, torch.Tensor):
            outputs.extend(out.split(sizes))
        elif isinstance(out, dict):
            parts = {k: v.split(sizes) for k, v in out.items()}
            outputs.extend({k: v[i] for k, v in parts.items()} for i in range(len(sizes)))
        else:
            parts = [o.split(sizes) for o in out]
            outputs.extend(tuple(p[i] for p in parts) for i in range(len(sizes)))
    return outputs
    return outputs


def pool_vit_tokens(tokens: torch.Tensor, pooling: str = "cls") -> torch.Tensor:
    if pooling == "cls":
        return tokens[:, 0]
    if pooling == "mean":
        return tokens[:, 1:].mean(dim=1)
    raise ValueError(f"pooling must be 'cls' or 'mean', got {pooling!r}")


# ----------------------------------------------------------------------------------------------------
# ViT helpers: patchify, fixed sin-cos embeddings, visible-token forward
# ----------------------------------------------------------------------------------------------------
def patchify(pixel_values: torch.Tensor, patch_size: int) -> torch.Tensor:
    """`[B, C, H, W]` -> `[B, N, p*p*C]` in row-major patch order (the order ViT's patch embedding uses)."""
    b, c, h, w = pixel_values.shape
    if h % patch_size or w % patch_size:
        raise ValueError(f"Image size {(h, w)} is not divisible by patch size {patch_size}.")
    gh, gw = h // patch_size, w // patch_size
    x = pixel_values.reshape(b, c, gh, patch_size, gw, patch_size)
    x = torch.einsum("bchpwq->bhwpqc", x)
    return x.reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple, num_channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`."""
    b = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(b, gh, gw, patch_size, patch_size, num_channels)
    x = torch.einsum("bhwpqc->bchpwq", x)
    return x.reshape(b, num_channels, gh * patch_size, gw * patch_size)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding `[(1+)H*W, dim]` (MAE/MoCo v3 style)."""
    if dim % 4:
        raise ValueError("sin-cos position embedding needs a dimension divisible by 4")
    gy, gx = np.meshgrid(np.arange(grid_h, dtype=np.float64), np.arange(grid_w, dtype=np.float64), indexing="ij")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4.0))

    def embed(pos):
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([embed(gy), embed(gx)], axis=1)
    if cls_token:
        emb = np.concatenate([np.zeros([1, dim]), emb], axis=0)
    return torch.from_numpy(emb).float()


def init_sincos_position_embeddings_(encoder: nn.Module) -> None:
    """Fill a stock ViT's learned position table with the fixed 2-D sin-cos values (zero row for CLS), MAE-style.
    Call it from `_init_weights` (it goes through transformers' init functions, so a loaded checkpoint is kept);
    freeze the table with the model's `frozen_parameter_prefixes` where the paper keeps it fixed."""
    from transformers import initialization as init

    pos = encoder.embeddings.position_embeddings
    grid = vit_grid(encoder.config)
    table = sincos_pos_embed_2d(pos.shape[-1], grid[0], grid[1], cls_token=True)
    init.copy_(pos, table.reshape(pos.shape).to(pos.dtype))


def vit_grid(config: PretrainedConfig, image_size: Optional[tuple] = None) -> tuple:
    size = image_size or config.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    return size[0] // config.patch_size, size[1] // config.patch_size


def _vit_layers(vit: nn.Module):
    if hasattr(vit, "layers"):
        return vit.layers
    return vit.encoder.layer  # transformers 4.x layout


def vit_embed_patches(vit: nn.Module, pixel_values: torch.Tensor) -> tuple:
    """Patch tokens with position embeddings added `[B, N, D]`, and the CLS token with its position `[B, 1, D]`."""
    emb = vit.embeddings
    b, _, h, w = pixel_values.shape
    pixel_values = pixel_values.to(emb.patch_embeddings.projection.weight.dtype)
    tokens = emb.patch_embeddings(pixel_values)
    cls = emb.cls_token.expand(b, -1, -1)
    pos = emb.interpolate_pos_encoding(torch.cat([cls, tokens], dim=1), h, w)
    tokens = tokens + pos[:, 1:]
    cls = cls + pos[:, :1]
    return tokens, cls


def vit_forward_tokens(vit: nn.Module, hidden_states: torch.Tensor, final_norm: bool = True,
                       attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Run the ViT transformer layers (and final layer norm) on an arbitrary token sequence. `attention_mask`
    (optional) is an additive float mask broadcastable to `[B, heads, L, L]` (e.g. `[B, 1, 1, L]` with a large
    negative value on padded keys), handed to every stock layer's attention."""
    hidden_states = vit.embeddings.dropout(hidden_states)
    for layer in _vit_layers(vit):
        out = layer(hidden_states, attention_mask)
        hidden_states = out[0] if isinstance(out, tuple) else out
    return vit.layernorm(hidden_states) if final_norm else hidden_states


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`tokens[b, index[b]]` for `tokens [B, N, D]`, `index [B, K]` -> `[B, K, D]`."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def vit_forward_visible(vit: nn.Module, pixel_values: torch.Tensor, visible_index: torch.Tensor) -> torch.Tensor:
    """Encode only the visible patches: returns `[B, 1 + K, D]` (CLS first), masked tokens never enter the
    transformer. `visible_index` holds the K kept patch indices per sample (see `masking.mask_to_index`)."""
    tokens, cls = vit_embed_patches(vit, pixel_values)
    visible = gather_tokens(tokens, visible_index)
    return vit_forward_tokens(vit, torch.cat([cls, visible], dim=1))


def feature_stride(config: PretrainedConfig) -> int:
    """Input pixels per cell of the encoder's last feature map: the ViT patch size, `patch * 2**(stages-1)` for
    Swin, the stem's 4 x the stage downsamplings for ResNet/ConvNeXt (32 for their standard 4-stage layouts).
    SimMIM/MFM-style heads map each cell back to `stride x stride` pixels (1x1 conv + pixel shuffle)."""
    family = backbone_family(config)
    if family == "vit":
        return int(config.patch_size)
    if family == "swin":
        return int(config.patch_size * 2 ** (len(config.depths) - 1))
    if config.model_type == "resnet":
        return 4 * 2 ** (len(config.depths) - (0 if getattr(config, "downsample_in_first_stage", False) else 1))
    if config.model_type in ("convnext", "convnextv2"):
        return 4 * 2 ** (len(config.depths) - 1)
    raise ValueError(f"feature_stride is not known for model_type {config.model_type!r}")


def encoder_feature_map(encoder: nn.Module, pixel_values: torch.Tensor, **kwargs) -> torch.Tensor:
    """The encoder's last feature map `[B, C, h, w]` (final norm applied where the model has one): ViT patch tokens
    without the CLS token, Swin's last-stage tokens, or a ConvNet's last stage, reshaped to the spatial grid.
    Extra `kwargs` (e.g. `bool_masked_pos` for models built with `use_mask_token=True`) go to the encoder."""
    family = backbone_family(encoder.config)
    b, _, h, w = pixel_values.shape
    if family == "vit":
        size = encoder.config.image_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        kwargs.setdefault("interpolate_pos_encoding", tuple(pixel_values.shape[-2:]) != tuple(size))
        tokens = encoder(pixel_values=pixel_values, **kwargs).last_hidden_state[:, 1:]
        gh, gw = h // encoder.config.patch_size, w // encoder.config.patch_size
        return tokens.transpose(1, 2).reshape(b, -1, gh, gw)
    out = encoder(pixel_values=pixel_values, **kwargs).last_hidden_state
    if family == "swin":
        stride = feature_stride(encoder.config)
        return out.transpose(1, 2).reshape(b, -1, h // stride, w // stride)
    return out


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, name: str = "pixel_values") -> None:
    """A clear error instead of a shape failure deep inside a convolution."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(pixel_values).__name__}")
    if pixel_values.dim() != 4:
        raise ValueError(f"{name} must be [batch, channels, height, width], got shape {tuple(pixel_values.shape)}")
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"{name} has {pixel_values.shape[1]} channels but the encoder expects {num_channels} "
            "(set num_channels in the backbone config to match your data)."
        )


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "same_resolution_runs", "encode_multicrop", "map_views_batched",
    "BACKBONE_PRESETS", "resolve_backbone_config", "backbone_family", "build_backbone", "feature_dim",
    "encode", "pool_vit_tokens", "patchify", "unpatchify", "sincos_pos_embed_2d", "init_sincos_position_embeddings_", "vit_grid",
    "vit_embed_patches", "vit_forward_tokens", "vit_forward_visible", "gather_tokens", "check_pixel_values",
    "num_channels_of", "count_parameters", "feature_stride", "encoder_feature_map",
]


# ----------------------------------------------------------------------------------------------------
# 3-D volume helpers (volumes `[B, C, D, H, W]`, MONAI / medical convention) for VideoMAE-style encoders
# ----------------------------------------------------------------------------------------------------
def check_volume_values(volumes: torch.Tensor, num_channels: int, name: str = "pixel_values_volumes",
                        size: Optional[tuple] = None) -> None:
    """A clear error for a volume batch of the wrong type / rank / channel count / (optionally) size `(D, H, W)`."""
    if not isinstance(volumes, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(volumes).__name__}")
    if volumes.dim() != 5:
        raise ValueError(f"{name} must be [batch, channels, depth, height, width], got shape {tuple(volumes.shape)}")
    if volumes.shape[1] != num_channels:
        raise ValueError(f"{name} has {volumes.shape[1]} channels but the encoder expects {num_channels} "
                         "(set num_channels in the config to match your data).")
    if size is not None and tuple(volumes.shape[2:]) != tuple(size):
        raise ValueError(f"{name} must have spatial size (depth, height, width) = {tuple(size)}, got "
                         f"{tuple(volumes.shape[2:])} (volume encoders have a fixed patch grid; resize / crop first).")


def volume_to_video(volumes: torch.Tensor) -> torch.Tensor:
    """`[B, C, D, H, W]` -> `[B, D, C, H, W]`: a volume as a clip along depth (VideoMAE's input layout)."""
    return volumes.permute(0, 2, 1, 3, 4)


def video_patch_grid(config: PretrainedConfig) -> tuple:
    """Token grid `(T / tubelet, H / patch, W / patch)` of a VideoMAE-style encoder (row-major token order)."""
    size = config.image_size
    size = size if isinstance(size, (tuple, list)) else (size, size)
    return config.num_frames // config.tubelet_size, size[0] // config.patch_size, size[1] // config.patch_size


def patchify_3d(volumes: torch.Tensor, patch: tuple) -> torch.Tensor:
    """`[B, C, D, H, W]` -> `[B, N, pd*ph*pw*C]` in (d, h, w) row-major patch order (VideoMAE's token order), each
    patch flattened as (pd, ph, pw, C)."""
    b, c, d, h, w = volumes.shape
    pd, ph, pw = patch
    if d % pd or h % ph or w % pw:
        raise ValueError(f"volume size {(d, h, w)} is not divisible by the 3-D patch {tuple(patch)}")
    x = volumes.reshape(b, c, d // pd, pd, h // ph, ph, w // pw, pw)
    x = torch.einsum("bcdxhywz->bdhwxyzc", x)
    return x.reshape(b, (d // pd) * (h // ph) * (w // pw), pd * ph * pw * c)


def unpatchify_3d(patches: torch.Tensor, patch: tuple, grid: tuple, num_channels: int) -> torch.Tensor:
    """Inverse of :func:`patchify_3d`."""
    b = patches.shape[0]
    gd, gh, gw = grid
    pd, ph, pw = patch
    x = patches.reshape(b, gd, gh, gw, pd, ph, pw, num_channels)
    x = torch.einsum("bdhwxyzc->bcdxhywz", x)
    return x.reshape(b, num_channels, gd * pd, gh * ph, gw * pw)


def sincos_pos_embed_3d(dim: int, grid: tuple) -> torch.Tensor:
    """Fixed 3-D sine-cosine position embedding `[D*H*W, dim]` (MAE's 2-D table extended to three axes, as in
    NeRF-MAE's `get_3d_sincos_pos_embed`): the channels are split into three groups (depth, height, width), each
    a 1-D sin-cos code of its coordinate; a remainder (dim not divisible by 6) is zero-padded."""
    per_axis = (dim // 6) * 2
    if per_axis == 0:
        raise ValueError(f"3-D sin-cos position embedding needs dim >= 6, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(per_axis // 2, dtype=np.float64) / (per_axis / 2.0))
    coords = np.meshgrid(*[np.arange(g, dtype=np.float64) for g in grid], indexing="ij")
    parts = []
    for pos in coords:
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        parts.append(np.concatenate([np.sin(out), np.cos(out)], axis=1))
    emb = np.concatenate(parts, axis=1)
    if emb.shape[1] < dim:
        emb = np.concatenate([emb, np.zeros([emb.shape[0], dim - emb.shape[1]])], axis=1)
    return torch.from_numpy(emb).float()


def video_forward_visible(encoder: nn.Module, video: torch.Tensor, visible_index: torch.Tensor) -> torch.Tensor:
    """Tokens `[B, K, D]` of a stock VideoMAEModel run on the K visible patches only (`visible_index [B, K]`,
    ascending): the patch embedding and the model's fixed positions are added to every patch, the masked ones are
    dropped before the transformer (MAE), then the stock layers and (when the model has one) its final LayerNorm."""
    emb = encoder.embeddings
    tokens = emb.patch_embeddings(video.to(emb.patch_embeddings.projection.weight.dtype))
    tokens = tokens + emb.position_embeddings.detach().to(device=tokens.device, dtype=tokens.dtype)
    tokens = gather_tokens(tokens, visible_index)
    for layer in encoder.encoder.layer:
        out = layer(tokens)
        tokens = out[0] if isinstance(out, tuple) else out
    return encoder.layernorm(tokens) if encoder.layernorm is not None else tokens


def with_volume_depth(backbone_config, default, depth: int):
    """A volume method's backbone spec with VideoMAE's `num_frames` set to the volume depth (unless given): preset
    names / dicts become dicts with `num_frames`; a ready config is returned unchanged (checked later)."""
    spec = default if backbone_config is None else backbone_config
    if isinstance(spec, PretrainedConfig):
        return spec
    if isinstance(spec, str):
        if spec not in BACKBONE_PRESETS:
            raise ValueError(f"Unknown backbone preset {spec!r}; choose one of {sorted(BACKBONE_PRESETS)} "
                             "or pass a transformers config / dict with a `model_type`.")
        spec = BACKBONE_PRESETS[spec]
    spec = dict(spec)
    if spec.get("model_type") in VIDEO_FAMILY:
        spec.setdefault("num_frames", int(depth))
    return spec


def check_volume_backbone(config: PretrainedConfig, image_size: int, depth: int) -> None:
    """Volume encoders must be VideoMAE-style 3-D token models whose grid tiles the `(depth, size, size)` volume."""
    if backbone_family(config) != "video":
        raise ValueError(f"volume methods need a 3-D token encoder (model_type in {VIDEO_FAMILY}, e.g. preset "
                         f"'vit3d-small'), got {config.model_type!r}")
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    if size != image_size or config.num_frames != depth:
        raise ValueError(f"backbone image_size / num_frames ({size}, {config.num_frames}) must equal the volume "
                         f"size (image_size={image_size}, volume_depth={depth})")
    if image_size % config.patch_size or depth % config.tubelet_size:
        raise ValueError(f"volume {(depth, image_size, image_size)} is not divisible by the 3-D patch "
                         f"{(config.tubelet_size, config.patch_size, config.patch_size)}")


__all__ += ["with_volume_depth", "check_volume_backbone"]
__all__ += ["VIDEO_FAMILY", "check_volume_values", "volume_to_video", "video_patch_grid", "patchify_3d",
            "unpatchify_3d", "sincos_pos_embed_3d", "video_forward_visible"]


# ----------------------------------------------------------------------------------------------------
# video-clip helpers (clips `[B, T, C, H, W]`, transformers' video layout) for VIDEO_FAMILY encoders
# ----------------------------------------------------------------------------------------------------
def video_backbone_spec(backbone_config, default, num_frames: int):
    """A video backbone preset name / dict with the method's `num_frames` filled in (a dict or config that already
    names it, e.g. from a saved checkpoint, is left alone; anything else passes through unchanged). Video method
    configs call this before `SSLConfig.__init__` so the 3-D patch embedding and position table fit the clip length."""
    bc = default if backbone_config is None else backbone_config
    if isinstance(bc, str) and bc in BACKBONE_PRESETS:
        bc = dict(BACKBONE_PRESETS[bc])
    if isinstance(bc, dict) and bc.get("model_type") in VIDEO_FAMILY:
        bc = dict(bc)
        bc.setdefault("num_frames", int(num_frames))
    return bc


def video_patchify(clips: torch.Tensor, tubelet_size: int, patch_size: int) -> torch.Tensor:
    """`[B, T, C, H, W]` -> `[B, N, tubelet * p * p * C]` in VideoMAE's token order, each vector ordered (t, h, w, c)
    like the official `rearrange(x, 'b c (t p0) (h p1) (w p2) -> b (t h w) (p0 p1 p2 c)')`."""
    return patchify_3d(clips.permute(0, 2, 1, 3, 4), (tubelet_size, patch_size, patch_size))


def check_video_values(pixel_values_videos: torch.Tensor, num_channels: int, num_frames: Optional[int] = None,
                       image_size=None, name: str = "pixel_values_videos") -> None:
    """A clear error for a clip batch that is not `[batch, frames, channels, height, width]` with the encoder's channel
    count (and, where given, frame count and resolution: VideoMAE's position table is fixed)."""
    if not isinstance(pixel_values_videos, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(pixel_values_videos).__name__}")
    if pixel_values_videos.dim() != 5:
        raise ValueError(f"{name} must be [batch, frames, channels, height, width], got shape "
                         f"{tuple(pixel_values_videos.shape)}")
    _, t, c, h, w = pixel_values_videos.shape
    if c != num_channels:
        raise ValueError(f"{name} has {c} channels (axis 2) but the encoder expects {num_channels} "
                         "(set num_channels to match your data)")
    if num_frames is not None and t != num_frames:
        raise ValueError(f"{name} has {t} frames but the encoder was built for num_frames={num_frames}")
    if image_size is not None:
        size = tuple(image_size) if isinstance(image_size, (tuple, list)) else (image_size, image_size)
        if (h, w) != size:
            raise ValueError(f"{name} frames are {h}x{w} but the encoder expects {size[0]}x{size[1]}")


__all__ += ["video_backbone_spec", "video_patchify", "check_video_values"]


@torch.no_grad()
def init_efficientnet_from_scratch_(module: nn.Module) -> None:
    """Re-initialise a stock transformers EfficientNet for training from scratch the way torchvision's reference
    EfficientNet is: convolutions Kaiming-normal (torch's fan_out), BatchNorm gain 1 / bias 0. transformers'
    `EfficientNetPreTrainedModel._init_weights` draws conv weights and BatchNorm gains from N(0, 0.02) (meant for
    loading checkpoints), with which the activations of a random-init EfficientNet vanish layer after layer (pooled
    features ~1e-30 in eval mode). Applied after `post_init` (which runs the sub-model's own init); weights loaded by
    `from_pretrained` afterwards are untouched."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            # torch counts every output channel of a depthwise conv in fan_out (TF counts k*k only), so depthwise
            # kernels start sqrt(C) smaller and eval-mode features of the *random-init* net are tiny (~1e-6 at the
            # cpu-demo size; cosine k-NN is scale-free). Tried the TF count: the ALIGN demo then lost accuracy in
            # training (0.907 -> 0.887 at 300 steps) where this init gains (0.927 -> 0.973), so we keep torchvision's.
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None:
            m.weight.fill_(1.0)
            m.bias.zero_()


__all__ += ["init_efficientnet_from_scratch_"]
