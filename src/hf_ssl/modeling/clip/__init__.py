"""CLIP: Learning Transferable Visual Models From Natural Language Supervision.

Alec Radford, Jong Wook Kim, Chris Hallacy, Aditya Ramesh, Gabriel Goh, Sandhini Agarwal, Girish Sastry, Amanda
Askell, Pamela Mishkin, Jack Clark, Gretchen Krueger, Ilya Sutskever. ICML 2021 (arXiv:2103.00020).
Official code: https://github.com/openai/CLIP (`clip/model.py`: `CLIP.forward`, `logit_scale`); the training
loss follows the paper's Figure 3 pseudo-code and OpenCLIP (https://github.com/mlfoundations/open_clip,
`src/open_clip/loss.py`, `ClipLoss` with `gather_with_grad`).

The vision-language dual-encoder core of hf_ssl (method `"clip"`):

* Image encoder: a stock transformers backbone from `config.backbone_config` (shared `backbones.py`), pooled
  feature -> bias-free linear projection -> L2 normalisation.
* Text encoder: a stock transformers text model built from `config.text_config` (default the paper's 12-layer,
  512-wide, 8-head `CLIPTextModel` with causal mask and context 77); its pooled output (CLIP: the EOS token) ->
  bias-free linear projection -> L2 normalisation.
* Learnable temperature: `logit_scale` initialised to log(1/0.07), exp(logit_scale) clamped at 100.
* Loss: symmetric InfoNCE, `(CE(s * I T^T, y) + CE(s * T I^T, y)) / 2`, where under DDP every process scores its
  images (texts) against the texts (images) of all processes (`losses.all_gather(with_grad=True)`), targets
  offset by `rank * B` (OpenCLIP's local-loss formulation, equal to the single-process loss on the global
  batch).
* Tokenizer: offline byte-level BPE (`hf_ssl.training.text.build_tokenizer`, trained with `tokenizers` on locally
  generated captions) saved as a `PreTrainedTokenizerFast`; or any local tokenizer via `tokenizer_name_or_path`.
* Data: image-text pairs (a text/caption column) streamed like the image streams; the `image_text` view policy
  (`views_clip.py`) tokenizes the caption. Labelled image data without captions (the built-in default:
  `builtin:digits`) gets templated captions `"a photo of the digit seven."` from `class_names` and
  `caption_templates`.
* Zero-shot classification (prompt ensemble -> class embeddings -> argmax) and image<->text recall@k:
  `CLIPForSelfSupervisedPretraining.zero_shot_classifier` and the `zero_shot_accuracy` / `retrieval_recall`
  metric modules in `hf_ssl.metrics`.

Presets: `"cpu-demo"`: 32 px digits, `resnet-tiny` image encoder, 2-layer 64-wide CLIP text encoder with context
16 and the built-in 1024-token BPE, projection 64; AdamW (`METHOD.demo_training`).

DEVIATIONS:

1. Image encoders are stock transformers backbones: the ResNet-50 default is torchvision-style (global average
   pool), not CLIP's modified ResNet (3-conv stem, anti-aliased strided convs, attention pooling); ViT backbones
   use the final-norm CLS token (CLIP ViTs also apply a pre-transformer LayerNorm, absent from stock ViTModel).
2. The tokenizer is a byte-level BPE trained offline on a small generated caption corpus (about 500 tokens),
   not CLIP's 49,152-merge BPE trained on web text; it lowercases like CLIP but does not apply ftfy/html cleaning.
3. Augmentation: a random resized crop with scale (0.9, 1) of the whole image (the paper: "a random square crop
   from resized images" is the only augmentation); no flip, no colour jitter.
4. The logit scale is clamped in the forward (`clamp(max=log 100)` before `exp`, so the gradient is zero while
   clamped) instead of clamping the parameter in place after each step; the scale used is the same.
5. For images without text or label (e.g. a bare image folder) the caption falls back to "a photo." (the loss is
   then uninformative); supply captions or labels.
6. The optimiser recipe (AdamW, beta2 0.98, eps 1e-6, weight decay 0.2 except gains/biases, batch 32,768, cosine
   schedule) belongs to the trainer, not to the model.
7. `get_image_features` returns the backbone's pooled feature (k-NN, export, as for every hf_ssl method); the
   joint-space embedding is `get_joint_image_features` / `encode_image`.
"""

from ..registry import MethodSpec
from . import views_clip  # noqa: F401  (registers the "image_text" view policy)
from .configuration_clip import CLIPSSLConfig
from .image_processing_clip import CLIPSSLImageProcessor
from .modeling_clip import CLIPForSelfSupervisedPretraining, clip_contrastive_loss

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "text_config": {"model_type": "clip_text_model", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16,
                    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "projection_dim": 64,
    "augmentation": {"crop_scale": [0.6, 1.0]},
}

METHOD = MethodSpec(
    name="clip",
    config_class=CLIPSSLConfig,
    model_class=CLIPForSelfSupervisedPretraining,
    image_processor_class=CLIPSSLImageProcessor,
    family="vision-language",
    description=(
        "Contrastive Language-Image Pre-training: image and text encoders trained with a symmetric InfoNCE over "
        "the (DDP-gathered) batch of image-caption pairs with a learnable temperature; zero-shot classification."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["CLIPSSLConfig", "CLIPForSelfSupervisedPretraining", "CLIPSSLImageProcessor", "clip_contrastive_loss",
           "METHOD"]
