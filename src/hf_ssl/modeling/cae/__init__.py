"""CAE: Context Autoencoder for Self-Supervised Representation Learning.

Xiaokang Chen, Mingyu Ding, Xiaodi Wang, Ying Xin, Shentong Mo, Yunhao Wang, Shumin Han, Ping Luo, Gang Zeng,
Jingdong Wang. International Journal of Computer Vision, 2024 (arXiv:2202.03026, 2022).
Official code: https://github.com/Atten4Vis/CAE (PyTorch; also lxtGH/CAE, PaddlePaddle/VIMER/CAE).

Method (as in the official `models/modeling_cae.py` + `models/modeling_cae_helper.py`):

* Encoder: a ViT that runs on the visible patches only (+ CLS); masked patches never enter the gradient path.
* Latent contextual regressor (depth 4 for ViT-B): cross-attention blocks whose queries are a shared learned mask
  token (the running masked estimates) plus fixed 2-D sin-cos positions of the masked patches. Keys and values are
  the visible latents concatenated with the current masked estimates (`torch.cat([x_unmasked, x_masked])`,
  `LatentRegresser.forward`); positions are added to queries and keys but not to values; each of q/k/v has its
  own LayerNorm; the attention residual is followed by a LayerNorm and a residual MLP; both residual branches
  have layer-scale gains (init 0.1); a final LayerNorm ends the stack. The CLS token is not a key.
* Alignment: the encoder's representation of the masked patches (the masked patches + CLS encoded on their own,
  CLS dropped), computed under `torch.no_grad`, is the target of the regressed latents; loss = MSE. In the
  official code this `alignment_encoder` shares the encoder's parameters (`param_alignment_encoder.data =
  param_encoder.data`), i.e. it is the encoder itself with stop-gradient; that is the default here
  (`teacher_momentum=0`). `teacher_momentum in (0, 1)` optionally uses an EMA teacher instead.
* Decoder (depth 4): pre-norm self-attention blocks (layer scale 0.1) over the regressed masked latents plus
  their sin-cos positions only, a LayerNorm and a linear head predicting the masked patches' targets.
* Loss = reconstruction loss on masked patches + `alignment_weight` (lambda = 2) x alignment MSE.
* Block-wise masking (BEiT generator, >= 16 patches per block, aspect 0.3..3.3), 98 of 196 patches (50%).
* Initialisation: xavier-uniform linears (qkv bound of the fused qkv matrix), LN 1/0, trunc-normal(0.02) mask
  token, CLS token and patch embedding; fixed sin-cos position embeddings in the encoder.
* Linear probing reads the final-norm CLS token (official scripts pass `--use_cls`), hence
  `feature_pooling="cls"` by default.

Deviations from the paper / official code:

1. Reconstruction target: default `target="pixel_norm"` (per-patch normalized pixels, MSE, MAE's norm-pix)
   instead of DALL-E d-VAE visual tokens with cross-entropy: the d-VAE tokenizer weights cannot be downloaded
   here. The paper's objective is available as `target="tokens"` (cross-entropy over `vocab_size=8192` ids) when
   the caller supplies `visual_tokens [B, N]` in the batch or registers a tokenizer callable with
   `model.set_tokenizer(fn)` (the official tokenizer sees a 112 px lanczos-resized copy of the crop and
   `map_pixels`; a wrapped callable must do that itself). `target="pixel"` (raw pixels, MSE) is also offered.
2. Encoder: the stock transformers `ViTModel` (so `export_encoder` gives a vanilla checkpoint) instead of the
   official BEiT-style ViT: no encoder layer scale (official `--layer_scale_init_value 0.1`), no stochastic depth
   (official `--drop_path 0.1`), learnable key bias (the official key bias is fixed to zero; this has no effect
   on attention), LayerNorm eps 1e-12 of the ViT config (official 1e-6). The fixed sin-cos position embeddings
   are reproduced by writing them into ViT's `position_embeddings` and freezing that parameter
   (`encoder_sincos_pos_embed=True`); downstream fine-tuning of the exported ViT may train them.
3. Regressor/decoder attention uses one fused key/value projection (`heads.Attention`) with a learnable key bias;
   mathematically the same function class as the official separate q/k/v projections.
4. No drop path in regressor/decoder (official uses the encoder's `--drop_path 0.1` schedule there too).
5. `embeddings` in the output are pooled from the visible-token encoder pass (no extra full-image forward);
   `get_image_features` runs the full image.
6. The alignment target is recomputed with the current encoder weights at every forward; the official
   Atten4Vis code does the same through shared storage, while the lxtGH/Paddle variants copy the weights inside
   `forward`, so their targets lag one optimizer step.
7. The optional EMA teacher (`teacher_momentum > 0`) is an extension, not in the paper.

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain --method cae` on the 32 px built-in digits (vit-micro,
regressor and decoder 2 blocks of 128, block masks of at least 4 patches, `target="pixel"`, 800 steps at AdamW 3e-4,
`METHOD.demo_training`): k-NN 0.777 -> 0.817. With `pixel_norm` targets, or at lr 1e-3, k-NN falls below the
random-init encoder on this tiny, blurry data (measured: 0.62 and 0.56). Not a paper setting.
"""

from ..registry import MethodSpec
from .configuration_cae import CAEConfig
from .image_processing_cae import CAEImageProcessor
from .modeling_cae import CAEForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    # the short CPU run of `hf-ssl pretrain --method cae` on the 32 px built-in digits; not a paper setting
    "backbone_config": "vit-micro",
    "image_size": 32,
    "regressor_depth": 2,
    "decoder_depth": 2,
    "decoder_hidden_size": 128,
    "decoder_num_heads": 4,
    "feature_pooling": "mean",
    # unnormalized pixel targets: on 32 px upsampled 8x8 digits a 4 px patch is nearly flat, and per-patch
    # normalization turns it into amplified interpolation noise (k-NN fell to 0.62 with "pixel_norm")
    "target": "pixel",
    "augmentation": {"crop_scale": [0.5, 1.0], "horizontal_flip": 0.0, "min_block_patches": 4},
}

METHOD = MethodSpec(
    name="cae",
    config_class=CAEConfig,
    model_class=CAEForSelfSupervisedPretraining,
    image_processor_class=CAEImageProcessor,
    family="masked image modeling",
    description=(
        "Context Autoencoder: a ViT encodes visible patches only, a cross-attention regressor predicts the masked "
        "patches' latents (aligned, stop-gradient, with the encoder's own latents of those patches) and a decoder "
        "reconstructs the masked patches from them; block-wise 50% masking."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    # 800 steps of batch 64 at AdamW 3e-4: k-NN 0.777 -> 0.817 on the digits (at 1e-3 the encoder degrades)
    demo_training={"max_steps": 800, "learning_rate": 3e-4},
)

__all__ = ["CAEConfig", "CAEForSelfSupervisedPretraining", "CAEImageProcessor", "METHOD"]
