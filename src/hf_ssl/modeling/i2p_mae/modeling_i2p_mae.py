"""I2P-MAE model: point-patch tokens, 2D-guided masking from a frozen 2D encoder on multi-view depth projections,
Chamfer reconstruction of masked point patches and 2D-semantic reconstruction of visible ones."""

from __future__ import annotations

import json
import logging
import os
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel
from transformers import initialization as init

from ...training.points import check_point_values, chamfer_distance_l2, gather_points, group_points
from ..base import SSLPreTrainedModel
from ..heads import TransformerBlock
from ..outputs import SSLOutput
from .configuration_i2p_mae import I2PMAEConfig

logger = logging.getLogger(__name__)

# the three axis-aligned views of the official `forward`: (x, y | z), (z, x | y), (y, z | x) -> (pixel row, column | depth)
VIEW_PERMUTATIONS = ((0, 1, 2), (2, 0, 1), (1, 2, 0))


class _PointBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel (last) axis of `[..., C]` (= Conv1d + BatchNorm1d of the official mini-PointNet)."""

    def forward(self, x):
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


class MiniPointNet(nn.Module):
    """Point-MAE's point-patch embedding: shared MLP 3 -> c1 -> c2, max-pool, concat the pooled feature to every
    point, MLP 2*c2 -> c3 -> D, max-pool (1x1 convolutions written as linear layers)."""

    def __init__(self, dims, out_dim: int):
        super().__init__()
        c1, c2, c3 = (int(d) for d in dims)
        self.first = nn.Sequential(nn.Linear(3, c1), _PointBatchNorm(c1), nn.ReLU(), nn.Linear(c1, c2))
        self.second = nn.Sequential(nn.Linear(2 * c2, c3), _PointBatchNorm(c3), nn.ReLU(), nn.Linear(c3, out_dim))

    def forward(self, neighborhoods: torch.Tensor) -> torch.Tensor:  # [B, G, K, 3] -> [B, G, D]
        f = self.first(neighborhoods)
        pooled = f.max(dim=2, keepdim=True).values
        f = self.second(torch.cat([pooled.expand_as(f), f], dim=-1))
        return f.max(dim=2).values


def _pos_mlp(dim: int) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 128), nn.GELU(), nn.Linear(128, dim))


class I2PMAEForSelfSupervisedPretraining(SSLPreTrainedModel):
    config_class = I2PMAEConfig
    main_input_name = "point_values"
    input_modalities = ("points",)
    input_channel_dim = None  # `[B, N, 3]`: xyz is a coordinate axis, not image channels

    def __init__(self, config: I2PMAEConfig):
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.backbone_config)  # stock DistilBERT stack (no pooler)
        hidden = config.backbone_config.hidden_size
        self.point_tokenizer = MiniPointNet(config.tokenizer_hidden_dims, hidden)
        self.point_pos_embed = _pos_mlp(hidden)
        # frozen 2D encoder (eager attention: its last-layer CLS attention is the saliency map)
        self.image_encoder = AutoModel.from_config(config.image_encoder_config, add_pooling_layer=False,
                                                   attn_implementation="eager")
        dd = config.decoder_hidden_size
        self.decoder_embed = nn.Linear(hidden, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = _pos_mlp(dd)
        self.decoder_blocks = nn.ModuleList([TransformerBlock(dd, config.decoder_num_heads)
                                             for _ in range(config.decoder_depth)])
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.head_3d = nn.Linear(dd, 3 * config.group_size)
        self.feat_dim_2d = config.image_encoder_config.hidden_size
        self.head_2d = nn.Linear(dd, len(VIEW_PERMUTATIONS) * self.feat_dim_2d)
        self.post_init()
        if self.mask_token.device.type != "meta":
            with torch.no_grad():  # point order carries no meaning: the index position table is zero (and frozen)
                self.encoder.embeddings.position_embeddings.weight.zero_()
        if config.image_encoder_path and self.mask_token.device.type != "meta":
            self.load_image_encoder_(config.image_encoder_path)
        elif not config.image_encoder_path:
            logger.info("I2P-MAE: no image_encoder_path; the frozen 2D encoder is randomly initialised (tests / demo)")
        self.apply_frozen_parameters_()

    # -- weights / freezing ------------------------------------------------------------------------
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, I2PMAEForSelfSupervisedPretraining):
            init.trunc_normal_(module.mask_token, std=0.02)

    def frozen_parameter_prefixes(self) -> tuple:
        return super().frozen_parameter_prefixes() + (
            "image_encoder.", "encoder.embeddings.position_embeddings", "encoder.embeddings.word_embeddings")

    def train(self, mode: bool = True):
        super().train(mode)
        self.image_encoder.eval()  # frozen 2D model always in inference mode (official `clip_model.eval()`)
        return self

    @torch.no_grad()
    def load_image_encoder_(self, path: Union[str, os.PathLike]) -> None:
        """Copy a pretrained 2D ViT into the frozen `image_encoder`: an hf_ssl checkpoint (its exported encoder), an
        hf_ssl vanilla export or any transformers ViT folder."""
        from transformers import AutoConfig

        cfg = AutoConfig.from_pretrained(path)
        if cfg.model_type.startswith("hf_ssl_"):
            import hf_ssl  # noqa: F401  (registers the Auto classes)

            ssl_model = AutoModel.from_pretrained(path)
            source = getattr(ssl_model, ssl_model.export_attribute)
        else:
            kwargs = {"add_pooling_layer": False} if cfg.model_type == "vit" else {}
            source = AutoModel.from_pretrained(path, **kwargs)
        state = {k: v for k, v in source.state_dict().items() if not k.startswith("pooler.")}
        missing, unexpected = self.image_encoder.load_state_dict(state, strict=False)
        if unexpected or [k for k in missing if not k.startswith("pooler.")]:
            raise ValueError(f"2D encoder at {path} does not match image_encoder_config: missing {missing}, "
                             f"unexpected {unexpected}")

    # -- inputs ------------------------------------------------------------------------------------
    def check_point_values(self, points, name="point_values"):
        check_point_values(points, name, min_points=max(self.config.num_groups, self.config.group_size))
        if not torch.isfinite(points).all():
            raise ValueError(f"{name} contains NaN or infinite coordinates")

    def tokenize(self, points: torch.Tensor):
        """FPS + kNN point patches and their tokens: `(tokens [B, G, D], pos [B, G, D], neighborhoods [B, G, K, 3],
        centers [B, G, 3], neighbour indices [B, G, K], centre indices [B, G])`."""
        neighborhoods, centers, nbr_idx, center_idx = group_points(points.float(), self.config.num_groups,
                                                                   self.config.group_size)
        tokens = self.point_tokenizer(neighborhoods)
        pos = self.point_pos_embed(centers)
        return tokens, pos, neighborhoods, centers, nbr_idx, center_idx

    def encode_tokens(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        return self.encoder(inputs_embeds=inputs_embeds).last_hidden_state

    def export_check_input(self, points: torch.Tensor) -> torch.Tensor:
        """The exported stock encoder's input for a point batch: `inputs_embeds` = point-patch tokens + positions."""
        self.check_point_values(points)
        with torch.no_grad():
            tokens, pos = self.tokenize(points)[:2]
        return tokens + pos

    @torch.no_grad()
    def get_input_features(self, inputs: torch.Tensor) -> torch.Tensor:
        """Mean of the point transformer's output tokens over all point patches `[B, D]`. `inputs` is a point batch
        `[B, N, 3]`, or already-tokenized `inputs_embeds` `[B, G, D]` (the exported stock encoder's layout, see
        `export_check_input`), which is encoded as is."""
        hidden = self.config.backbone_config.hidden_size
        if isinstance(inputs, torch.Tensor) and inputs.dim() == 3 and inputs.shape[-1] == hidden != 3:
            return self.encode_tokens(inputs.to(self.mask_token.dtype)).mean(dim=1)
        self.check_point_values(inputs)
        tokens, pos = self.tokenize(inputs)[:2]
        return self.encode_tokens(tokens + pos).mean(dim=1)

    get_point_features = get_input_features

    def get_image_features(self, pixel_values, pooling=None):
        raise TypeError("I2P-MAE encodes point clouds: call get_input_features(point_values [B, N, 3]); images are "
                        "only seen by its frozen 2D teacher as depth projections")

    # -- multi-view projection / back-projection ---------------------------------------------------------
    def project(self, points: torch.Tensor):
        """Official `proj2img` for the three views: depth maps `[3, B, 3, S, S]` (z splatted over a d x d square,
        summed, sigmoid, normalized) and each point's pixel `(row, col)` `[3, B, N, 2]` (for back-projection)."""
        s = self.config.image_size
        d = self.config.projection_densify
        b, n, _ = points.shape
        r = torch.arange(d, device=points.device) - d // 2
        offsets = torch.stack(torch.meshgrid(r, r, indexing="ij"), dim=-1).reshape(-1, 2)  # [d*d, 2]
        mean = torch.tensor(self.config.image_mean[:3], device=points.device).view(1, 3, 1, 1)
        std = torch.tensor(self.config.image_std[:3], device=points.device).view(1, 3, 1, 1)
        images, pixels = [], []
        for perm in VIEW_PERMUTATIONS:
            p = points[..., list(perm)].float()
            lo = p.min(dim=1).values
            extent = (p.max(dim=1).values - lo)[:, :2].max(dim=-1).values
            grid = (extent / (s - 3)).clamp_min(1e-8).view(b, 1, 1)
            idx = torch.floor((p[..., :2] - lo[:, None, :2]) / grid)  # [B, N, 2]
            dense = (idx.unsqueeze(2) + offsets.view(1, 1, -1, 2) + 1).reshape(b, -1, 2)
            centre = torch.floor((dense.max(dim=1).values + dense.min(dim=1).values) / 2)
            shift = (s / 2 - centre - 1).unsqueeze(1)  # object to the image centre
            dense = (dense + shift).clamp(0, s - 1).long()
            flat = dense[..., 0] * s + dense[..., 1]
            depth = p[..., 2:3].unsqueeze(2).expand(-1, -1, offsets.shape[0], -1).reshape(b, -1)
            img = torch.zeros(b, s * s, device=points.device, dtype=torch.float32).scatter_add_(1, flat, depth)
            img = torch.sigmoid(img.view(b, 1, s, s)).expand(-1, 3, -1, -1)
            images.append((img - mean) / std)
            pixels.append((idx + 1 + shift).clamp(0, s - 1))
        return torch.stack(images), torch.stack(pixels)

    def sample_maps(self, maps: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Back-projection (official `I2P`): the value of a 2D map `[B, C, g, g]` bicubically upsampled to S x S, at
        pixel `(row, col)` `[B, M, 2]` -> `[B, M, C]` (sampled directly with `grid_sample`, the same interpolation)."""
        s = self.config.image_size
        uv = (2 * pixels + 1) / s - 1  # pixel centres in [-1, 1] (align_corners=False convention)
        grid = torch.stack([uv[..., 1], uv[..., 0]], dim=-1).unsqueeze(1)  # grid_sample wants (x=col, y=row)
        out = F.grid_sample(maps.float(), grid.to(maps.dtype).float(), mode="bicubic", padding_mode="border",
                            align_corners=False)
        return out.squeeze(2).transpose(1, 2)

    @torch.no_grad()
    def image_semantics(self, images: torch.Tensor):
        """Frozen 2D encoder on the `[V, B, 3, S, S]` depth maps: patch feature maps `[V, B, C, g, g]` and CLS-to-patch
        attention (last layer, mean over heads) `[V, B, 1, g, g]`."""
        v, b = images.shape[:2]
        out = self.image_encoder(pixel_values=images.flatten(0, 1), output_attentions=True)
        tokens = out.last_hidden_state[:, 1:]
        g = int(round(tokens.shape[1] ** 0.5))
        feats = tokens.transpose(1, 2).reshape(v, b, -1, g, g)
        attn = out.attentions[-1][:, :, 0, 1:].mean(dim=1)
        return feats, attn.reshape(v, b, 1, g, g)

    # -- masking ---------------------------------------------------------------------------------
    def guided_mask(self, saliency: torch.Tensor) -> torch.Tensor:
        """2D-guided masking: draw the order of the G tokens without replacement from
        `softmax(saliency / temperature)`; the first `G - num_masked` drawn stay visible. True = masked `[B, G]`."""
        b, g = saliency.shape
        probs = F.softmax(saliency.float() / self.config.saliency_temperature, dim=1)
        order = torch.multinomial(probs, g, replacement=False)
        mask = torch.ones(b, g, dtype=torch.bool, device=saliency.device)
        keep = g - self.config.num_masked
        mask.scatter_(1, order[:, :keep], False)
        return mask

    # -- forward ---------------------------------------------------------------------------------
    def forward(self, point_values: Optional[torch.Tensor] = None, bool_masked_pos: Optional[torch.Tensor] = None,
                return_dict: bool = True, **kwargs) -> SSLOutput:
        if point_values is None:
            raise ValueError("I2P-MAE needs point_values [batch, num_points, 3]")
        self.check_point_values(point_values)
        cfg = self.config
        points = point_values.float()
        b = points.shape[0]
        tokens, pos, neighborhoods, centers, nbr_idx, center_idx = self.tokenize(points)
        g, k = cfg.num_groups, cfg.group_size

        images, pixels = self.project(points)  # [V, B, 3, S, S], [V, B, N, 2]
        feats_2d, sal_2d = self.image_semantics(images)
        with torch.no_grad():
            if bool_masked_pos is None:
                centre_pixels = [gather_points(pixels[v], center_idx) for v in range(len(VIEW_PERMUTATIONS))]
                saliency = torch.stack([self.sample_maps(sal_2d[v], centre_pixels[v])[..., 0]
                                        for v in range(len(VIEW_PERMUTATIONS))]).mean(dim=0)  # [B, G]
                mask = self.guided_mask(saliency)
            else:
                mask = bool_masked_pos.to(points.device).bool()
                if mask.shape != (b, g) or (mask.sum(dim=1) != cfg.num_masked).any():
                    raise ValueError(f"bool_masked_pos must be [batch, {g}] with {cfg.num_masked} True per row")
        vis_idx = torch.nonzero(~mask)[:, 1].view(b, g - cfg.num_masked)
        msk_idx = torch.nonzero(mask)[:, 1].view(b, cfg.num_masked)

        # encoder on the visible tokens only
        x_vis = self.encode_tokens(gather_points(tokens + pos, vis_idx))

        # decoder on [visible; mask tokens] with positions added before every block (Point-MAE)
        x = torch.cat([self.decoder_embed(x_vis), self.mask_token.expand(b, cfg.num_masked, -1)], dim=1)
        order = torch.cat([vis_idx, msk_idx], dim=1)
        dpos = self.decoder_pos_embed(gather_points(centers, order))
        for block in self.decoder_blocks:
            x = block(x + dpos)
        x = self.decoder_norm(x)
        nv = vis_idx.shape[1]

        # 3D: Chamfer between predicted and true (centre-relative) point patches of the masked tokens
        rec_3d = self.head_3d(x[:, nv:]).reshape(-1, k, 3)
        gt_3d = gather_points(neighborhoods.flatten(2), msk_idx).reshape(-1, k, 3)
        loss_3d = chamfer_distance_l2(rec_3d, gt_3d)

        # 2D: the visible tokens regress the back-projected 2D features of their patch in the three views
        with torch.no_grad():
            vis_nbrs = gather_points(nbr_idx, vis_idx).reshape(b, -1)  # [B, Gv*K] point indices
            targets = []
            for v in range(len(VIEW_PERMUTATIONS)):
                px = gather_points(pixels[v], vis_nbrs)
                f = self.sample_maps(feats_2d[v], px).reshape(b, nv, k, -1).mean(dim=2)
                targets.append(f)
            target_2d = torch.cat(targets, dim=-1)
        rec_2d = self.head_2d(x[:, :nv])
        loss_2d = F.mse_loss(rec_2d.float(), target_2d)

        loss = cfg.loss_3d_weight * loss_3d + cfg.loss_2d_weight * loss_2d
        metrics = {"loss_3d": loss_3d.detach(), "loss_2d": loss_2d.detach()}
        out = SSLOutput(loss=loss, embeddings=x_vis.mean(dim=1).detach(), logits=rec_3d, metrics=metrics)
        return out if return_dict else out.to_tuple()

    # -- export ----------------------------------------------------------------------------------
    def export_encoder(self, save_directory, image_processor=None, attribute=None, push_to_hub=False, **push_kwargs):
        """The stock DistilBERT point transformer (loads with `AutoModel.from_pretrained`, call it with
        `inputs_embeds`), plus `point_tokenizer.safetensors` / `point_tokenizer.json`: the mini-PointNet and position
        MLP that turn a cloud into those embeddings (FPS from point 0, kNN groups, see `export_check_input`)."""
        from safetensors.torch import save_file

        out = super().export_encoder(save_directory, image_processor, attribute, push_to_hub=False)
        info_path = os.path.join(save_directory, "hf_ssl_export.json")
        info = json.load(open(info_path))
        info.update(input_name="inputs_embeds", feature_pooling="mean", point_tokenizer="point_tokenizer.json")
        json.dump(info, open(info_path, "w"), indent=2)
        state = {f"point_tokenizer.{k}": v.detach().contiguous() for k, v in self.point_tokenizer.state_dict().items()}
        state.update({f"point_pos_embed.{k}": v.detach().contiguous()
                      for k, v in self.point_pos_embed.state_dict().items()})
        save_file(state, os.path.join(save_directory, "point_tokenizer.safetensors"))
        json.dump({"num_groups": self.config.num_groups, "group_size": self.config.group_size,
                   "num_points": self.config.num_points, "tokenizer_hidden_dims": self.config.tokenizer_hidden_dims,
                   "sampling": "farthest point sampling from point 0, kNN (nearest first), centre-relative patches",
                   "inputs_embeds": "point_tokenizer(patches) + point_pos_embed(centres)"},
                  open(os.path.join(save_directory, "point_tokenizer.json"), "w"), indent=2)
        if push_to_hub:
            from huggingface_hub import HfApi

            repo_id = push_kwargs.pop("repo_id")
            api = HfApi(token=push_kwargs.pop("token", None))
            api.create_repo(repo_id, exist_ok=True, private=push_kwargs.pop("private", None))
            api.upload_folder(folder_path=str(save_directory), repo_id=repo_id,
                              commit_message=push_kwargs.pop("commit_message", "Upload exported encoder"))
        return out


__all__ = ["I2PMAEForSelfSupervisedPretraining", "MiniPointNet", "VIEW_PERMUTATIONS"]
