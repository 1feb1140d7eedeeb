"""Visually grounded character-level sentence encoder.

Danny Merkx, Stefan L. Frank. "Learning semantic sentence representations from visually grounded language without
lexical knowledge". Natural Language Engineering 25(4):451-466, 2019 (doi:10.1017/S1351324919000196,
arXiv:1903.11393). Official code: https://github.com/DannyMerkx/caption2image (as we know it; not checked offline).

Method (method `"char_sentence"`, built on the VSE++ / CLIP cores of hf_ssl):

* Sentence (caption) encoder without lexical knowledge: the caption is read character by character (offline
  character tokenizer, `tokenization_char_sentence.build_char_tokenizer`: no words, no pretrained embeddings),
  characters are embedded (20 d), a bidirectional GRU (1024 units per direction) runs over them, and vectorial
  self-attention (an MLP with 128 hidden units scores every time step and feature; softmax over time) pools the
  states into a 2048-d sentence embedding, L2-normalised. `get_text_features(input_ids, attention_mask)` returns it
  (e.g. for semantic-similarity evaluation).
* Image encoder: a CNN feature (ResNet-152 in the paper, pre-computed there) -> one linear layer into the 2048-d
  joint space -> L2 normalisation.
* Training: image-caption retrieval with the bidirectional hinge ranking loss on cosine similarities, margin 0.2,
  summed over all in-batch negatives (`hf_ssl.modeling.losses.hinge_ranking_loss`, DDP-gathered negatives;
  `max_violation=True` gives the VSE++ hardest-negative variant).
* Evaluation: caption<->image recall@{1,5,10} (`hf_ssl.modeling.vse.retrieval_evaluate`) and zero-shot accuracy.

Paper defaults (as we read them): 20-d character embeddings, 1 bidirectional GRU layer of 1024 units per direction,
vectorial self-attention with 128 hidden units, 2048-d embeddings, margin 0.2, Adam with a cyclic learning rate
between 1e-6 and 2e-4, batch 32, 32 epochs on Flickr8k / MSCOCO captions; ResNet-152 image features.

Presets: `"cpu-demo"`: 32 px digits, `resnet-tiny` trained end to end, 16-d character embeddings, bi-GRU 2 x 128,
attention 64, captions up to 64 characters.

Deviations from the paper:

1. The image CNN is a stock transformers backbone trained end to end (the paper uses frozen pre-computed ImageNet
   ResNet-152 features; no ImageNet weights offline: load them into `encoder` and freeze it for the paper setting).
2. The character alphabet is the byte-level alphabet of hf_ssl's offline tokenizer (lower-cased; non-ASCII
   characters become their UTF-8 bytes) with start / end tokens, rather than the paper's set of caption characters.
3. The cyclic learning-rate schedule is a trainer setting (not reproduced by the demo, which uses the shared cosine
   schedule).
4. Digits have no captions: captions come from label templates (CLIP core), so the demo is weakly supervised.
5. Exact layer counts / sizes, the sum-of-hinges loss and the optimiser schedule follow our reading of the paper
   and code; they could not be re-checked against the official repository offline.
"""

from ..registry import MethodSpec
from ..clip import views_clip  # noqa: F401  (registers the "image_text" view policy)
from ..vse.evaluation_vse import retrieval_evaluate
from .configuration_char_sentence import CharSentenceConfig
from .image_processing_char_sentence import CharSentenceImageProcessor
from .modeling_char_sentence import (CharSentenceEncoder, CharSentenceForSelfSupervisedPretraining,
                                     VectorialSelfAttention)
from .tokenization_char_sentence import CHAR_VOCAB_SIZE, build_char_tokenizer

CPU_DEMO_PRESET = {
    "backbone_config": "resnet-tiny",
    "image_size": 32,
    "text_config": {"model_type": "clip_text_model", "vocab_size": CHAR_VOCAB_SIZE, "max_position_embeddings": 64,
                    "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2},
    "char_embedding_dim": 16,
    "rnn_hidden_size": 128,
    "attention_hidden_size": 64,
    "augmentation": {"crop_scale": [0.6, 1.0], "horizontal_flip": 0.0},
}

METHOD = MethodSpec(
    name="char_sentence",
    config_class=CharSentenceConfig,
    model_class=CharSentenceForSelfSupervisedPretraining,
    image_processor_class=CharSentenceImageProcessor,
    family="vision-language (grounded sentence encoder)",
    description=(
        "Character-level caption encoder (character embeddings, bidirectional GRU, vectorial self-attention) "
        "trained by image-caption retrieval with a hinge ranking loss; sentence embeddings without lexical knowledge."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 2e-3},
)

__all__ = ["CharSentenceConfig", "CharSentenceForSelfSupervisedPretraining", "CharSentenceImageProcessor",
           "CharSentenceEncoder", "VectorialSelfAttention", "build_char_tokenizer", "retrieval_evaluate",
           "CHAR_VOCAB_SIZE", "METHOD"]
