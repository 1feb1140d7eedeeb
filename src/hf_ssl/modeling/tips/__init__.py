"""TIPS: Text-Image Pretraining with Spatial awareness.

Kevis-Kokitsi Maninis, Kaifeng Chen, Soham Ghosh, Arjun Karpur, Koert Chen, Ye Xia, Bingyi Cao, Daniel Salz,
Guangxing Han, Jan Dlabal, Dan Gnanapragasam, Mojtaba Seyedhosseini, Howard Zhou, Andre Araujo. ICLR 2025
(arXiv:2410.16512). Official code: https://github.com/google-deepmind/tips (inference only: `pytorch/image_encoder.py`
`VisionTransformer` with `num_register_tokens=1` and `prepare_tokens_with_masks`, `scenic/models/tips.py`
`num_cls_tokens = 2`, `scenic/configs/tips_model_config.py`; no training code is released).

Method (built on the hf_ssl CLIP dual-encoder core, `modeling/clip/`, and the shared DINO core, `distillation.py`):

* Two captions per image: the noisy web caption and a synthetic, spatially rich caption (PaliGemma in the paper).
  Naively replacing web captions by synthetic ones helps dense tasks but hurts retrieval, so TIPS keeps both with a
  *dual embedding*: the ViT carries two image tokens, the first aligned with the web caption, the second with the
  synthetic caption (each by a CLIP softmax contrastive loss, learnable temperature, DDP-gathered negatives through
  the core's `clip_contrastive_loss`). The second token is inserted after the position embeddings are added, so
  it has none and behaves like a register token (official `prepare_tokens_with_masks`); both tokens share the
  image projection (official single `head`) and the text tower is shared by both captions.
* Self-distillation (DINO): an EMA teacher sees the unmasked global view; its first-token prototype distribution
  (centred, sharpened; the center all-reduced under DDP) is distilled into the student's first token of every
  local crop (`distillation.SelfDistillationLoss`, same-view pairs skipped).
* Masked image modeling (iBOT): the student's global view has block-wise masked patches replaced by a learned mask
  token; at every masked position the student's patch prototype distribution predicts the teacher's distribution of
  the same, unmasked patch (`distillation.masked_patch_distillation`, added to the shared core for this method,
  with its own all-reduced patch center). Only masked positions carry loss.
* Loss: `L = w_web L_clip(token 0, web) + w_syn L_clip(token 1, synthetic) + alpha L_dino + beta L_mask`.
* Zero-shot / retrieval (CLIP core: `zero_shot_classifier`, `evaluation_clip.zero_shot_evaluate`) use the first
  (web) token of the two-token forward; `get_dual_image_features` returns both, `get_dense_features` the patch map.

Paper / release defaults (config defaults): ViT-B/14 at 224 px (official ViTs use patch 14), two image tokens, text
context 64, pixels in [0, 1] (mean 0, std 1), learnable temperature init 0.07, DINO head 65536 prototypes (2048
hidden, 256 bottleneck, unit-norm last layer), student temperature 0.1, teacher 0.04 -> 0.07, center momentum 0.9,
EMA 0.996 -> 1, one global crop + 6 local crops, block masks on half of the images with ratio U(0.1, 0.5),
loss weights 1 / 1 / 1 / 1.

Presets: `"cpu-demo"`: 32 px digits, a 2-layer 64-wide ViT with 4 px patches, a 2-layer 64-wide CLIP text encoder
with context 64, 1024 prototypes, 4 local crops of 16 px, with the short-run DINO recipe of the CMD / SOLIDER demos
(a cpu-demo departure, not a paper setting): teacher temperature 0.02 (constant), teacher EMA 0.99 -> 1, AdamW lr
1.25e-4, DINO head last layer frozen for the first 50 steps (`METHOD.demo_training`, trainer argument
`freeze_last_layer_steps`); 300 steps: k-NN 0.850 -> 0.887. The gain comes from the contrastive and iBOT terms: the
DINO term still ends slightly above log K (7.05 vs 6.93), also when the head reads the mean patch token instead of
the first token (0.880). With the previous demo recipe (teacher 0.07, EMA 0.996, lr 1e-3) the current DINO core
(default Linear init of the last layer) gives 0.850 -> 0.797 with the DINO term at log K from step 50 (0.897 before
that init change).

DEVIATIONS:

1. The second image token cannot live in a vanilla `ViTModel` checkpoint: training drives the stock ViT's patch
   embedding, CLS, position table, layers and final norm with the extra token inserted around them
   (`encode_tokens`), while `get_image_features` / `export_encoder` are the stock one-CLS `ViTModel` (the exported
   encoder's CLS attends over one token fewer than in training). The second token and the mask token are saved with
   the hf_ssl checkpoint, not in the export.
2. No training code is released, so the loss weights (alpha, beta), the number of local crops, the masking scheme
   (iBOT's: 50% of images, ratio U(0.1, 0.5), block-wise), the head sizes and the EMA / temperature schedules follow
   iBOT / DINO defaults; whether the contrastive terms see the masked or an unmasked student view is a switch
   (`contrastive_on_masked_view`, default masked: one student pass).
3. The text tower is the CLIP core's stock `CLIPTextModel` (EOS pooling) with the offline byte-level BPE, not the
   released mean-pooled transformer with a 32k SentencePiece vocabulary.
4. Synthetic captions: a `synthetic_caption` / `dense_caption` / `long_caption` column; labelled data without one
   (the built-in digits) gets DreamLIP's generated descriptions from measured stroke / slant / position / shape /
   ink properties instead of PaliGemma captions; web captions of labelled data are label templates (the digits demo
   is weakly label-supervised, as for every hf_ssl vision-language method). No flip / colour jitter, since the
   synthetic captions describe positions.
5. Position embeddings are the stock learned table (official: learned as well, bilinear interpolation; the stock
   ViT interpolates bicubically for other resolutions).
"""

from ..registry import MethodSpec
from . import views_tips  # noqa: F401  (registers the "tips_views" view policy)
from .configuration_tips import TIPSConfig
from .image_processing_tips import TIPSImageProcessor
from .modeling_tips import TIPSForSelfSupervisedPretraining, ibot_masks

CPU_DEMO_PRESET = {
    "backbone_config": dict(model_type="vit", hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=128, patch_size=4),
    "image_size": 32,
    "text_config": {"model_type": "clip_text_model", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "projection_dim": 64,
    "head_out_dim": 1024,
    "head_hidden_dim": 256,
    "head_bottleneck_dim": 64,
    "mask_min_block_patches": 4,
    "augmentation": {"global_scale": [0.8, 1.0], "num_local": 4, "local_size": 16, "local_scale": [0.2, 0.5]},
    "teacher_temperature": 0.02,
    "teacher_temperature_warmup": 0.02,
    "teacher_momentum": 0.99,
}

METHOD = MethodSpec(
    name="tips",
    config_class=TIPSConfig,
    model_class=TIPSForSelfSupervisedPretraining,
    image_processor_class=TIPSImageProcessor,
    family="vision-language",
    description=(
        "TIPS: CLIP-style training with a web caption and a synthetic dense caption, each aligned with its own "
        "image token, plus DINO self-distillation and iBOT masked patch distillation from an EMA teacher."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1.25e-4, "freeze_last_layer_steps": 50},
)

__all__ = ["TIPSConfig", "TIPSForSelfSupervisedPretraining", "TIPSImageProcessor", "ibot_masks", "METHOD"]
