"""ViLLA: stage 1 (self-supervised region-attribute mapping) and stage 2 (region-text contrastive learning)."""

from __future__ import annotations

import io
import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from .. import losses
from ..backbones import backbone_family, encoder_feature_map
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining
from ..outputs import SSLOutput
from .configuration_villa import ViLLAConfig, ViLLAMappingConfig


# ----------------------------------------------------------------------------------------------------
# ROI align (torchvision.ops.roi_align semantics, written with grid_sample: no torchvision dependency)
# ----------------------------------------------------------------------------------------------------
def roi_align(features: torch.Tensor, boxes: torch.Tensor, batch_index: torch.Tensor, output_size: int,
              spatial_scale: float, sampling_ratio: int = 0, aligned: bool = True) -> torch.Tensor:
    """`[K, C, S, S]` bilinear ROI-align of `features [B, C, h, w]` for `boxes [K, 4]` (`x0, y0, x1, y1` in input
    pixels) of images `batch_index [K]`: each output bin averages `n x n` bilinear samples (`n = sampling_ratio`,
    or `ceil(roi size / S)` when 0); `aligned=True` shifts by half a pixel (torchvision's `aligned`). Samples
    beyond one cell outside the map are 0, the others are clamped to the border, as torchvision does."""
    if features.dim() != 4 or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"roi_align needs features [B, C, h, w] and boxes [K, 4], got {list(features.shape)} and "
                         f"{list(boxes.shape)}")
    k = boxes.shape[0]
    c, h, w = features.shape[1:]
    out = features.new_zeros(k, c, output_size, output_size)
    if k == 0:
        return out
    offset = 0.5 if aligned else 0.0
    # box geometry in float32 at least (bfloat16 coordinates under autocast would be off by up to a cell)
    b = boxes.to(torch.promote_types(features.dtype, torch.float32)) * spatial_scale - offset
    roi_w, roi_h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        n_y = torch.full((k,), sampling_ratio, dtype=torch.long)
        n_x = n_y.clone()
    else:
        n_y = torch.ceil(roi_h.detach() / output_size).clamp(min=1).long().cpu()
        n_x = torch.ceil(roi_w.detach() / output_size).clamp(min=1).long().cpu()
    for key in sorted({(int(a), int(c_)) for a, c_ in zip(n_y.tolist(), n_x.tolist())}):
        sel = torch.nonzero((n_y == key[0]) & (n_x == key[1])).flatten().to(boxes.device)
        ny, nx = key
        bb = b[sel]
        # sample coordinates per ROI: [K', S * ny] and [K', S * nx]
        iy = (torch.arange(output_size * ny, device=b.device, dtype=b.dtype) + 0.5) / ny  # bin units
        ix = (torch.arange(output_size * nx, device=b.device, dtype=b.dtype) + 0.5) / nx
        ys = bb[:, 1:2] + iy[None] * (roi_h[sel] / output_size)[:, None]
        xs = bb[:, 0:1] + ix[None] * (roi_w[sel] / output_size)[:, None]
        inside_y = (ys >= -1.0) & (ys <= h)
        inside_x = (xs >= -1.0) & (xs <= w)
        gy = ys.clamp(0, h - 1) / max(h - 1, 1) * 2 - 1 if h > 1 else torch.zeros_like(ys)
        gx = xs.clamp(0, w - 1) / max(w - 1, 1) * 2 - 1 if w > 1 else torch.zeros_like(xs)
        grid = torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)  # [K', Sy, Sx, 2]
        sampled = F.grid_sample(features[batch_index[sel]].to(grid.dtype), grid, mode="bilinear", padding_mode="border",
                                align_corners=True)  # [K', C, S*ny, S*nx]
        keep = (inside_y[:, :, None] & inside_x[:, None, :]).to(sampled.dtype)[:, None]
        sampled = sampled * keep
        pooled = sampled.reshape(len(sel), c, output_size, ny, output_size, nx).mean(dim=(3, 5))
        out[sel] = pooled.to(out.dtype)  # sampled in float32 (or float64), returned in the features' dtype
    return out


