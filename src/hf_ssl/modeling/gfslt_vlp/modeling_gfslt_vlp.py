"""GFSLT-VLP pretraining model: a video-text CLIP (visual encoder over the frame sequence, text encoder, learnable
temperature, contrastive loss over the DDP-gathered batch) plus masked self-supervised learning on the text side (a
stock text decoder reconstructs the sentence from the masked sentence's text-encoder states, official VLP-V2, or
from the clip's visual tokens).

    tokens        = encoder(clip)                                       stock VideoMAEModel, [B, N, D]
    v             = normalize(W_v mean(tokens))                          bias-free visual head (official 'linear')
    t             = normalize(text_encoder(sentence)[EOS])               identity text head (official 'identy')
    L_clip        = clip_contrastive_loss(v, t, exp(logit_scale))        gathered negatives (or the official KL form)
    memory        = stopgrad(text_encoder(masked sentence)) | tokens     decoder_condition "text" | "visual"
    logits        = decoder(sentence[:-1], cross-attention to memory)    stock causal decoder (mBART)
    L_mlm         = CE_smooth0.2(logits, sentence[1:])                   all tokens (official) or masked ones only
    loss          = L_clip + mlm_weight * L_mlm
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM

from .. import losses
from ..backbones import feature_dim
from ..clip.modeling_clip import CLIPForSelfSupervisedPretraining, clip_contrastive_loss
from ..outputs import SSLOutput
from ..video_base import VideoSSLPreTrainedModel
from .configuration_gfslt_vlp import GFSLTVLPConfig


def kl_soft_contrastive_loss(video_embeds: torch.Tensor, text_embeds: torch.Tensor, logit_scale: torch.Tensor,
                             target_scale: float = 10.0, gather: bool = True):
    """The official `KLLoss` in both directions: `KL(softmax(target_scale * I) || softmax(logits))` per row, averaged
    over rows (official: `KLDivLoss(mean over B x B) * B`) and the two directions. Columns are the DDP-gathered other
    modality (with gradient), the target one-hot offset by `rank * B`. Returns `(loss, logits_per_video)`."""
    all_text = losses.all_gather(text_embeds, with_grad=True) if gather else text_embeds
    all_video = losses.all_gather(video_embeds, with_grad=True) if gather else video_embeds
    b = video_embeds.shape[0]
    offset = losses.rank() * b if gather else 0
    targets = torch.arange(b, device=video_embeds.device) + offset
    logits_v = logit_scale * video_embeds @ all_text.t()
    logits_t = logit_scale * text_embeds @ all_video.t()
    soft = torch.softmax(target_scale * F.one_hot(targets, all_text.shape[0]).float(), dim=1)

    def kl(logits):
        return (soft * (soft.log() - F.log_softmax(logits.float(), dim=1))).sum(dim=1).mean()

    return (kl(logits_v) + kl(logits_t)) / 2, logits_v


def masked_reconstruction_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float,
                               gather_counts: bool = True) -> torch.Tensor:
    """Token cross entropy (with label smoothing) summed over the target tokens (`labels != -100`) and divided by
    their number over all processes (`losses.all_reduce`), times the world size: N processes give the global token
    mean after DDP's gradient averaging."""
    total = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                            label_smoothing=label_smoothing, reduction="sum")
    count = (labels != -100).sum().to(total.dtype).detach().clone()
    if gather_counts:
        count = losses.all_reduce(count)
    return total * (losses.world_size() if gather_counts else 1) / count.clamp(min=1)


