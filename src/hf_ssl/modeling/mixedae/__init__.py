"""MixedAE: Mixed Autoencoder for Self-supervised Visual Representation Learning.

Kai Chen, Zhili Liu, Lanqing Hong, Hang Xu, Zhenguo Li, Dit-Yan Yeung. CVPR 2023 (arXiv:2303.17152).
Official code: announced by the authors but not public at the time of writing (no official repository or
mmselfsup port could be found); the implementation follows the paper. The unofficial `Natyren/MixedAE` was read for
orientation only.

Method as implemented:

* Mixing: the batch is split into groups of `g = 1 / r` images (mixing ratio `r`, default 0.25 -> 4 images). For
  every group one mixed input is built: a random balanced assignment gives each position of the `N`-patch grid to
  exactly one source image of the group, every source owning exactly `r * N` positions (so the encoder processes
  as many patch tokens as MAE at 75% masking). Patch tokens keep their own position embedding and get a learned
  segment embedding of their source slot; the sequence starts with one CLS token per source slot (`g` copies of
  the ViT's CLS + position), so that every source keeps its own global token.
* Homologous recognition: the stock ViT layers run on the mixed sequence with homologous attention, passed to each
  layer as an additive attention mask: `"topk"` (paper's HomoAtt, default: every query keeps only its `r * N + 1`
  highest attention scores, the size of its homologous set incl. its CLS), or `"mask"` (oracle homology mask: a
  token attends only to tokens of its own source image, CLS included; each source is then encoded exactly as if
  alone), or `"none"` (naive mixing).
* Homologous contrastive loss (HomoCon): a supervised-contrastive loss on the L2-normalised output patch tokens of
  each mixed image, positives = the other tokens of the same source, candidates = all other tokens of that mixed
  image (no cross-image or cross-batch negatives, hence no DDP communication).
* Reconstruction: each source image is decoded by an MAE decoder from its own output tokens (linear embed of its CLS
  and its own patch tokens, mask tokens at the positions the image did not contribute, fixed 2-D sin-cos positions,
  transformer blocks, linear pixel head); MSE against per-patch normalized pixels, averaged over those
  non-contributed (masked) positions only.
* Loss: `L = L_rec + homocon_weight * L_HomoCon` (optionally HomoCon on an MLP projection, `homocon_projection_dim`).

Deviations from the paper:

1. Stock transformers `ViTModel` encoder (learned position embeddings instead of MAE's fixed sin-cos table).
2. No official code was available: HomoCon's temperature (0.07, the supervised-contrastive default) and weight
   (1.0), TopK's `k = r * N + 1`, and applying HomoAtt in every encoder layer are our choices.
3. One CLS token per source slot (each source's CLS feeds its own reconstruction, as MAE's decoder prepends the CLS);
   a single CLS shared by the group would carry the other images into every reconstruction and, being attended by
   every patch in training, distorts full-image features at inference.
4. A batch whose size is not a multiple of `g` completes its last group with images from the start of the batch
   (wrap-around); those fillers are mixed in but reconstructed only once (in their own group).
5. Mixing, masking and the assignment are drawn inside the model on the batch (one random assignment per mixed
   image); the view policy only produces MAE's random-resized-crop + flip views.
6. The segment embedding (outside the stock ViT) is used in pretraining only; `export_encoder` writes the plain ViT.
"""

from ..registry import MethodSpec
from . import views_mixedae  # noqa: F401  (registers the "mixedae" view policy)
from .configuration_mixedae import MixedAEConfig
from .image_processing_mixedae import MixedAEImageProcessor
from .modeling_mixedae import MixedAEForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="mixedae",
    config_class=MixedAEConfig,
    model_class=MixedAEForSelfSupervisedPretraining,
    image_processor_class=MixedAEImageProcessor,
    family="masked image modeling",
    description=(
        "MAE on patch-mixed inputs: groups of 1/r images are mixed patch-wise, the ViT recognises homologous "
        "patches (TopK homologous attention + homologous contrastive loss) and an MAE decoder reconstructs each "
        "source image from its own tokens (norm-pix MSE on the positions it did not contribute)."
    ),
    presets={
        # the short CPU run of `hf-ssl pretrain --method mixedae` on the 32 px built-in digits; not a paper setting:
        # vit-micro widths with 8 px patches (16 patches, 4 per source image), a small decoder, AdamW 1e-4
        "cpu-demo": dict(backbone_config=dict(model_type="vit", hidden_size=128, num_hidden_layers=4,
                                              num_attention_heads=4, intermediate_size=512, patch_size=8),
                         image_size=32, decoder_hidden_size=64, decoder_depth=2, decoder_num_heads=4,
                         feature_pooling="mean", augmentation={"crop_scale": [0.5, 1.0], "horizontal_flip": 0.0}),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-4},
)

__all__ = ["MixedAEConfig", "MixedAEForSelfSupervisedPretraining", "MixedAEImageProcessor", "METHOD"]