# ----------------------------------------------------------------------------------------------------
# stage 1: the mapping model
# ----------------------------------------------------------------------------------------------------
def villa_mapping_loss(scores: torch.Tensor, labels: torch.Tensor, official_denominator: bool = False,
                       gather: bool = True) -> torch.Tensor:
    """ViLLA's stage-1 image-attribute contrastive loss.

    `scores [B, A]`: image-attribute similarities (already divided by the temperature; the max over the image's
    regions), `labels [B, A]` (1 = the caption mentions the attribute). For every positive pair (i, a):
    `-log(exp(s_ia) / (exp(s_ia) + sum_{j: l_ja = 0} exp(s_ja)))` (the other images of the batch that lack
    attribute a are its negatives), averaged over all positive pairs of the global batch. `official_denominator`:
    the released code adds `exp(0) = 1` per positive image of the attribute to the denominator as well. Under DDP
    each process scores its rows against the gathered columns (with gradient), normalised by the global count,
    so the mean over processes is the single-process loss on the concatenated batch."""
    if scores.shape != labels.shape or scores.dim() != 2:
        raise ValueError(f"scores {list(scores.shape)} and labels {list(labels.shape)} must both be [batch, attributes]")
    s = scores.float()
    pos = labels.bool()
    all_s = losses.all_gather(s, with_grad=True) if gather else s
    all_pos = losses.all_gather(pos.to(torch.uint8)).bool() if gather else pos
    neg_lse = torch.logsumexp(all_s.masked_fill(all_pos, float("-inf")), dim=0)  # [A]
    if official_denominator:
        n_pos = all_pos.sum(0).to(s.dtype)
        neg_lse = torch.logaddexp(neg_lse, torch.log(n_pos.clamp(min=1e-30)))
    terms = torch.logaddexp(s, neg_lse[None].expand_as(s)) - s  # -log softmax of the positive
    terms = torch.where(pos, terms, torch.zeros_like(terms))
    count = losses.all_reduce(pos.sum().to(s.dtype).clone()) if gather else pos.sum().to(s.dtype)
    scale = losses.world_size() if gather else 1
    return terms.sum() / count.clamp(min=1.0) * scale


def assign_attributes_to_regions(scores: torch.Tensor, present: torch.Tensor, epsilon: float = 0.2,
                                 region_valid: Optional[torch.Tensor] = None) -> List[List[int]]:
    """The ViLLA mapping rule for one image: `scores [R, A]` region-attribute similarities; every attribute the
    caption mentions (`present [A]`) goes to every (valid) region whose score is >= the attribute's best region
    score minus `epsilon`. Returns, per region, the assigned attribute indices."""
    r = scores.shape[0]
    valid = torch.ones(r, dtype=torch.bool) if region_valid is None else region_valid.bool().cpu()
    scores = scores.detach().float().cpu()
    out: List[List[int]] = [[] for _ in range(r)]
    if not bool(valid.any()):
        return out
    for a in torch.nonzero(present.bool().cpu()).flatten().tolist():
        col = scores[:, a].masked_fill(~valid, float("-inf"))
        best = col.max()
        for i in torch.nonzero(col >= best - epsilon).flatten().tolist():
            out[i].append(a)
    return out


