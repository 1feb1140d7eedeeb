"""Configuration of the visually grounded character-level sentence encoder (Merkx & Frank, "Learning semantic
sentence representations from visually grounded language without lexical knowledge", NLE 2019)."""

from __future__ import annotations

from typing import Optional

from ..vse.configuration_vse import RESNET_152, VSEPPConfig
from .tokenization_char_sentence import CHAR_VOCAB_SIZE

DEFAULT_CHAR_TEXT_CONFIG = dict(model_type="clip_text_model", vocab_size=CHAR_VOCAB_SIZE, max_position_embeddings=160,
                                bos_token_id=0, eos_token_id=1, pad_token_id=2)


class CharSentenceConfig(VSEPPConfig):
    r"""Configuration of :class:`CharSentenceForSelfSupervisedPretraining`.

    The caption encoder reads characters (the offline character tokenizer, `tokenizer_vocab_size=259`: 256 byte
    characters + start / end / pad), embeds them (`char_embedding_dim`), runs a (bi)directional GRU and pools the
    time steps with vectorial self-attention; the caption embedding has `rnn_hidden_size * directions` dimensions,
    which is also the joint space (`projection_dim` is derived from it). Images: backbone feature -> linear ->
    L2 normalisation. Loss: the VSE hinge ranking loss (`hf_ssl.modeling.losses.hinge_ranking_loss`).

    Args:
        char_embedding_dim: character embedding size (20).
        rnn_hidden_size: GRU units per direction (1024).
        num_rnn_layers: GRU depth (1).
        bidirectional: bidirectional GRU (True; embedding 2 x 1024 = 2048).
        attention_hidden_size: hidden width of the vectorial self-attention MLP (128).
        margin / max_violation / loss_reduction: the hinge loss (margin 0.2, sum over all negatives).
        text_config: only `vocab_size` (character vocabulary) and `max_position_embeddings` (the maximum caption
            length in characters, including start/end) are read.
    """

    model_type = "hf_ssl_char_sentence"
    paper_title = "Learning semantic sentence representations from visually grounded language without lexical knowledge"
    paper_url = "https://arxiv.org/abs/1903.11393"
    citation = (
        "@article{merkx2019learning,\n"
        "  title={Learning semantic sentence representations from visually grounded language without lexical"
        " knowledge},\n"
        "  author={Merkx, Danny and Frank, Stefan L.},\n"
        "  journal={Natural Language Engineering},\n"
        "  volume={25},\n"
        "  number={4},\n"
        "  pages={451--466},\n"
        "  year={2019}\n"
        "}"
    )
    default_backbone = RESNET_152
    text_encoder_types = ("char_gru",)

    def __init__(self, char_embedding_dim: int = 20, rnn_hidden_size: int = 1024, num_rnn_layers: int = 1,
                 bidirectional: bool = True, attention_hidden_size: int = 128, text_config=None,
                 tokenizer_vocab_size: int = CHAR_VOCAB_SIZE, projection_dim: Optional[int] = None,
                 max_violation: bool = False, normalize_image_features: bool = False, text_encoder: str = "char_gru",
                 **kwargs):
        self.char_embedding_dim = char_embedding_dim
        self.rnn_hidden_size = rnn_hidden_size
        self.num_rnn_layers = num_rnn_layers
        self.bidirectional = bidirectional
        self.attention_hidden_size = attention_hidden_size
        derived = rnn_hidden_size * (2 if bidirectional else 1) if isinstance(rnn_hidden_size, int) else None
        if projection_dim is not None and derived is not None and projection_dim != derived:
            raise ValueError(f"projection_dim ({projection_dim}) must equal rnn_hidden_size x directions ({derived}): "
                             "the attention-pooled GRU output is the caption embedding")
        kwargs.pop("word_dim", None)
        kwargs.pop("num_gru_layers", None)
        super().__init__(text_encoder=text_encoder, projection_dim=derived,
                         text_config=text_config if text_config is not None else dict(DEFAULT_CHAR_TEXT_CONFIG),
                         tokenizer_vocab_size=tokenizer_vocab_size, max_violation=max_violation,
                         normalize_image_features=normalize_image_features, **kwargs)

    def validate_ssl(self) -> None:
        self._check_positive(char_embedding_dim=self.char_embedding_dim, rnn_hidden_size=self.rnn_hidden_size,
                             num_rnn_layers=self.num_rnn_layers, attention_hidden_size=self.attention_hidden_size)
        super().validate_ssl()
        if self.tokenizer_name_or_path is None and self.tokenizer_vocab_size != CHAR_VOCAB_SIZE:
            raise ValueError(f"the built-in character tokenizer has {CHAR_VOCAB_SIZE} symbols; tokenizer_vocab_size="
                             f"{self.tokenizer_vocab_size} would train sub-word merges (set it to {CHAR_VOCAB_SIZE})")