class GFSLTVLPForSelfSupervisedPretraining(VideoSSLPreTrainedModel, CLIPForSelfSupervisedPretraining):
    """GFSLT-VLP pretraining (see `hf_ssl.modeling.gfslt_vlp`): `encoder` (stock video encoder), `text_encoder`
    (stock text model), `visual_projection`, `text_projection` (identity by default), `logit_scale`, `decoder` (stock
    causal text decoder with cross-attention) and `decoder_memory_projection` (to the decoder width)."""

    config_class = GFSLTVLPConfig
    input_modalities = ("video", "text")

    def __init__(self, config: GFSLTVLPConfig):
        super(CLIPForSelfSupervisedPretraining, self).__init__(config)  # the CLIP core's pieces are built here
        self.encoder = self._build_encoder()
        self.text_encoder = AutoModel.from_config(config.text_config)
        vis_dim = feature_dim(config.backbone_config)
        text_dim = config.text_hidden_size
        self.visual_projection = nn.Linear(vis_dim, config.projection_dim, bias=False)
        self.text_projection = (nn.Linear(text_dim, config.projection_dim, bias=False) if config.text_projection
                                else nn.Identity())
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.init_temperature)))
        self.decoder = AutoModelForCausalLM.from_config(config.decoder_config)
        dec_dim = int(getattr(config.decoder_config, "d_model", None) or config.decoder_config.hidden_size)
        memory_dim = text_dim if config.decoder_condition == "text" else vis_dim
        self.decoder_memory_projection = nn.Linear(memory_dim, dec_dim) if memory_dim != dec_dim else nn.Identity()
        self.post_init()

    def _init_weights(self, module):
        from transformers import initialization as init

        super()._init_weights(module)
        if isinstance(module, nn.Embedding):  # mBART / CLIP text init: N(0, 0.02), zero padding row
            init.normal_(module.weight, std=self.config.initializer_range)
            if module.padding_idx is not None:
                init.zeros_(module.weight[module.padding_idx])

    # -- features ---------------------------------------------------------------------------------------
    def encode_video(self, pixel_values_videos: torch.Tensor, return_tokens: bool = False):
        """L2-normalised joint-space clip embeddings `[B, projection_dim]` (and the encoder's tokens)."""
        self.check_video_values(pixel_values_videos)
        tokens = self.encoder(pixel_values=pixel_values_videos).last_hidden_state
        joint = F.normalize(self.visual_projection(tokens.mean(dim=1)), dim=-1)
        return (joint, tokens) if return_tokens else joint

    @torch.no_grad()
    def get_joint_video_features(self, pixel_values_videos: torch.Tensor) -> torch.Tensor:
        """Joint-space clip embeddings (video->text retrieval, zero-shot); `get_input_features` stays the encoder's
        pooled feature (k-NN, export)."""
        return self.encode_video(pixel_values_videos)

    def encode_image(self, pixel_values: torch.Tensor, return_pooled: bool = False):
        """Images as static clips (each repeated `num_frames` times) in the joint space."""
        if pixel_values.dim() == 4:
            self.check_pixel_values(pixel_values)
            pixel_values = pixel_values.unsqueeze(1).expand(-1, self.config.num_frames, -1, -1, -1)
        joint, tokens = self.encode_video(pixel_values, return_tokens=True)
        return (joint, tokens.mean(1)) if return_pooled else joint

    def text_states(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self.text_encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def decode(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor], memory: torch.Tensor,
               memory_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Teacher-forced decoder logits `[B, L - 1, vocab]` predicting `input_ids[:, 1:]` from `input_ids[:, :-1]`
        and cross-attention to `memory` `[B, M, *]`."""
        memory = self.decoder_memory_projection(memory)
        out = self.decoder(input_ids=input_ids[:, :-1],
                           attention_mask=None if attention_mask is None else attention_mask[:, :-1],
                           encoder_hidden_states=memory, encoder_attention_mask=memory_mask, use_cache=False)
        return out.logits

    # -- training ---------------------------------------------------------------------------------------
    def forward(self, pixel_values_videos: torch.Tensor = None, input_ids: torch.Tensor = None,
                attention_mask: Optional[torch.Tensor] = None, masked_input_ids: Optional[torch.Tensor] = None,
                masked_positions: Optional[torch.Tensor] = None, synthetic_clip=None, return_dict: bool = True,
                **kwargs) -> SSLOutput:
        """
        Args:
            pixel_values_videos: `[B, T, C, H, W]` clips.
            input_ids / attention_mask: `[B, L]` tokenized sentences (the `gfslt_vlp` policy).
            masked_input_ids: `[B, L]` the same sentences with masked words (mask token); None skips the
                reconstruction term.
            masked_positions: `[B, L]` bool, which tokens were masked (needed for `mlm_loss_tokens="masked"`).

        Returns:
            `SSLOutput(loss, embeddings, logits, metrics)`; `logits` = clip->text logits `[B, N * B]`.
        """
        if isinstance(pixel_values_videos, (list, tuple)):
            pixel_values_videos = pixel_values_videos[0]
        if pixel_values_videos is None or input_ids is None:
            raise ValueError("GFSLT-VLP needs pixel_values_videos and input_ids (use the 'gfslt_vlp' view policy)")
        if pixel_values_videos.shape[0] != input_ids.shape[0]:
            raise ValueError(f"{pixel_values_videos.shape[0]} clips but {input_ids.shape[0]} sentences")
        cfg = self.config
        video_embeds, tokens = self.encode_video(pixel_values_videos, return_tokens=True)
        text_embeds = self.encode_text(input_ids, attention_mask)
        scale = self.clamped_logit_scale()
        if cfg.contrastive_loss == "clip":
            contrastive, logits = clip_contrastive_loss(video_embeds, text_embeds, scale)
        else:
            contrastive, logits = kl_soft_contrastive_loss(video_embeds, text_embeds, scale)
        loss = contrastive
        b = video_embeds.shape[0]
        metrics = {"contrastive_loss": contrastive.detach(), "logit_scale": scale.detach()}
        if masked_input_ids is not None and cfg.mlm_weight > 0:
            if masked_input_ids.shape != input_ids.shape:
                raise ValueError(f"masked_input_ids {tuple(masked_input_ids.shape)} must match input_ids "
                                 f"{tuple(input_ids.shape)}")
            vocab = cfg.text_config.vocab_size
            if int(masked_input_ids.max()) >= vocab or int(masked_input_ids.min()) < 0:
                raise ValueError(f"masked_input_ids out of range for vocab size {vocab}")
            if cfg.decoder_condition == "text":  # official V2: the text encoder's states, no gradient into it
                with torch.no_grad():
                    memory = self.text_states(masked_input_ids, attention_mask).detach()
                memory_mask = attention_mask
            else:
                memory, memory_mask = tokens, None
            labels = input_ids[:, 1:].clone()
            if attention_mask is not None:
                labels[attention_mask[:, 1:] == 0] = -100
            if cfg.mlm_loss_tokens == "masked":
                if masked_positions is None:
                    raise ValueError("mlm_loss_tokens='masked' needs masked_positions")
                labels[~masked_positions[:, 1:].bool()] = -100
            dec_logits = self.decode(input_ids, attention_mask, memory, memory_mask)
            mlm = masked_reconstruction_loss(dec_logits, labels, cfg.mlm_label_smoothing)
            loss = loss + cfg.mlm_weight * mlm
            with torch.no_grad():
                metrics["mlm_loss"] = mlm.detach()
                if masked_positions is not None:
                    sel = masked_positions[:, 1:].bool() & (labels != -100) if cfg.mlm_loss_tokens == "all" else (
                        labels != -100)
                    if sel.any():
                        hits = dec_logits.argmax(-1)[sel] == input_ids[:, 1:][sel]
                        metrics["masked_token_accuracy"] = hits.float().mean()
        with torch.no_grad():
            targets = torch.arange(b, device=logits.device) + losses.rank() * b
            metrics["v2t_accuracy"] = (logits.argmax(-1) == targets).float().mean()
            if synthetic_clip is not None:
                metrics.update(self.synthetic_metric(synthetic_clip, logits.device))
        out = SSLOutput(loss=loss, embeddings=tokens.mean(1).detach(), logits=logits.detach(), metrics=metrics)
        return out if return_dict else out.to_tuple()


__all__ = ["GFSLTVLPForSelfSupervisedPretraining", "kl_soft_contrastive_loss", "masked_reconstruction_loss"]
