"""DenseCLIP: Language-Guided Dense Prediction with Context-Aware Prompting (downstream use of a CLIP dual encoder).

Yongming Rao, Wenliang Zhao, Guangyi Chen, Yansong Tang, Zheng Zhu, Guan Huang, Jie Zhou, Jiwen Lu. CVPR 2022
(arXiv:2112.01518). Official code: https://github.com/raoyongming/DenseCLIP (`segmentation/denseclip/denseclip.py`,
`models.py`: `CLIPTextContextEncoder`, `ContextDecoder`; config `configs/denseclip_fpn_res50_512x512_80k.py`).

What it does: DenseCLIP turns a pretrained CLIP into a semantic-segmentation model whose classifier is language:

* Dense image embeddings: the image encoder's last feature map mapped into CLIP's joint space per pixel (the
  official ResNet applies the attention pool's value/output projections to every position; here the dual encoder's
  visual projection is applied per pixel), plus the global embedding.
* Learnable context prompts (CoOp-style): M = 8 shared vectors inserted after the start token of every class name
  (`[SOS] ctx_1 .. ctx_8 name [EOS]`, class names tokenized to 5 tokens), run through the frozen CLIP text encoder
  (`hf_ssl.modeling.prompting.encode_text_with_prompts`) -> K class embeddings.
* Vision-to-language context-aware prompting (post-model): a 3-layer, 256-wide, 4-head transformer decoder in which
  the class embeddings attend to the visual context [global; dense] and update them as
  `t <- t + gamma * decoder(t, context)`, gamma a learnable per-channel scale initialised to 1e-4.
* Pixel-text score maps `s = cos(dense(x, y), t_k)` `[B, K, h, w]`, concatenated to the last encoder stage before a
  semantic FPN (FPN neck 256 + FPN head) that predicts the segmentation.
* Loss: pixel cross entropy of the decoder (weight 1) + the auxiliary score-map loss, cross entropy of
  `s / tau` (tau = 0.07) upsampled to the labels (weight 0.4), ignore index 255.
* Optimisation (official): AdamW lr 1e-4, weight decay 1e-4, image encoder lr x 0.1, text encoder frozen, no decay
  on norms, poly schedule with 1500 warm-up iterations, 80k iterations of batch 4 x 8 GPUs at 512 px.
  `model.param_groups(lr, weight_decay)` gives these parameter groups; freezing is built in.

Use: `DenseCLIPForSemanticSegmentation.from_clip_pretrained("runs/clip/final", segmentation_class_names=[...])`
starts from a trained hf_ssl CLIP checkpoint (`from_pretrained` reloads a saved DenseCLIP);
`model(pixel_values, segmentation_labels=...)` trains, `model.predict_segmentation(x)` and
`model.compute_score_maps(x)` infer, `evaluation_denseclip.evaluate_segmentation` reports mIoU.
`hf-ssl pretrain --method denseclip` trains it on segmentation pairs: image data with a segmentation-map column, or
(the built-in digits) digits pasted onto a noisy canvas with their masks (`views_denseclip.py`), classes
"background" + the digit names.

Presets: `"cpu-demo"`: 32 px canvases, `resnet-tiny`, 2-layer 64-wide CLIP text encoder, context decoder 64 x 1 x 2
heads, FPN 64, 4 context vectors, text encoder trainable (it starts from random init in the demo).

DEVIATIONS:

1. Encoders are the hf_ssl CLIP core's stock transformers backbones: dense embeddings come from the per-pixel visual
   projection of the last stage (no CLIP attention pool, so no attention-pool position embeddings); for ViT
   encoders the 4-level pyramid is built by bilinear resizing of 4 blocks' tokens (official: deconvolutions and
   max-pooling).
2. Only the post-model (context-aware) prompting of the paper is implemented (the paper's default); the pre-model
   variant and the detection / instance-segmentation heads are not.
3. The semantic FPN is re-implemented (mmseg's FPN + FPNHead structure, BatchNorm instead of SyncBN); the score map
   is concatenated to the last level as in the official `score_concat_index=3`.
4. The backbone learning-rate multiplier and poly schedule belong to the optimiser: `param_groups` provides them
   for a custom optimiser; `SSLTrainer` defaults use one learning rate (the frozen text encoder stays frozen).
5. Training data for the demo/tests are generated segmentation pairs (pasted digits with masks), not ADE20K;
   `hf-ssl pretrain` starts from random init unless the model is built with `from_clip_pretrained` in Python.
"""

from ..registry import MethodSpec
from . import views_denseclip  # noqa: F401  (registers the "pasted_segmentation" view policy)
from .configuration_denseclip import DenseCLIPConfig
from .evaluation_denseclip import evaluate_segmentation, segmentation_metrics
from .image_processing_denseclip import DenseCLIPImageProcessor
from .modeling_denseclip import DenseCLIPForSemanticSegmentation, DenseCLIPSegmentationOutput

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "text_config": {"model_type": "clip_text_model", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16,
                    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "projection_dim": 64,
    "num_context_tokens": 4,
    "context_decoder_width": 64,
    "context_decoder_heads": 2,
    "context_decoder_layers": 1,
    "fpn_channels": 64,
    "freeze_text_encoder": False,
}

METHOD = MethodSpec(
    name="denseclip",
    config_class=DenseCLIPConfig,
    model_class=DenseCLIPForSemanticSegmentation,
    image_processor_class=DenseCLIPImageProcessor,
    family="vision-language (dense prediction)",
    description=(
        "Language-guided semantic segmentation from a CLIP dual encoder: learnable context prompts, a "
        "vision-to-language context decoder, pixel-text score maps feeding a semantic FPN, auxiliary score-map loss."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["DenseCLIPConfig", "DenseCLIPForSemanticSegmentation", "DenseCLIPSegmentationOutput",
           "DenseCLIPImageProcessor", "evaluate_segmentation", "segmentation_metrics", "METHOD"]
