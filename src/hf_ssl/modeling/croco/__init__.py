"""CroCo and CroCo v2: cross-view completion.

Philippe Weinzaepfel, Vincent Leroy, Thomas Lucas, Romain Brégier, Yohann Cabon, Vaibhav Arora, Leonid Antsfeld,
Boris Chidlovskii, Gabriela Csurka, Jérôme Revaud. "CroCo: Self-Supervised Pre-training for 3D Vision Tasks by
Cross-View Completion", NeurIPS 2022 (arXiv:2210.10716); and "CroCo v2: Improved Cross-view Completion Pre-training
for Stereo Matching and Optical Flow", ICCV 2023 (arXiv:2211.10408). Official code: https://github.com/naver/croco
(`models/croco.py`, `models/blocks.py`, `models/pos_embed.py`, `models/criterion.py`, `datasets/transforms.py`,
`pretrain.py`).

Method (as in the official code):

* A pair of images of the same scene from two viewpoints. The first image is patchified and 90% of its patches are
  masked at random (exact count `int(0.9 N)`); the shared (siamese) ViT encoder sees only its visible patches. The
  second image (the reference) is encoded whole by the same encoder.
* Decoder (512 wide, 8 blocks, 16 heads): both token sets are linearly embedded to the decoder width, mask tokens
  fill the first image's masked positions, and every block applies self-attention over the first image's tokens,
  cross-attention from them to the (LayerNorm-ed) reference tokens, then an MLP. A linear head predicts each patch's
  pixels; the loss is the MSE to per-patch normalized pixels (`norm_pix_loss`) over the masked patches only.
* CroCo v1 adds fixed 2-D sin-cos position tables; CroCo v2 (`croco_version=2`, preset `"v2"`) uses 2-D rotary
  position embeddings with base frequency 100 (`RoPE100`, `heads.RoPE2D`) inside every attention and a larger
  decoder (preset `"v2"`: 768 wide, 12 blocks, 12 heads, the released "BaseDecoder").
* Pairs: the `"croco_pair"` view policy takes a dataset's second image column (stereo / multi-view pairs; detected
  automatically or named by `augmentation["pair_column"]`), resizes each image's shorter side to 256/224 of the
  crop size, takes independent random crops (official `RandomCropPair`) and an asymmetric colour jitter
  (brightness/contrast/saturation factors in [0.6, 1.4], official `acolor`).
* Single-image data (e.g. the built-in digits) has no second view: the policy then makes a SYNTHETIC second view by
  a random homography of the same crop (corners moved by up to 15% of the side) and flags every such example
  (`synthetic_pair`, logged as `synthetic_pair_fraction`). This is a stand-in to exercise the method on any image
  stream, not the paper's data; `pair_source="column"` refuses single images.

The stock ViT keeps the first image's masked patches out of the encoder via hf_ssl's visible-token forward, so the
exported encoder is a vanilla `ViTModel`. `embeddings` are the pooled tokens of the reference image.

Real pair data that ships offline: scikit-image's `motorcycle_left` / `motorcycle_right` stereo pair (Middlebury)
is used by the tests as a genuine two-view sample.

Presets: `"v2"` - CroCo v2 with RoPE100 and the base decoder. `"cpu-demo"` - the short CPU run of `hf-ssl pretrain`
on the 32 px built-in digits (`vit-micro`, decoder 128 x 2 blocks x 4 heads, mask ratio 0.75, synthetic pairs
with homography strength 0.1). Not a paper setting.

Deviations from the paper / official code:

1. The encoder is a stock transformers ViT: it has a CLS token (CroCo's encoder has none; the decoder here drops
   the CLS tokens, so it sees patch tokens only as officially), and its position table is the fixed 2-D sin-cos
   table (zero for CLS) frozen in the encoder for both versions. CroCo v2 applies RoPE inside the ENCODER too; a
   stock `ViTModel` cannot, so hf_ssl's v2 uses RoPE in the decoder only and keeps absolute sin-cos positions in the
   encoder, so the exported encoder stays a vanilla checkpoint.
2. The decoder's attention uses one fused key/value projection (`heads.Attention`) instead of separate `projk` /
   `projv` matrices (same function class; xavier init is per matrix as officially).
3. Synthetic homography pairs for single-image datasets (flagged, see above); the paper's Habitat / real-world
   pair datasets are not bundled. The paper also tried homography/rotation augmentations of real pairs and found
   them unhelpful; they are not applied to real pairs here.
4. PIL bicubic resize of the shorter side before the crop (the official crops are taken from 256 px renders);
   the optimizer recipe (AdamW, betas (0.9, 0.95), base lr 1.5e-4 x batch / 256, weight decay 0.05, 40 warm-up
   epochs, 400 epochs, cosine) belongs to the trainer arguments.
"""

from ..registry import MethodSpec
from . import views_croco  # noqa: F401  (registers the "croco_pair" view policy)
from .configuration_croco import CroCoConfig
from .image_processing_croco import CroCoImageProcessor
from .modeling_croco import CroCoDecoderBlock, CroCoForSelfSupervisedPretraining

V2_PRESET = {"croco_version": 2, "decoder_hidden_size": 768, "decoder_depth": 12, "decoder_num_heads": 12}

CPU_DEMO_PRESET = {
    "backbone_config": "vit-micro",
    "image_size": 32,
    "mask_ratio": 0.75,
    "decoder_hidden_size": 128,
    "decoder_depth": 2,
    "decoder_num_heads": 4,
    "augmentation": {"homography_strength": 0.1},
}

METHOD = MethodSpec(
    name="croco",
    config_class=CroCoConfig,
    model_class=CroCoForSelfSupervisedPretraining,
    image_processor_class=CroCoImageProcessor,
    family="masked image modeling (cross-view)",
    description=(
        "Cross-view completion: reconstruct the masked 90% of one image from its visible patches and a second view "
        "of the scene through a cross-attention decoder (v2: RoPE positions)."
    ),
    presets={"v2": V2_PRESET, "cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 400, "learning_rate": 3e-4},
)

__all__ = ["CroCoConfig", "CroCoForSelfSupervisedPretraining", "CroCoImageProcessor", "CroCoDecoderBlock", "METHOD",
           "CPU_DEMO_PRESET", "V2_PRESET"]
