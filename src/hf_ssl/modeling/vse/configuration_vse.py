"""VSE++ configuration (Faghri et al., "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives")."""

from __future__ import annotations

from ..clip.configuration_clip import CLIPSSLConfig

# VSE++'s best image encoder: ResNet-152 (stock transformers ResNet, bottleneck blocks 3-8-36-3)
RESNET_152 = dict(model_type="resnet", layer_type="bottleneck", depths=[3, 8, 36, 3],
                  hidden_sizes=[256, 512, 1024, 2048])
# the text side of the GRU encoder: only vocab_size (token embedding table) and max_position_embeddings (context
# length) are read; with text_encoder="transformer" this is the stock text model that is built
DEFAULT_VSE_TEXT_CONFIG = dict(model_type="clip_text_model", vocab_size=1024, hidden_size=512, intermediate_size=2048,
                               num_hidden_layers=4, num_attention_heads=8, max_position_embeddings=32,
                               bos_token_id=0, eos_token_id=1, pad_token_id=2)


class VSEPPConfig(CLIPSSLConfig):
    r"""Configuration of :class:`VSEPPForSelfSupervisedPretraining` (image-caption embedding, hinge ranking loss).

    Defaults follow the paper (Sec. 3-4) and the official code (https://github.com/fartashf/vsepp, `model.py`).

    Args:
        backbone_config: image CNN (default ResNet-152, the paper's best; VGG19 in other rows).
        text_encoder: `"gru"` (paper: word embeddings of `word_dim` + 1-layer GRU of `projection_dim` units, last
            hidden state) or `"transformer"` (a stock transformers text model built from `text_config`).
        text_config: vocab size / context length of the tokenizer (GRU) or the stock text model (transformer).
        projection_dim: joint embedding size (paper 1024; also the GRU width).
        word_dim: word embedding size of the GRU encoder (paper 300).
        num_gru_layers: GRU depth (paper 1).
        margin: hinge margin alpha (paper 0.2).
        max_violation: hardest negative in the batch ("MH", VSE++) if True, sum over all negatives ("SH", VSE0).
        loss_reduction: `"sum"` over the batch (official) or `"mean"`.
        normalize_image_features: L2-normalise the CNN feature before the linear projection (official
            `EncoderImageFull`); the joint embeddings are always L2-normalised (cosine similarity).
    """

    model_type = "hf_ssl_vse"
    paper_title = "VSE++: Improving Visual-Semantic Embeddings with Hard Negatives"
    paper_url = "https://arxiv.org/abs/1707.05612"
    citation = (
        "@inproceedings{faghri2018vse,\n"
        "  title={VSE++: Improving Visual-Semantic Embeddings with Hard Negatives},\n"
        "  author={Faghri, Fartash and Fleet, David J. and Kiros, Jamie Ryan and Fidler, Sanja},\n"
        "  booktitle={British Machine Vision Conference (BMVC)},\n"
        "  year={2018}\n"
        "}"
    )
    default_backbone = RESNET_152
    # official training transform: RandomResizedCrop(224) + horizontal flip + ImageNet normalisation
    default_augmentation = {
        "policy": "image_text",
        "crop_scale": [0.08, 1.0],
        "horizontal_flip": 0.5,
        "color_jitter": 0.0,
        "grayscale": 0.0,
        "gaussian_blur": 0.0,
        "solarize": 0.0,
    }
    text_encoder_types = ("gru", "transformer")

    def __init__(self, text_encoder: str = "gru", text_config=None, projection_dim: int = 1024, word_dim: int = 300,
                 num_gru_layers: int = 1, margin: float = 0.2, max_violation: bool = True,
                 loss_reduction: str = "sum", normalize_image_features: bool = True, **kwargs):
        self.text_encoder = text_encoder
        self.word_dim = word_dim
        self.num_gru_layers = num_gru_layers
        self.margin = margin
        self.max_violation = max_violation
        self.loss_reduction = loss_reduction
        self.normalize_image_features = normalize_image_features
        super().__init__(text_config=text_config if text_config is not None else dict(DEFAULT_VSE_TEXT_CONFIG),
                         projection_dim=projection_dim, **kwargs)

    def validate_ssl(self) -> None:
        super().validate_ssl()
        if self.text_encoder not in self.text_encoder_types:
            raise ValueError(f"text_encoder must be one of {self.text_encoder_types}, got {self.text_encoder!r}")
        self._check_positive(word_dim=self.word_dim, num_gru_layers=self.num_gru_layers)
        if self.margin is None or not (0 <= self.margin <= 2):
            raise ValueError(f"margin must be in [0, 2] (cosine similarities), got {self.margin}")
        if self.loss_reduction not in ("sum", "mean"):
            raise ValueError(f"loss_reduction must be 'sum' or 'mean', got {self.loss_reduction!r}")
