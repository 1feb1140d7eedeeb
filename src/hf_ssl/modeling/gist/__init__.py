"""GIST: Generating Image-Specific Text for Fine-grained Object Classification.

Kathleen M. Lewis*, Emily Mu*, Adrian V. Dalca, John Guttag (* equal contribution). arXiv preprint 2023
(arXiv:2307.11315). Official code: https://github.com/emu1729/GIST (`caption_matching.py`,
`contrastive_training_clip.py`, `linear_probe.py`, run scripts `run_*.sh`).

Method (built on the hf_ssl CLIP dual-encoder core, `modeling/clip/`, by subclassing):

1. Text generation (offline, not part of the model): a large language model is prompted per class with
   domain-specific prompts to write many diverse fine-grained descriptions of the class (GPT-4 in the paper).
2. Matching: a pretrained CLIP scores every training image against the generated texts of ITS class, with
   `softmax(100 * cos(image, text))` over those texts, and keeps the top k = 5 per image
   (`match_texts_topk`, `GISTForSelfSupervisedPretraining.match_captions`; the official matcher is open_clip
   ViT-B/32 `laion2b_s34b_b79k`). The matched texts (summarised to short captions in the paper) are stored per
   image; here they arrive as a dataset column (default names `gist_texts`, `matched_texts`, `texts`, ...), best
   match first, as the official `captions_top5.json`.
3. Fine-tuning: CLIP is fine-tuned contrastively on (image, "<class name>: <matched text>") pairs, using the best
   `num_captions` matched texts of each image (several captions per image), with the symmetric CLIP loss
   (`(CE(logits_per_image) + CE(logits_per_text)) / 2`, the CLIP core's `clip_contrastive_loss`, gathered across
   processes by the core).
4. Evaluation: a linear probe on the fine-tuned image embeddings (the paper's main protocol) and zero-shot
   classification with class prompts in the caption format (`evaluation_gist.gist_evaluate`).

Start from a trained hf_ssl CLIP checkpoint with `GISTForSelfSupervisedPretraining.from_clip_pretrained(path)`
(the paper fine-tunes a pretrained CLIP), or from random init (`hf-ssl pretrain --method gist`).

Paper / official defaults (the config defaults): CLIP ViT-L/14 at 336 px (image encoder a stock ViT-L/14, text
encoder the 12 x 768 x 12-head CLIP text transformer, joint width 768), top-k 5 matched texts, num_captions 4,
matching softmax scale 100, caption "<class>: <text>", augmentation RandomResizedCrop (scale 0.08-1) + horizontal
flip. Optimiser (trainer settings, not in the model): Adam lr 1e-6, betas (0.9, 0.98), eps 1e-6, weight decay
0.001, batch 20, 200 epochs; linear probe: SGD lr 0.5, 1000 epochs, batch 64, best validation epoch.

Data: `"gist_text"` view policy (`views_gist.py`): one augmented image + one caption drawn uniformly from its best
`num_captions` texts, formatted with the class name (from a `class_name` / `species` column or the label).
Built-in `builtin:digits_gist` (the default dataset of this method): the built-in digits with a `gist_texts`
column written by the GIST pipeline with stand-ins (per-class candidate pools of thickness / slant / position /
size descriptions, matched to each image by the properties measured on it).

Presets: `"cpu-demo"`: 32 px digits_gist, `resnet-tiny` image encoder, 2-layer 64-wide CLIP text encoder with
context 64 and the built-in 1024-token BPE, projection 64, crop scale (0.6, 1), no flip (a flip contradicts the
texts' slant and position), AdamW lr 1e-3 for 300 steps (random init: the paper's lr 1e-6 is for fine-tuning a
pretrained CLIP).

DEVIATIONS:

1. Text generation is not bundled (no LLM offline): users supply the texts as a column. The built-in digits' texts
   come from a templated per-class pool instead of GPT-4, and their matching ranks candidates by agreement with
   properties measured on the image instead of a pretrained CLIP (none is available offline); `match_captions`
   performs the paper's CLIP matching with any hf_ssl dual encoder as the matcher. The GPT summarisation of long
   matched texts into short captions is not performed.
2. Each training visit of an image draws one of its `num_captions` texts uniformly (in expectation the official
   dataset, which lists every (image, caption) pair once per epoch); so an image never meets itself as a negative
   within a batch (the official shuffled pair list allows that).
3. The image/text encoders are the CLIP core's stock transformers models (see the CLIP deviations: stock ViT
   without CLIP's pre-LayerNorm, offline BPE tokenizer), so OpenAI CLIP weights are not loadable as such;
   fine-tuning starts from an hf_ssl CLIP checkpoint or random init. Training runs in fp32 (official: fp16 weights
   with fp32 updates).
4. The linear probe is the project's L-BFGS logistic regression on the joint embeddings (official: SGD-trained
   linear layer with validation-based epoch selection).
5. Images without any text column (e.g. a bare image folder) fall back to the CLIP core's templated class captions.
"""

from ..registry import MethodSpec
from . import views_gist  # noqa: F401  (registers the "gist_text" view policy and builtin:digits_gist)
from .configuration_gist import GISTConfig
from .evaluation_gist import gist_evaluate
from .image_processing_gist import GISTImageProcessor
from .modeling_gist import GISTForSelfSupervisedPretraining, match_texts_topk
from .views_gist import format_caption, match_by_attributes

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "text_config": {"model_type": "clip_text_model", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "projection_dim": 64,
    "augmentation": {"crop_scale": [0.6, 1.0], "horizontal_flip": 0.0},
}

METHOD = MethodSpec(
    name="gist",
    config_class=GISTConfig,
    model_class=GISTForSelfSupervisedPretraining,
    image_processor_class=GISTImageProcessor,
    family="vision-language (fine-grained fine-tuning)",
    description=(
        "GIST: contrastive fine-tuning of a CLIP dual encoder on image-specific texts (the top-k of each class's "
        "generated texts matched to each image by CLIP similarity), captions '<class>: <text>', symmetric CLIP loss."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:digits_gist",
)

__all__ = ["GISTConfig", "GISTForSelfSupervisedPretraining", "GISTImageProcessor", "match_texts_topk",
           "match_by_attributes", "format_caption", "gist_evaluate", "METHOD"]
