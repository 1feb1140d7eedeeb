"""DenseCLIP for semantic segmentation on an hf_ssl CLIP dual encoder: learnable context prompts, a
vision-to-language context decoder, pixel-text score maps, a semantic-FPN decoder and the auxiliary score-map
loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import backbone_family, pool_vit_tokens
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining
from ..heads import Attention
from ..outputs import SSLOutput
from ..prompting import encode_text_with_prompts
from .configuration_denseclip import DenseCLIPConfig


@dataclass
class DenseCLIPSegmentationOutput(SSLOutput):
    """`SSLOutput` plus `score_map` `[B, K, h, w]` (cosine of dense image embeddings with the K context-aware class
    embeddings, before the temperature) and `text_embeddings` `[B, K, D]` (after the context-decoder update).
    `logits` are the segmentation logits `[B, K, H, W]` at the input resolution."""

    score_map: Optional[torch.FloatTensor] = None
    text_embeddings: Optional[torch.FloatTensor] = None


# ----------------------------------------------------------------------------------------------------
# vision-to-language context decoder
# ----------------------------------------------------------------------------------------------------
class ContextDecoderLayer(nn.Module):
    """Pre-norm transformer decoder layer: self-attention among the class embeddings, cross-attention to the
    visual context, MLP (official `TransformerDecoderLayer`: dropout on the attention projections and MLP)."""

    def __init__(self, dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads)
        self.cross_attn = Attention(dim, num_heads)
        self.attn_dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        x = x + self.attn_dropout(self.self_attn(self.norm1(x)))
        x = x + self.attn_dropout(self.cross_attn(self.norm2(x), memory))
        return x + self.dropout(self.mlp(self.norm3(x)))


class ContextDecoder(nn.Module):
    """Text embeddings `[B, K, D]` attend to the visual context `[B, 1 + hw, D]` (global + dense image embeddings);
    returns the update `[B, K, D]` (official `ContextDecoder`: LN-Linear-LN memory projection, LN-Linear text
    projection, decoder layers, LN-Linear output projection)."""

    def __init__(self, visual_dim: int, width: int, num_heads: int, num_layers: int, dropout: float):
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(visual_dim), nn.Linear(visual_dim, width))
        self.layers = nn.ModuleList([ContextDecoderLayer(width, num_heads, dropout) for _ in range(num_layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, visual_dim))

    def forward(self, text: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        memory = self.memory_proj(visual)
        x = self.text_proj(text)
        for layer in self.layers:
            x = layer(x, memory)
        return self.out_proj(x)


# ----------------------------------------------------------------------------------------------------
# semantic FPN (Kirillov et al. 2019), as mmseg's FPN neck + FPNHead
# ----------------------------------------------------------------------------------------------------
class FPNNeck(nn.Module):
    """Lateral 1x1 convs, top-down nearest upsampling + sum, 3x3 output convs (no norm / activation)."""

    def __init__(self, in_channels: List[int], out_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList([nn.Conv2d(c, out_channels, 1) for c in in_channels])
        self.output = nn.ModuleList([nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels])

    def forward(self, feats: List[torch.Tensor]) -> List[torch.Tensor]:
        lat = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(lat) - 1, 0, -1):
            lat[i - 1] = lat[i - 1] + F.interpolate(lat[i], size=lat[i - 1].shape[-2:], mode="nearest")
        return [conv(x) for conv, x in zip(self.output, lat)]


class SemanticFPNHead(nn.Module):
    """Level i (i halvings below level 0) goes through max(1, i) conv3x3-BN-ReLU blocks, each followed by a 2x
    bilinear upsampling for i > 0; the levels are summed at level-0 resolution; dropout + 1x1 classifier."""

    def __init__(self, num_levels: int, channels: int, num_classes: int, dropout: float):
        super().__init__()
        heads = []
        for i in range(num_levels):
            blocks = []
            for _ in range(max(1, i)):
                blocks += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                           nn.ReLU(inplace=True)]
            heads.append(nn.Sequential(*blocks))
        self.scale_heads = nn.ModuleList(heads)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, feats: List[torch.Tensor]) -> torch.Tensor:
        size = feats[0].shape[-2:]
        out = 0
        for i, (head, x) in enumerate(zip(self.scale_heads, feats)):
            for j, layer in enumerate(head):
                x = layer(x)
                if i > 0 and isinstance(layer, nn.ReLU):
                    x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            if x.shape[-2:] != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            out = out + x
        return self.classifier(self.dropout(out))


# ----------------------------------------------------------------------------------------------------
class DenseCLIPForSemanticSegmentation(CLIPForSelfSupervisedPretraining):
    """DenseCLIP (Rao et al., CVPR 2022) on an hf_ssl CLIP dual encoder; see the package docstring.

    Build it from a pretrained hf_ssl CLIP checkpoint with :meth:`from_clip_pretrained`; `from_pretrained` reloads
    a saved DenseCLIP model.
    """

    config_class = DenseCLIPConfig

    def __init__(self, config: DenseCLIPConfig):
        super().__init__(config)
        family = backbone_family(config.backbone_config)
        if family not in ("convnet", "vit"):
            raise ValueError(f"DenseCLIP supports ConvNet and ViT encoders, got {config.backbone_config.model_type}")
        self.family = family
        text_dim = getattr(config.text_config, "hidden_size", None) or config.text_config.d_model
        d = config.projection_dim
        k = config.num_labels_segmentation
        # class-name tokens [K, class_token_length] (persistent buffers: saved and reloaded with the weights)
        ids, mask = self._tokenize_class_names(config)
        self.register_buffer("class_input_ids", ids)
        self.register_buffer("class_attention_mask", mask)
        self.contexts = nn.Parameter(torch.empty(1, config.num_context_tokens, text_dim))
        self.gamma = nn.Parameter(torch.full((d,), float(config.gamma_init)))
        self.context_decoder = ContextDecoder(d, config.context_decoder_width, config.context_decoder_heads,
                                              config.context_decoder_layers, config.context_decoder_dropout)
        in_channels = self._level_channels(config)
        in_channels[-1] += k  # the score map is concatenated to the last level (official score_concat_index = 3)
        self.neck = FPNNeck(in_channels, config.fpn_channels)
        self.decode_head = SemanticFPNHead(len(in_channels), config.fpn_channels, k, config.decoder_dropout)
        self.post_init()
        # the top module was already initialised by the CLIP constructor's post_init: fill the new parameters here
        with torch.no_grad():
            nn.init.trunc_normal_(self.contexts, std=1.0, a=-2.0, b=2.0)
            self.gamma.fill_(float(config.gamma_init))
        self.apply_frozen_parameters_()

    # -- construction helpers ----------------------------------------------------------------------------
    @staticmethod
    def _tokenize_class_names(config) -> Tuple[torch.Tensor, torch.Tensor]:
        from ...training.text import load_tokenizer

        tok = load_tokenizer(config.tokenizer_name_or_path, vocab_size=config.tokenizer_vocab_size,
                             context_length=config.context_length)
        enc = tok(list(config.segmentation_class_names), padding="max_length", truncation=True,
                  max_length=config.class_token_length, return_tensors="pt")
        return enc["input_ids"].long(), enc["attention_mask"].long()

    def _vit_layers(self, config) -> List[int]:
        depth = config.backbone_config.num_hidden_layers
        if config.vit_feature_layers is not None:
            return list(config.vit_feature_layers)
        # official [3, 5, 7, 11] for 12 blocks; evenly spaced ending at the last block otherwise
        if depth == 12:
            return [3, 5, 7, 11]
        return sorted({max(0, round((i + 1) * depth / 4) - 1) for i in range(4)}) if depth >= 4 else \
            [depth - 1] * 4

    def _level_channels(self, config) -> List[int]:
        if self.family == "vit":
            return [config.backbone_config.hidden_size] * 4
        bb = config.backbone_config
        if hasattr(bb, "hidden_sizes"):
            return list(bb.hidden_sizes)
        raise ValueError(f"cannot infer the stage widths of {bb.model_type}")

    def _init_weights(self, module):
        from transformers import initialization as init

        super()._init_weights(module)
        if isinstance(module, DenseCLIPForSemanticSegmentation) and hasattr(module, "contexts"):
            init.trunc_normal_(module.contexts, std=1.0, a=-2.0, b=2.0)  # official nn.init.trunc_normal_ defaults
            init.constant_(module.gamma, float(self.config.gamma_init))

    def frozen_parameter_prefixes(self) -> tuple:
        prefixes = super().frozen_parameter_prefixes()
        if self.config.freeze_text_encoder:
            prefixes += ("text_encoder.", "text_projection.")
        return prefixes

    @classmethod
    def from_clip_pretrained(cls, clip_path: str, **config_overrides) -> "DenseCLIPForSemanticSegmentation":
        """A DenseCLIP model whose image encoder, text encoder, projections and logit scale come from a saved hf_ssl
        CLIP checkpoint (`CLIPForSelfSupervisedPretraining.save_pretrained` folder or a Hub id); the DenseCLIP
        parts (contexts, context decoder, FPN) are freshly initialised. `config_overrides` set DenseCLIP
        options (e.g. `segmentation_class_names`)."""
        from transformers import AutoModel

        import hf_ssl  # noqa: F401  (registers the Auto classes)

        clip = AutoModel.from_pretrained(clip_path)
        if not isinstance(clip, CLIPForSelfSupervisedPretraining):
            raise ValueError(f"{clip_path} is a {type(clip).__name__}, not an hf_ssl CLIP dual encoder")
        src = clip.config
        keys = ("backbone_config", "text_config", "image_size", "num_channels", "projection_dim", "init_temperature",
                "max_logit_scale", "tokenizer_name_or_path", "tokenizer_vocab_size", "class_names",
                "caption_templates", "text_column", "feature_pooling", "image_mean", "image_std")
        kwargs = {key: getattr(src, key) for key in keys}
        kwargs.update(config_overrides)
        model = cls(cls.config_class(**kwargs))
        state = {k: v for k, v in clip.state_dict().items()}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected:
            raise ValueError(f"CLIP checkpoint has weights DenseCLIP does not know: {unexpected[:5]}")
        own = ("class_input_ids", "class_attention_mask", "contexts", "gamma", "context_decoder.", "neck.",
               "decode_head.")
        bad = [k for k in missing if not k.startswith(own)]
        if bad:
            raise ValueError(f"CLIP checkpoint lacks dual-encoder weights: {bad[:5]}")
        model.apply_frozen_parameters_()
        return model

    def param_groups(self, learning_rate: float, weight_decay: float = 1e-4) -> List[Dict]:
        """AdamW parameter groups of the official recipe: image encoder at `backbone_lr_multiplier` x lr, no weight
        decay on norms and biases, frozen parameters left out."""
        groups: Dict[Tuple[float, float], List[nn.Parameter]] = {}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            lr = learning_rate * (self.config.backbone_lr_multiplier if name.startswith("encoder.") else 1.0)
            wd = 0.0 if (p.dim() <= 1 or "norm" in name) else weight_decay
            groups.setdefault((lr, wd), []).append(p)
        return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]

    # -- features -----------------------------------------------------------------------------------------
    def multilevel_features(self, pixel_values: torch.Tensor):
        """(list of feature maps from fine to coarse, last feature map `[B, C, h, w]`, pooled feature `[B, C]`)."""
        if self.family == "convnet":
            out = self.encoder(pixel_values=pixel_values, output_hidden_states=True)
            feats = list(out.hidden_states[1:])
            pooled = out.pooler_output.flatten(1)
            return feats, feats[-1], pooled
        cfg = self.encoder.config
        size = cfg.image_size if isinstance(cfg.image_size, (tuple, list)) else (cfg.image_size, cfg.image_size)
        out = self.encoder(pixel_values=pixel_values, output_hidden_states=True,
                           interpolate_pos_encoding=tuple(pixel_values.shape[-2:]) != tuple(size))
        b, _, h, w = pixel_values.shape
        gh, gw = h // cfg.patch_size, w // cfg.patch_size

        def grid(tokens):
            return tokens[:, 1:].transpose(1, 2).reshape(b, -1, gh, gw)

        layers = self._vit_layers(self.config)
        maps = [grid(out.hidden_states[i + 1]) for i in layers]
        # a 4-level pyramid from the single-scale ViT (official: deconvs x4, x2, identity, max-pool)
        scales = (4.0, 2.0, 1.0, 0.5)
        feats = [m if s == 1.0 else F.interpolate(m, scale_factor=s, mode="bilinear", align_corners=False)
                 for m, s in zip(maps, scales)]
        last = out.last_hidden_state
        return feats, grid(last), pool_vit_tokens(last, self.config.feature_pooling)

    def class_text_embeddings(self) -> torch.Tensor:
        """Context-prompted class embeddings `[K, D]` in the joint space (before the context-decoder update)."""
        pooled = encode_text_with_prompts(self.text_encoder, self.class_input_ids, self.class_attention_mask,
                                          self.contexts if self.contexts.shape[1] else None)
        return self.text_projection(pooled)

    def compute_score_maps(self, pixel_values: torch.Tensor):
        """(score map `[B, K, h, w]`, updated text embeddings `[B, K, D]`, multilevel features, pooled feature)."""
        self.check_pixel_values(pixel_values)
        feats, last, pooled = self.multilevel_features(pixel_values)
        w = self.visual_projection.weight  # [D, C]: applied per pixel = the dense counterpart of the pooled head
        dense = torch.einsum("bchw,dc->bdhw", last, w)
        global_feat = self.visual_projection(pooled)
        b, d, h, wd = dense.shape
        visual_context = torch.cat([global_feat[:, None], dense.flatten(2).transpose(1, 2)], dim=1)  # [B, 1+hw, D]
        text = self.class_text_embeddings().unsqueeze(0).expand(b, -1, -1)
        if self.config.context_decoder_layers > 0:
            text = text + self.gamma * self.context_decoder(text, visual_context)
        score_map = torch.einsum("bdhw,bkd->bkhw", F.normalize(dense, dim=1), F.normalize(text, dim=-1))
        return score_map, text, feats, pooled

    def _check_labels(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:
        if labels.dim() != 3 or labels.shape[0] != pixel_values.shape[0] or \
                labels.shape[-2:] != pixel_values.shape[-2:]:
            raise ValueError(f"segmentation_labels must be [batch, height, width] = "
                             f"{[pixel_values.shape[0], *pixel_values.shape[-2:]]}, got {tuple(labels.shape)}")
        labels = labels.long()
        k = self.config.num_labels_segmentation
        bad = (labels < 0) | ((labels >= k) & (labels != self.config.ignore_index))
        if bool(bad.any()):
            raise ValueError(f"segmentation_labels must be class ids in [0, {k}) or ignore_index "
                             f"{self.config.ignore_index}")
        return labels

    def forward(self, pixel_values: torch.Tensor = None, segmentation_labels: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs):
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = pixel_values[0]
        if pixel_values is None:
            raise ValueError("DenseCLIP needs pixel_values")
        if segmentation_labels is None and labels is not None and torch.is_tensor(labels) and labels.dim() == 3:
            segmentation_labels = labels  # the transformers segmentation convention
        score_map, text, feats, pooled = self.compute_score_maps(pixel_values)
        feats = list(feats)
        concat = score_map.to(feats[-1].dtype)
        if concat.shape[-2:] != feats[-1].shape[-2:]:  # ViT pyramid: the last level is the stride-2x pooled map
            concat = F.interpolate(concat, size=feats[-1].shape[-2:], mode="bilinear", align_corners=False)
        feats[-1] = torch.cat([feats[-1], concat], dim=1)
        logits = self.decode_head(self.neck(feats))
        size = pixel_values.shape[-2:]
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        loss, metrics = None, None
        if segmentation_labels is not None:
            target = self._check_labels(segmentation_labels, pixel_values)
            ignore = self.config.ignore_index
            decode_loss = F.cross_entropy(logits.float(), target, ignore_index=ignore)
            aux_logits = F.interpolate(score_map / self.config.score_map_temperature, size=size, mode="bilinear",
                                       align_corners=False)
            identity_loss = F.cross_entropy(aux_logits.float(), target, ignore_index=ignore)
            loss = decode_loss + self.config.identity_loss_weight * identity_loss
            with torch.no_grad():
                valid = target != ignore
                n = valid.sum().clamp_min(1)
                metrics = {"decode_loss": decode_loss.detach(), "identity_loss": identity_loss.detach(),
                           "pixel_accuracy": ((logits.argmax(1) == target) & valid).sum().float() / n,
                           "score_map_accuracy": ((aux_logits.argmax(1) == target) & valid).sum().float() / n}
        return DenseCLIPSegmentationOutput(loss=loss, embeddings=pooled.detach(), logits=logits, metrics=metrics,
                                           score_map=score_map, text_embeddings=text)

    @torch.no_grad()
    def predict_segmentation(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Per-pixel class ids `[B, H, W]` (argmax of the decoder logits)."""
        return self.forward(pixel_values=pixel_values).logits.argmax(1)


__all__ = ["DenseCLIPForSemanticSegmentation", "DenseCLIPSegmentationOutput", "ContextDecoder", "FPNNeck",
           "SemanticFPNHead"]
