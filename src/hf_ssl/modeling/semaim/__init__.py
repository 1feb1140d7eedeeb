"""SemAIM: Semantic-Aware Autoregressive Image Modeling for Visual Representation Learning.

Kaiyou Song, Shan Zhang, Tong Wang. AAAI Conference on Artificial Intelligence, 2024 (arXiv:2312.10457).
Official code: https://github.com/skyoux/SemAIM (`models/models_semaim.py`, `engines/engine_pretrain.py`).

Method (as in the official code, default `--permutation_type attention_center --attention_type cls`):

* Semantic-aware order: before each step the model's own encoder runs on the full image without gradient; the
  cosine similarity (softmax over patches) between the final CLS token and every patch token marks the most
  semantic patch. Patches are autoregressed by increasing spatial distance from that patch (random tie-break
  1e-3), i.e. from the most semantic region outwards. `permutation_type="attention"` orders by the similarity
  itself; "stochastic" (AIM) and "raster" orders are kept for ablation.
* Two-stream (XLNet-style) autoregression: the content stream is the stock ViT on `[CLS ; patches + pos]` with an
  additive mask (a patch sees itself and earlier patches, every patch sees CLS, CLS sees only itself); the query
  stream starts from the fixed position embeddings and, after every `depth // query_depth` encoder layers, runs a
  cross-attention block on the content stream whose mask lets patch n see only strictly earlier patches (and CLS).
* Prediction: LayerNorm + MLP head on the query stream predicts each patch's per-patch-normalized pixels of a
  Gaussian-blurred (9x9, sigma 1) image (default), or the encoder's own stop-gradient tokens (`target="features"`,
  L2-normalized squared distance). Loss: mean over all patches (the first patch is predicted from CLS only).
* Fixed 2-D sin-cos positions (frozen) in the encoder; xavier-uniform linears.

Deviations from the paper / official code:

1. Encoder is the stock transformers `ViTModel` (exportable): LayerNorm eps 1e-12, no drop path (official
   drop_path 0 for pretraining anyway), stock ViT init for the encoder apart from the sin-cos positions
   (official: xavier-uniform for every linear, normal(0.02) CLS).
2. The similarity pass uses the encoder in whatever train/eval mode the model is in (the official code switches
   to `model.eval()`); the stock ViT has no dropout by default, so this is the same function.
3. Query blocks use `heads.Attention` (separate q and fused kv projections) instead of one fused qkv matrix; same
   function class. The official attention masks use -inf; here the dtype's most negative finite value.
4. DINO/CLIP teacher guidance (`--predict_feature dino|clip`) and the EMA-model option are not included (no
   pretrained teacher weights here); the self-guided default is what the paper's main results use.
5. `embeddings` in the output come from the stop-gradient full-image pass (none extra is run).
"""

from ..registry import MethodSpec
from . import views_semaim  # noqa: F401  (registers the "single_view" view policy)
from .configuration_semaim import SemAIMConfig
from .image_processing_semaim import SemAIMImageProcessor
from .modeling_semaim import SemAIMForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    # the short CPU run of `hf-ssl pretrain --method semaim` on the 32 px built-in digits; not a paper setting
    "backbone_config": "vit-micro",
    "image_size": 32,
    "query_depth": 2,
    "target_blur_kernel_size": None,
    "target": "pixel",  # raw (input-normalized) pixels: beat per-patch-normalized ones on the 300-step k-NN
    "feature_pooling": "mean",
    "augmentation": {"crop_scale": [0.5, 1.0], "horizontal_flip": 0.0},
}

METHOD = MethodSpec(
    name="semaim",
    config_class=SemAIMConfig,
    model_class=SemAIMForSelfSupervisedPretraining,
    image_processor_class=SemAIMImageProcessor,
    family="autoregressive image modeling",
    description=(
        "Semantic-aware autoregressive image modeling: patches are predicted in an order that starts at the patch "
        "most similar to the encoder's own (stop-gradient) CLS feature and spreads outwards; a two-stream "
        "(content + position-query) masked ViT predicts each patch's normalized pixels from earlier patches."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["SemAIMConfig", "SemAIMForSelfSupervisedPretraining", "SemAIMImageProcessor", "METHOD"]
