"""ALIGN: Scaling Up Visual and Vision-Language Representation Learning With Noisy Text Supervision.

Chao Jia, Yinfei Yang, Ye Xia, Yi-Ting Chen, Zarana Parekh, Hieu Pham, Quoc V. Le, Yunhsuan Sung, Zhen Li, Tom
Duerig. ICML 2021 (arXiv:2102.05918). No official training code was released; the released model and its
inference code are the transformers port (`AlignModel`, kakaobrain/align-base, with `align_loss` using label
smoothing 0.1 and `temperature_init_value` 1.0), which this implementation follows where the paper is silent.

Method (built on the hf_ssl CLIP dual-encoder core, `modeling/clip/`):

* Image encoder: EfficientNet with global pooling (stock transformers `EfficientNetModel`; paper: EfficientNet-L2,
  `EFFICIENTNET_L2` here, 5504-d features); the pooled feature itself is the image embedding (no image
  projection; `image_projection=True` adds one). Any other stock backbone (ResNet, ViT...) works too.
* Text encoder: BERT (stock `BertModel`, paper BERT-Large, context 64) pooled at its [CLS] token (the first token;
  BERT's tanh pooler is not built), followed by a fully connected layer with linear activation to the image
  embedding width.
* Loss: normalized softmax in both directions, `L = (L_i2t + L_t2i) / 2`, each a cross entropy over the
  cosine similarities divided by a learnable temperature (initialised to 1.0), with label smoothing 0.1;
  computed over the DDP-gathered global batch (`losses.symmetric_contrastive_loss`, gradients through
  `all_gather(with_grad=True)`; the paper concatenates the embeddings of all 1024 TPU cores, batch 16384).
* Data: the noisy alt-text recipe as a data step (`filtering_align.py`: `AltTextFilter` / `filter_dataset`):
  images with shorter side <= 200 px or aspect ratio >= 3 dropped, images with > 1000 alt-texts dropped,
  alt-texts shared by > 10 images dropped, alt-texts with a unigram/bigram outside the 100M most frequent ones
  dropped, alt-texts with < 3 or > 20 unigrams dropped. Augmentation: random 289 crop of the 346-resized image
  (70% of the area) + random horizontal flip (`default_augmentation`). Labelled data without text gets
  templated captions (the CLIP core's `image_text` policy), so the digits demo is label-supervised.
* Zero-shot and retrieval: inherited from the CLIP core (`zero_shot_classifier`, `clip.evaluation_clip`).

Paper defaults (config defaults): EfficientNet-L2 at 289 px, BERT-Large (24 x 1024, 16 heads), 100k vocabulary,
context 64, temperature init 1.0 (learnable), label smoothing 0.1. Training recipe (trainer side): LAMB, weight
decay 1e-5, lr warmed up linearly to 1e-3 over 10k steps then linearly decayed to 0 over 1.2M steps, batch 16384.

Presets: `"cpu-demo"`: 32 px digits, a small EfficientNet (width 0.5, depth 0.5, 640-d features), a 2-layer 64-wide
BERT with context 16 and the built-in 1024-token BPE, temperature init 0.07 (the paper's 1.0 does not sharpen within
300 steps: k-NN went 0.927 -> 0.840 with it, 0.927 -> 0.973 with 0.07); AdamW (`METHOD.demo_training`).

DEVIATIONS:

1. The temperature is parameterised through the CLIP core's log scale (`logit_scale = log(1 / temperature)`,
   initialised to log(1.0) = 0) instead of the temperature itself; the learned quantity and its initial value are
   the paper's. It is clamped at temperature >= 1 / `max_logit_scale` (0.01) like CLIP; ALIGN states no clamp.
2. Text tokenization is the offline byte-level BPE of `hf_ssl.training.text` (any local tokenizer via
   `tokenizer_name_or_path`), not ALIGN's 100k WordPiece vocabulary trained on the raw alt-text; its first token
   (`<|startoftext|>`) plays the role of [CLS].
3. The pornography filter and the removal of near-duplicates of evaluation images need external classifiers and
   test sets; `AltTextFilter(extra_image_filter=...)` is the hook for them. The rare-token vocabulary is counted on
   the data given to `fit` (the paper: the whole 1.8B raw set).
4. The random crop uses the shared random-resized-crop with a fixed 70% area (aspect ratio jittered 3/4-4/3), not a
   fixed-size 289 crop of a 346 resize; inference resizes to size / 0.875.
5. Random-init EfficientNets are re-initialised like the TF / torchvision ones (Kaiming fan-out convolutions,
   BatchNorm gain 1): transformers' EfficientNet init (N(0, 0.02) convs and BatchNorm gains) gives vanishing
   activations when training from scratch. Checkpoints load unchanged.
6. LAMB, the linear schedule and the batch of 16384 belong to the trainer (not reproduced by the model).
"""

from ..registry import MethodSpec
from ..clip import views_clip  # noqa: F401  (registers the "image_text" view policy)
from .configuration_align import EFFICIENTNET_L2, ALIGNConfig, efficientnet_config
from .filtering_align import AltTextFilter, filter_dataset
from .image_processing_align import ALIGNImageProcessor
from .modeling_align import ALIGNForSelfSupervisedPretraining, align_contrastive_loss

CPU_DEMO_PRESET = {
    "backbone_config": efficientnet_config(0.5, 0.5, 32),
    "image_size": 32,
    "text_config": {"model_type": "bert", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 16,
                    "pad_token_id": 2},
    "augmentation": {"crop_scale": [0.6, 1.0], "horizontal_flip": 0.0},
    # the paper's temperature init 1.0 needs far more than 300 steps to sharpen (k-NN fell 0.927 -> 0.840 with it);
    # the demo starts from CLIP's 0.07 (still learnt)
    "init_temperature": 0.07,
}

METHOD = MethodSpec(
    name="align",
    config_class=ALIGNConfig,
    model_class=ALIGNForSelfSupervisedPretraining,
    image_processor_class=ALIGNImageProcessor,
    family="vision-language",
    description=(
        "ALIGN: EfficientNet + BERT dual encoder trained on noisy alt-text with a label-smoothed normalized softmax "
        "(learnable temperature) over the gathered batch; frequency-based alt-text filtering as a data step."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["ALIGNConfig", "ALIGNForSelfSupervisedPretraining", "ALIGNImageProcessor", "align_contrastive_loss",
           "AltTextFilter", "filter_dataset", "efficientnet_config", "EFFICIENTNET_L2", "METHOD"]