class ViLLAMappingModel(PreTrainedModel):
    """Stage 1: per-attribute projection heads over region embeddings (official `Stage1_RN50`): region r, attribute
    a -> `cos(head_a(region_r), attribute_embedding_a)`; the image-attribute score is the max over its regions.
    `attribute_embeddings` is a fixed buffer (official: CLIP text embeddings of the attribute names; set it with
    `set_attribute_embeddings`, e.g. from `attribute_text_embeddings`)."""

    config_class = ViLLAMappingConfig
    base_model_prefix = "villa_mapping"
    main_input_name = "region_embeds"

    def __init__(self, config: ViLLAMappingConfig):
        super().__init__(config)
        d = config.embedding_dim
        n = 1 if config.one_projection else config.num_attributes
        self.heads = nn.ModuleList([nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, d)) for _ in range(n)])
        self.register_buffer("attribute_embeddings", F.normalize(torch.randn(config.num_attributes, d), dim=-1))
        self.post_init()

    def _init_weights(self, module):
        from transformers import initialization as init

        if isinstance(module, nn.Linear):  # torch's default Linear init, as the released model
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            bound = 1.0 / math.sqrt(module.weight.shape[1])
            init.uniform_(module.bias, -bound, bound)

    @torch.no_grad()
    def set_attribute_embeddings(self, embeddings: torch.Tensor) -> None:
        if tuple(embeddings.shape) != tuple(self.attribute_embeddings.shape):
            raise ValueError(f"attribute embeddings must be {list(self.attribute_embeddings.shape)}, got "
                             f"{list(embeddings.shape)}")
        self.attribute_embeddings.copy_(F.normalize(embeddings.float(), dim=-1))

    def region_attribute_scores(self, region_embeds: torch.Tensor) -> torch.Tensor:
        """Cosine similarities `[B, R, A]` between head-projected regions and the attribute embeddings."""
        if region_embeds.dim() != 3 or region_embeds.shape[-1] != self.config.embedding_dim:
            raise ValueError(f"region_embeds must be [batch, regions, {self.config.embedding_dim}], got "
                             f"{list(region_embeds.shape)}")
        x = region_embeds.float()
        projected = []
        for head in self.heads:
            p = head(x)
            if self.config.adapter:
                p = 0.2 * p + 0.8 * x
            projected.append(F.normalize(p, dim=-1))
        attr = self.attribute_embeddings
        if len(projected) == 1:
            return projected[0] @ attr.t()
        stacked = torch.stack(projected, dim=2)  # [B, R, A, D]
        return (stacked * attr[None, None]).sum(-1)

    def forward(self, region_embeds: torch.Tensor, attribute_labels: Optional[torch.Tensor] = None,
                region_mask: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs) -> SSLOutput:
        scores = self.region_attribute_scores(region_embeds)  # [B, R, A]
        if region_mask is not None:
            if tuple(region_mask.shape) != tuple(scores.shape[:2]):
                raise ValueError(f"region_mask must be [batch, regions] = {list(scores.shape[:2])}")
            if not bool(region_mask.bool().any(1).all()):
                raise ValueError("every image needs at least one valid region")
            scores = scores.masked_fill(~region_mask.bool()[..., None], float("-inf"))
        image_scores = scores.max(dim=1).values / self.config.mapping_temperature  # [B, A]
        loss = None
        if attribute_labels is not None:
            if tuple(attribute_labels.shape) != tuple(image_scores.shape):
                raise ValueError(f"attribute_labels must be [batch, {self.config.num_attributes}], got "
                                 f"{list(attribute_labels.shape)}")
            loss = villa_mapping_loss(image_scores, attribute_labels, self.config.official_denominator)
        return SSLOutput(loss=loss, logits=scores.detach(), metrics={})


