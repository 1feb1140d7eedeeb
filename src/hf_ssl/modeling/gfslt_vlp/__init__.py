"""GFSLT-VLP: Gloss-free Sign Language Translation: Improving from Visual-Language Pretraining.

Benjia Zhou, Zhigang Chen, Albert Clapés, Jun Wan, Yanyan Liang, Sergio Escalera, Zhen Lei, Du Zhang. ICCV 2023
(arXiv:2307.14768). Official code: https://github.com/zhoubenjia/GFSLT-VLP (`models.py`: `SLRCLIP`, `TextCLIP`,
`ImageCLIP`, `Text_Decoder`, `gloss_free_model`; `train_vlp.py` / `train_vlp_v2.py`; `utils.py`: `KLLoss`,
`NoiseInjecting`).

The method has two stages; hf_ssl's method `"gfslt_vlp"` is the first, visual-language pretraining (VLP, in its
official V2 form that pretrains the visual encoder AND the text decoder):

* A visual encoder over the frame sequence of a sign video and a text encoder over the spoken-language sentence are
  aligned CLIP-style: visual feature -> bias-free linear head, text feature (the sentence's last token) with an
  identity head, both L2-normalised, learnable logit scale initialised to log(1/0.07), symmetric contrastive loss
  between the paired clips and sentences of the batch (official `KLLoss`: KL to `softmax(10 I)` soft targets).
* Masked self-supervised learning on the text side: words of the sentence are masked (`NoiseInjecting`, default
  `omit_last`: the last ceil(U(0, 0.15) n) words become `<mask>`), the text encoder encodes the masked sentence, and
  a 3-layer mBART text decoder reconstructs the whole sentence (teacher forcing, cross-attention to the masked
  sentence's states, cross entropy with label smoothing 0.2, weight lambda = 1). In V2 the decoder has its own
  optimiser (AdamW 1e-3) and the text encoder gets no gradient from this term.
* Stage 2 (translation, `gloss_free_model`): the pretrained visual encoder feeds an encoder-decoder (mBART) whose
  decoder is initialised from the VLP text decoder, trained with cross entropy on the sentences. Not part of this
  method (see DEVIATIONS); the decoder here is a stock `MBartForCausalLM` that such a model can be initialised from.

hf_ssl implementation:

* Built on the CLIP core (`modeling/clip/`): the config subclasses `CLIPSSLConfig` (text encoder config, tokenizer,
  logit scale, zero-shot prompts) and `VideoSSLConfig` (video encoder, `num_frames`, `video_eval`); the model
  subclasses `CLIPForSelfSupervisedPretraining` (reusing `encode_text`, `clamped_logit_scale`,
  `zero_shot_classifier`, `get_text_features`) and `VideoSSLPreTrainedModel` (clip input `pixel_values_videos`
  `[B, T, C, H, W]`, `get_input_features`, static-clip `get_image_features`, vanilla VideoMAE export); the loss is
  the core's `clip_contrastive_loss` (DDP-gathered negatives), or `contrastive_loss="kl_soft"` for the official form.
* Text encoder: a stock transformers text model (CLIPTextModel, EOS pooling); tokenizer: the core's offline
  byte-level BPE (`training/text.py`) trained on its corpus plus the motion sentences, with a `<|mask|>` token.
* Text decoder: stock `MBartForCausalLM` built from `decoder_config` (vocabulary = the text encoder's), with a linear
  map of the memory to its width when they differ.
* Data: `builtin:moving_digits` clips; the sentence of a clip is its text column if it has one, else generated from
  the label and the motion MEASURED on the sampled frames (intensity centroids): "a three moving up and to the
  left, then bouncing down" (`views_gfslt_vlp.py`). `video_text_evaluate` gives video<->text recall@k and zero-shot
  accuracy (prompt ensemble "a {} moving <direction>").

Paper / official defaults kept: joint width 1024 with a bias-free visual head and identity text head, logit scale
log(1/0.07), symmetric contrastive loss, noise rate 0.15 `omit_last` masking of whole words, 3 x 1024 mBART decoder
(8 heads, FFN 4096, pre-norm, scaled embeddings, untied head) cross-attending to the masked sentence's text-encoder
states without gradient into the text encoder, cross entropy on all sentence tokens with label smoothing 0.2,
lambda 1.

DEVIATIONS:

1. Visual encoder: a stock `VideoMAEModel` (tubelet video ViT, mean of all tokens) instead of the per-frame ImageNet
   ResNet-18 + temporal 1-D convolutions (K5-P2-K5-P2) + 3-layer mBART encoder with a CLS token (not one transformers
   model, and ImageNet weights are not downloaded); fixed-length clips (`num_frames`) instead of up to 300 frames with
   padding masks. No pretrained mBART-cc25 weights: the text encoder is a from-scratch CLIPTextModel of the mBART
   encoder's size (causal attention, EOS pooling) and the decoder a from-scratch mBART decoder.
2. Loss: the CLIP core's symmetric InfoNCE by default; the official KL-to-`softmax(10 I)` form is
   `contrastive_loss="kl_soft"` (both have their minimum at the matching pairs; the KL form is a 10-temperature
   label smoothing). The logit scale is clamped at 100 (CLIP core; official: unclamped).
3. Masking replaces every token of a masked word by the mask token (the sentence keeps its length, so masked
   positions align with the targets) instead of one `<mask>` per word; words are whitespace-separated as officially.
4. One optimiser for everything (the Trainer's): the official V2 steps the decoder with its own AdamW (lr 1e-3)
   after the contrastive step; here both terms are summed into one loss (the decoder term only reaches the decoder
   and `decoder_memory_projection` by default, as officially).
5. Options beyond the official code: `decoder_condition="visual"` (the decoder cross-attends to the clip's visual
   tokens, so the reconstruction also trains the visual encoder, as in the translation stage) and
   `mlm_loss_tokens="masked"` (loss on the masked tokens only); the reconstruction loss is normalised by the global
   token count (exact under DDP).
6. Augmentation: clip-consistent random resized crop (scale 0.64-1, ~ official random resize +-20% + crop) and
   brightness / colour jitter (official 0.1-1.5, p 0.5 each); the official random rotation (30 deg) and translation
   are not available in the clip augmenter. No horizontal flip (it would contradict the motion words).
7. Stage 2 (gloss-free translation fine-tuning and beam-search decoding, BLEU / ROUGE) is not implemented.
8. Demo sentences name the digit from the clip's label, so the digits demo is weakly supervised like CLIP's; the
   motion part of the sentence is measured from the frames.
"""

