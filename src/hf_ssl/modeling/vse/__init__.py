"""VSE++: Improving Visual-Semantic Embeddings with Hard Negatives.

Fartash Faghri, David J. Fleet, Jamie Ryan Kiros, Sanja Fidler. BMVC 2018 (arXiv:1707.05612).
Official code: https://github.com/fartashf/vsepp (`model.py`: `EncoderImageFull`, `EncoderText`, `ContrastiveLoss`
with `max_violation`; `train.py`: optimiser and schedule).

Method (method `"vse"`, built on the hf_ssl CLIP core, `hf_ssl.modeling.clip`):

* Image embedding: a stock transformers CNN (default ResNet-152) -> pooled feature -> L2 normalisation -> linear
  layer (Xavier init) -> L2 normalisation.
* Caption embedding: token embeddings (`word_dim` 300, uniform(-0.1, 0.1) init) -> 1-layer GRU of 1024 units ->
  hidden state at the last real token -> L2 normalisation (`text_encoder="gru"`), or a stock transformers text
  model + linear projection (`text_encoder="transformer"`, e.g. `clip_text_model` or `bert`).
* Loss: bidirectional hinge ranking loss on cosine similarities with margin 0.2,
  `sum_i [a - s(i, c_i) + s(i, c')]_+ + [a - s(i, c_i) + s(i', c_i)]_+` where VSE++ ("MH", `max_violation=True`)
  keeps only the hardest negative caption c' / image i' of each positive pair in the mini-batch, and VSE0 ("SH",
  `max_violation=False`) sums over all negatives. Summed over the batch (official). Shared helper:
  `hf_ssl.modeling.losses.hinge_ranking_loss`; under DDP hardest negatives are searched over the gathered global
  batch (`all_gather` with gradient) and the sum is scaled by the world size, so N processes reproduce the
  single-process loss and gradients on the global batch.
* Evaluation: caption<->image recall@{1,5,10} and zero-shot accuracy (`evaluation_vse.retrieval_evaluate`, the
  hf_ssl `retrieval_recall` / `zero_shot_accuracy` metric cores); `get_text_features` /
  `get_joint_image_features` give the joint-space embeddings, `get_image_features` the backbone feature (k-NN,
  export).

Paper defaults: ResNet-152 (or VGG19), 224 px random-resized crops + flips, embedding 1024, word_dim 300, GRU 1
layer, margin 0.2, MH loss, Adam lr 2e-4 for 15 epochs then 2e-5 for 15 (30 epochs on COCO), batch 128, gradient
clipping at 2, CNN fine-tuned (RN152 FT rows) or frozen pre-computed features. Optimiser, schedule and clipping are
trainer settings (`--learning-rate`, `max_grad_norm`).

Presets: `"cpu-demo"`: 32 px digits, `resnet-tiny`, GRU text encoder (word_dim 64, 256 units), projection 256,
built-in BPE (1024 tokens, context 16), sum of hinges (`max_violation=False`): the digits' captions are label
templates (80 distinct strings), so in a batch of 64 the hardest negative caption is almost always a same-class
caption, i.e. a false negative, and MH pushes same-class images apart (measured: k-NN 0.907 -> 0.810 with MH vs
0.907 -> 0.990 with SH, 300 steps). MH stays the paper default of the config and is the right loss on real
caption data (`--set max_violation=true`).

Deviations from the paper:

1. Tokens come from hf_ssl's offline byte-level BPE (the CLIP core) instead of the official word vocabulary (NLTK
   words seen at least 4 times); captions carry the BPE's start/end tokens (the official vocabulary also adds
   `<start>`/`<end>`).
2. Stock transformers ResNet-152 (global average pool) built from config; no ImageNet initialisation offline (the
   paper starts from ImageNet weights: load them into `encoder` yourself for the paper setting).
3. The world-size scaling of the summed loss under DDP (the official code is single-process).
4. Digits have no captions: captions come from label templates (CLIP core), so the demo is weakly supervised, and
   the cpu-demo preset uses the sum of hinges (see Presets).
"""

from ..registry import MethodSpec
from ..clip import views_clip  # noqa: F401  (registers the "image_text" view policy)
from .configuration_vse import RESNET_152, VSEPPConfig
from .evaluation_vse import retrieval_evaluate
from .image_processing_vse import VSEPPImageProcessor
from .modeling_vse import GRUTextEncoder, VSEPPForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "text_config": {"model_type": "clip_text_model", "vocab_size": 1024, "max_position_embeddings": 16,
                    "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2,
                    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "word_dim": 64,
    "projection_dim": 256,
    "max_violation": False,
    "augmentation": {"crop_scale": [0.6, 1.0], "horizontal_flip": 0.0},
}

METHOD = MethodSpec(
    name="vse",
    config_class=VSEPPConfig,
    model_class=VSEPPForSelfSupervisedPretraining,
    image_processor_class=VSEPPImageProcessor,
    family="vision-language (dual encoder, ranking)",
    description=(
        "Visual-semantic embedding: CNN and GRU caption encoders in a joint space trained with a bidirectional "
        "hinge ranking loss on the hardest in-batch (DDP-gathered) negatives, margin 0.2."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["VSEPPConfig", "VSEPPForSelfSupervisedPretraining", "VSEPPImageProcessor", "GRUTextEncoder",
           "retrieval_evaluate", "RESNET_152", "METHOD"]