def fit_mapping_model(model: ViLLAMappingModel, inputs: Dict[str, torch.Tensor], steps: int = 200,
                      batch_size: int = 48, learning_rate: float = 1e-4, seed: int = 0) -> List[float]:
    """Train the stage-1 model on `inputs` (`region_embeds`, `region_mask`, `attribute_labels`, e.g. from
    `extract_mapping_inputs`) with AdamW (official: lr 1e-4, batch 48). Returns the loss per step."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    n = inputs["region_embeds"].shape[0]
    history = []
    model.train()
    for _ in range(steps):
        idx = torch.randperm(n, generator=g)[: min(batch_size, n)]
        out = model(inputs["region_embeds"][idx], inputs["attribute_labels"][idx], inputs["region_mask"][idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append(out.loss.item())
    model.eval()
    return history


# ----------------------------------------------------------------------------------------------------
# stage 2: region-text contrastive learning
# ----------------------------------------------------------------------------------------------------
def region_text_contrastive_loss(region_embeds: torch.Tensor, text_embeds: torch.Tensor, valid: torch.Tensor,
                                 logit_scale, lambda_region_to_text: float = 0.5, gather: bool = True):
    """ViLLA's stage-2 loss (official `Stage2_Loss`): `lambda CE(regions -> texts) + (1 - lambda) CE(texts ->
    regions)` over the valid (region, assigned text) rows, summed and divided by the number of rows.

    `region_embeds` / `text_embeds` `[M, D]` (L2-normalised, row i is a pair), `valid [M]` (padding rows are
    neither queries nor keys). Under DDP rows are scored against the gathered rows of all processes (with
    gradient), normalised by the global valid count, so N processes give the single-process loss.
    Returns `(loss, logits_region_to_text [M, N*M])`."""
    valid = valid.bool()
    all_text = losses.all_gather(text_embeds, with_grad=True) if gather else text_embeds
    all_region = losses.all_gather(region_embeds, with_grad=True) if gather else region_embeds
    all_valid = losses.all_gather(valid.to(torch.uint8)).bool() if gather else valid
    m = region_embeds.shape[0]
    targets = torch.arange(m, device=region_embeds.device) + (losses.rank() * m if gather else 0)
    neg = -1e4
    logits_rt = (logit_scale * region_embeds @ all_text.t()).float().masked_fill(~all_valid[None], neg)
    logits_tr = (logit_scale * text_embeds @ all_region.t()).float().masked_fill(~all_valid[None], neg)
    ce_rt = F.cross_entropy(logits_rt, targets, reduction="none")
    ce_tr = F.cross_entropy(logits_tr, targets, reduction="none")
    zero = torch.zeros_like(ce_rt)
    total = (lambda_region_to_text * torch.where(valid, ce_rt, zero).sum()
             + (1 - lambda_region_to_text) * torch.where(valid, ce_tr, zero).sum())
    count = losses.all_reduce(valid.sum().float().clone()) if gather else valid.sum().float()
    scale = losses.world_size() if gather else 1
    return total / count.clamp(min=1.0) * scale, logits_rt


class ViLLAForSelfSupervisedPretraining(CLIPForSelfSupervisedPretraining):
    """Stage 2 (see the package docstring): region embeddings ROI-pooled from the image encoder (ResNets: from the
    last-but-one stage, then the last stage and the pool per region, as the released RN50 model; other encoders:
    ROI-align on the final feature map, averaged), projected into the joint space, against the CLIP core's text
    embeddings of the assigned sentences."""

    config_class = ViLLAConfig

    def __init__(self, config: ViLLAConfig):
        super().__init__(config)
        self.apply_frozen_parameters_()

    def frozen_parameter_prefixes(self) -> tuple:
        prefixes = super().frozen_parameter_prefixes()
        if self.config.freeze_text_encoder:
            prefixes += ("text_encoder.", "text_projection.")
        if not self.config.learnable_temperature:
            prefixes += ("logit_scale",)
        return prefixes

    def region_scale(self) -> torch.Tensor:
        if self.config.learnable_temperature:
            return self.clamped_logit_scale()
        return self.logit_scale.new_tensor(1.0 / self.config.region_temperature)

    def _resnet_split(self) -> bool:
        return self.config.backbone_config.model_type == "resnet" and len(self.encoder.encoder.stages) >= 2

    def region_features(self, pixel_values: torch.Tensor, region_boxes: torch.Tensor) -> torch.Tensor:
        """Backbone features `[B, R, D]` of `region_boxes [B, R, 4]` (pixels of `pixel_values`)."""
        self.check_pixel_values(pixel_values)
        if region_boxes.dim() != 3 or region_boxes.shape[-1] != 4 or region_boxes.shape[0] != pixel_values.shape[0]:
            raise ValueError(f"region_boxes must be [batch, regions, 4] for {pixel_values.shape[0]} images, got "
                             f"{list(region_boxes.shape)}")
        b, r = region_boxes.shape[:2]
        boxes = region_boxes.reshape(b * r, 4).to(pixel_values.dtype)
        index = torch.arange(b, device=pixel_values.device).repeat_interleave(r)
        cfg = self.config
        if self._resnet_split():
            enc = self.encoder
            x = enc.embedder(pixel_values)
            for stage in enc.encoder.stages[:-1]:
                x = stage(x)
            rois = roi_align(x, boxes, index, cfg.roi_output_size, x.shape[-1] / pixel_values.shape[-1],
                             cfg.roi_sampling_ratio, aligned=True)
            feats = enc.pooler(enc.encoder.stages[-1](rois)).flatten(1)
        else:
            fmap = encoder_feature_map(self.encoder, pixel_values)
            rois = roi_align(fmap, boxes, index, cfg.roi_output_size, fmap.shape[-1] / pixel_values.shape[-1],
                             cfg.roi_sampling_ratio, aligned=True)
            feats = rois.mean(dim=(2, 3))
        return feats.reshape(b, r, -1)

    def region_embeddings(self, pixel_values: torch.Tensor, region_boxes: torch.Tensor) -> torch.Tensor:
        """L2-normalised joint-space region embeddings `[B, R, P]`."""
        return F.normalize(self.visual_projection(self.region_features(pixel_values, region_boxes)), dim=-1)

    def forward(self, pixel_values: torch.Tensor = None, region_boxes: torch.Tensor = None,
                input_ids: torch.Tensor = None, attention_mask: Optional[torch.Tensor] = None,
                region_valid: Optional[torch.Tensor] = None, return_dict: bool = True, **kwargs) -> SSLOutput:
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = pixel_values[0]
        if pixel_values is None or input_ids is None or region_boxes is None:
            raise ValueError("ViLLA stage 2 needs pixel_values, region_boxes and input_ids (one text per region; "
                             "use the 'villa_regions' view policy)")
        if input_ids.dim() != 3:
            raise ValueError(f"input_ids must be [batch, regions, length], got shape {tuple(input_ids.shape)}")
        b, r, length = input_ids.shape
        if tuple(region_boxes.shape[:2]) != (b, r) or pixel_values.shape[0] != b:
            raise ValueError(f"{pixel_values.shape[0]} images, region_boxes {list(region_boxes.shape)} and input_ids "
                             f"{list(input_ids.shape)} disagree (one text per region)")
        if region_valid is None:
            region_valid = torch.ones(b, r, dtype=torch.bool, device=input_ids.device)
        if tuple(region_valid.shape) != (b, r):
            raise ValueError(f"region_valid must be [batch, regions] = {[b, r]}, got {list(region_valid.shape)}")
        regions = self.region_embeddings(pixel_values, region_boxes)
        texts = self.encode_text(input_ids.reshape(b * r, length),
                                 None if attention_mask is None else attention_mask.reshape(b * r, length))
        scale = self.region_scale()
        loss, logits = region_text_contrastive_loss(regions.reshape(b * r, -1), texts, region_valid.reshape(-1),
                                                    scale, self.config.lambda_region_to_text)
        with torch.no_grad():
            valid = region_valid.reshape(-1).bool()
            targets = torch.arange(b * r, device=logits.device) + losses.rank() * b * r
            acc = ((logits.argmax(-1) == targets) & valid).float().sum() / valid.sum().clamp(min=1)
            pooled = self.region_features(pixel_values, region_boxes[:, -1:])[:, 0]
        metrics = {"region_text_accuracy": acc, "valid_regions": valid.float().sum(), "logit_scale": scale.detach()}
        output = SSLOutput(loss=loss, embeddings=pooled.detach(), logits=logits.detach(), metrics=metrics)
        return output if return_dict else output.to_tuple()


# ----------------------------------------------------------------------------------------------------
# the stage-1 -> stage-2 pipeline
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def attribute_text_embeddings(model: CLIPForSelfSupervisedPretraining, attribute_names: Sequence[str],
                              tokenizer=None) -> torch.Tensor:
    """Joint-space text embeddings `[A, P]` of the attribute names (official: CLIP text embeddings)."""
    from ...training.text import load_tokenizer

    cfg = model.config
    tokenizer = tokenizer or load_tokenizer(cfg.tokenizer_name_or_path, vocab_size=cfg.tokenizer_vocab_size,
                                            context_length=cfg.context_length)
    enc = tokenizer(list(attribute_names), padding="max_length", truncation=True, max_length=cfg.context_length,
                    return_tensors="pt")
    device = model.logit_scale.device
    was_training = model.training
    model.eval()
    out = model.encode_text(enc["input_ids"].to(device), enc["attention_mask"].to(device))
    model.train(was_training)
    return out


@torch.no_grad()
def extract_mapping_inputs(region_model: ViLLAForSelfSupervisedPretraining, source: str = "builtin:digits",
                           split: str = "train", max_samples: Optional[int] = None, batch_size: int = 64,
                           seed: int = 0) -> Dict[str, object]:
    """Stage-1 inputs from an image(-text) stream: per image the (grid or data) regions' joint-space embeddings by
    the frozen `region_model` (whole image excluded), the attribute labels found in its caption, and what is needed
    to write the assignments (`examples`: image bytes, label, caption, original boxes)."""
    from ...training.data import decode_image, load_image_stream
    from .views_villa import ViLLARegionPolicy, find_attributes

    cfg = region_model.config
    policy = ViLLARegionPolicy(cfg)
    names = list(cfg.attribute_names)
    rng = np.random.default_rng(seed)
    ds = load_image_stream(source, split=split, shuffle_buffer=0, shard_by_node=False)
    was_training = region_model.training
    region_model.eval()
    device = region_model.logit_scale.device
    rows, embeds, masks, labels = [], [], [], []
    pending = []

    def flush():
        if not pending:
            return
        pix = torch.stack([p["pixel_values"] for p in pending]).to(device)
        boxes = torch.stack([p["region_boxes"][:-1] for p in pending]).to(device)
        embeds.append(region_model.region_embeddings(pix, boxes).cpu())
        pending.clear()

    for example in ds:
        raw = example.get("image")
        if raw is None:
            continue
        try:
            img = decode_image(raw, policy.mode)
        except ValueError:
            continue
        caption = policy.full_caption(img, example, rng)
        boxes = policy.regions(img, example)
        view = policy(img, rng, {**example, "text": caption, cfg.region_text_column: [caption] * len(boxes)})
        pending.append(view)
        valid = torch.zeros(int(cfg.max_regions), dtype=torch.bool)
        valid[: len(boxes)] = True
        masks.append(valid)
        present = find_attributes(caption, names)
        labels.append(torch.tensor([a in present for a in names], dtype=torch.float32))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        label = next((int(example[k]) for k in ("label", "labels") if example.get(k) is not None), -1)
        rows.append({"image": {"bytes": buf.getvalue(), "path": None}, "label": label, "text": caption,
                     "regions": boxes})
        if len(pending) == batch_size:
            flush()
        if max_samples is not None and len(rows) >= max_samples:
            break
    flush()
    region_model.train(was_training)
    return {"region_embeds": torch.cat(embeds), "region_mask": torch.stack(masks),
            "attribute_labels": torch.stack(labels), "examples": rows, "attribute_names": names}


@torch.no_grad()
def region_attribute_assignments(mapping_model: ViLLAMappingModel, inputs: Dict[str, object],
                                 epsilon: Optional[float] = None, seed: int = 0) -> List[List[str]]:
    """Per image, per region, the assigned text: the caption sentences of every attribute mapped to the region
    (`assign_attributes_to_regions`), joined with " . " as released; "" for a region without attributes."""
    from .views_villa import attribute_sentence

    eps = mapping_model.config.epsilon if epsilon is None else epsilon
    names = list(mapping_model.config.attribute_names)
    rng = np.random.default_rng(seed)
    mapping_model.eval()
    scores = mapping_model.region_attribute_scores(inputs["region_embeds"].to(mapping_model.attribute_embeddings))
    out = []
    for i, row in enumerate(inputs["examples"]):
        n = len(row["regions"])
        assigned = assign_attributes_to_regions(scores[i, :n], inputs["attribute_labels"][i] > 0, eps,
                                                inputs["region_mask"][i, :n])
        sentence = {a: attribute_sentence(row["text"], names[a], rng) for a in {a for r in assigned for a in r}}
        out.append([" . ".join(sentence[a] for a in region) for region in assigned])
    return out


def write_region_attribute_assignments(mapping_model: ViLLAMappingModel, inputs: Dict[str, object],
                                       output_path: str, epsilon: Optional[float] = None, seed: int = 0) -> str:
    """Write the stage-2 training data as a parquet file (columns `image`, `label`, `text`, `regions`,
    `region_texts`) that `hf_ssl.training.data.load_image_stream(output_path)` streams and the `villa_regions`
    policy consumes."""
    import os

    from datasets import Dataset
    from datasets import Image as ImageFeature

    texts = region_attribute_assignments(mapping_model, inputs, epsilon, seed)
    rows = [{**row, "region_texts": t} for row, t in zip(inputs["examples"], texts)]
    ds = Dataset.from_list(rows).cast_column("image", ImageFeature(decode=False))
    os.makedirs(os.path.dirname(os.path.abspath(output_path)) or ".", exist_ok=True)
    ds.to_parquet(output_path)
    return output_path


__all__ = ["roi_align", "villa_mapping_loss", "assign_attributes_to_regions", "ViLLAMappingModel",
           "fit_mapping_model", "region_text_contrastive_loss", "ViLLAForSelfSupervisedPretraining",
           "attribute_text_embeddings", "extract_mapping_inputs", "region_attribute_assignments",
           "write_region_attribute_assignments"]