from ..registry import MethodSpec
from . import views_gfslt_vlp  # noqa: F401  (registers the "gfslt_vlp" / "gfslt_vlp_eval" view policies)
from .configuration_gfslt_vlp import GFSLTVLPConfig
from .evaluation_gfslt_vlp import video_text_evaluate
from .image_processing_gfslt_vlp import GFSLTVLPImageProcessor
from .modeling_gfslt_vlp import GFSLTVLPForSelfSupervisedPretraining, kl_soft_contrastive_loss

CPU_DEMO_PRESET = dict(
    backbone_config=dict(model_type="videomae", hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=512, patch_size=8, tubelet_size=2, use_mean_pooling=False,
                         layer_norm_eps=1e-6),
    image_size=32, num_frames=8, sampling_rate=2, projection_dim=64,
    text_config=dict(model_type="clip_text_model", vocab_size=1024, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=24, bos_token_id=0,
                     eos_token_id=1, pad_token_id=2),
    decoder_config=dict(d_model=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=128,
                        max_position_embeddings=32),
)

METHOD = MethodSpec(
    name="gfslt_vlp",
    config_class=GFSLTVLPConfig,
    model_class=GFSLTVLPForSelfSupervisedPretraining,
    image_processor_class=GFSLTVLPImageProcessor,
    family="vision-language (video-text)",
    description=("Visual-language pretraining for gloss-free sign language translation: video-text contrastive "
                 "alignment over the gathered batch plus masked sentence reconstruction by a text decoder."),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:moving_digits",
)

__all__ = ["GFSLTVLPConfig", "GFSLTVLPForSelfSupervisedPretraining", "GFSLTVLPImageProcessor",
           "kl_soft_contrastive_loss", "video_text_evaluate", "METHOD"]
