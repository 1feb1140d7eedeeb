"""Composed image retrieval with sentence-level prompts (SPRC) on the hf_ssl CLIP dual encoder.

Yang Bai, Xinxing Xu, Yong Liu, Salman Khan, Fahad Khan, Wangmeng Zuo, Rick Siow Mong Goh, Chun-Mei Feng,
"Sentence-level Prompts Benefit Composed Image Retrieval", ICLR 2024 (arXiv:2310.05473). Official code:
https://github.com/chunmeifeng/SPRC (`src/lavis/models/blip2_models/blip2_qformer_cir_align_prompt.py`,
training `src/blip_fine_tune_2.py`).

Task: given a reference image and a relative caption ("change it to a seven.", "rotate it right."), retrieve the
target image. SPRC as implemented here:

* Sentence-level prompt: N learnable queries and the caption tokens share self-attention while the queries
  cross-attend to the reference image's tokens (its last feature map cells and pooled feature); the N query outputs
  are the prompt, in the text encoder's token-embedding space (official: the BLIP-2 Q-Former's 32 query outputs
  conditioned on image and text).
* Composed query: the text encoder on `[SOS] prompt caption [EOS]` (the prompt spliced in after the start token,
  `hf_ssl.modeling.prompting`), projected and normalised (official: the Q-Former text transformer with the prompt as
  its query embeddings).
* Target: the dual encoder's normalised image embedding of the target.
* Losses (official weights): `loss_itc` (query -> target InfoNCE over the batch, learnable temperature) +
  0.4 `loss_rtc` (the same for the text-only branch: the caption with a learnable prompt `prompt_tokens`, no image)
  + 0.4 `loss_align` (text prompt alignment: MSE between the mean generated prompt and the stop-gradient mean
  learnable prompt). Under DDP the targets of all processes are the negatives (`losses.all_gather`).
* Official recipe: image encoder frozen (`freeze_vit`), AdamW lr 1e-5 (CIRR) / 2e-5 (FashionIQ), batch 128,
  OneCycle schedule, 50 / 30 epochs, 32 prompt tokens, captions of at most 32 tokens.

Evaluation: `composed_retrieval_evaluate(model)` (CIRR-style recall@{1,5,10} of the composed and the text-only
queries over the gallery of all targets); `compose(...)` / `encode_image(...)` give query and gallery embeddings
for the GeneCIS evaluation (`hf_ssl.metrics.genecis`). Data: CIRR-style triplet columns, or generated triplets
(`views_composed_retrieval.py`: class edits from labels, geometric edits from any image).
`from_clip_pretrained(path)` starts from a trained hf_ssl CLIP checkpoint.

Presets: `"cpu-demo"`: 32 px digits, `resnet-tiny`, 2-layer 64-wide CLIP text encoder (context 32), 4 prompt tokens,
captions of 24 tokens, 1-layer prompt generator, image encoder trainable (the demo starts from random init).

DEVIATIONS:

1. Our dual encoder (stock backbone + CLIP text transformer) replaces BLIP-2 (EVA ViT-g + Q-Former): the prompt
   generator is a small Q-Former-like transformer trained from scratch, the composed query comes from the CLIP text
   encoder with the prompt spliced in, and the target is one embedding (BLIP-2 scores the max over 32 query
   embeddings of the target).
2. `loss_align` compares the generated prompt (in token-embedding space) with the learnable prompt; the official
   code compares the Q-Former fusion outputs with the learnable prompt tokens (the same quantities in its design).
3. The temperature is the CLIP core's clamped logit scale (init 1/0.07) instead of BLIP-2's `temp` parameter.
4. In-batch negatives are gathered across processes (the official loss uses each GPU's batch only); set
   `gather_negatives=False` for the official per-process behaviour.
5. Training triplets for the demo/tests are generated (class edits and geometric edits on digits), not CIRR or
   FashionIQ; geometric-edit views use no flip augmentation so captions stay true.
"""

from ..registry import MethodSpec
from . import views_composed_retrieval  # noqa: F401  (registers the "composed_triplet" view policy)
from .configuration_composed_retrieval import ComposedRetrievalConfig
from .evaluation_composed_retrieval import composed_recall_at_k, composed_retrieval_evaluate
from .image_processing_composed_retrieval import ComposedRetrievalImageProcessor
from .modeling_composed_retrieval import (ComposedRetrievalForSelfSupervisedPretraining, SentencePromptGenerator,
                                          composed_contrastive_loss)

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "text_config": {"model_type": "clip_text_model", "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128,
                    "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 32,
                    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "projection_dim": 64,
    "num_prompt_tokens": 4,
    "caption_length": 24,
    "prompt_generator_layers": 1,
    "prompt_generator_heads": 2,
    "freeze_image_encoder": False,
}

METHOD = MethodSpec(
    name="composed_retrieval",
    config_class=ComposedRetrievalConfig,
    model_class=ComposedRetrievalForSelfSupervisedPretraining,
    image_processor_class=ComposedRetrievalImageProcessor,
    family="vision-language (composed retrieval)",
    description=(
        "SPRC composed image retrieval: a sentence-level prompt generated from the reference image and relative "
        "caption drives the text encoder; target InfoNCE + text-only prompt loss + prompt alignment loss."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["ComposedRetrievalConfig", "ComposedRetrievalForSelfSupervisedPretraining",
           "ComposedRetrievalImageProcessor", "SentencePromptGenerator", "composed_contrastive_loss",
           "composed_recall_at_k", "composed_retrieval_evaluate", "METHOD"]
