"""I2P-MAE: Learning 3D Representations from 2D Pre-trained Models via Image-to-Point Masked Autoencoders.

Renrui Zhang, Liuhui Wang, Yu Qiao, Peng Gao, Hongsheng Li. CVPR 2023 (arXiv:2212.06785). Official code:
https://github.com/ZrrSkywalker/I2P-MAE (built on Point-M2AE, https://github.com/ZrrSkywalker/Point-M2AE).

Method (official `models/I2P_MAE.py`, `cfgs/pre-training/i2p-mae.yaml`, `tools/runner_pretrain.py`):

* Input: a point cloud `point_values` `[B, N, 3]` (N = 2048 ShapeNet points, augmented by per-axis scale U(2/3, 3/2)
  and translation U(-0.2, 0.2)). Farthest point sampling picks G centres, kNN groups K neighbours per centre,
  expressed relative to the centre; a mini-PointNet embeds each patch into a token; an MLP of the centre coordinates
  gives its position embedding.
* Multi-view projection: the cloud is projected along the three axes (views (x, y | z), (z, x | y), (y, z | x)); each
  point splats its depth over a 5 x 5 square of a 224 x 224 map (sum), the map goes through a sigmoid and ImageNet
  normalization. A frozen 2D encoder (official CLIP ViT-B/16) encodes the three maps: its patch features are the 2D
  semantics, its last-layer CLS-to-patch attention the saliency.
* 2D-guided masking: each token's saliency is the attention map bicubically upsampled and read at its centre's pixel
  (back-projection), averaged over the views; the token order is drawn without replacement from softmax(saliency) and
  the first 20% stay visible (mask ratio 0.8): semantically important patches are likely visible.
* The encoder sees only the visible tokens; a light transformer decoder gets [visible; mask tokens] with position
  embeddings of all centres. Losses (weights 1 / 1): Chamfer distance (squared L2, both directions) between the
  predicted and true point patches of the MASKED tokens (3D-coordinate reconstruction), and MSE between the VISIBLE
  tokens' predictions and the back-projected 2D features of their points in the three views (2D-semantic
  reconstruction). Optimiser AdamW lr 1e-3, wd 0.05, cosine, 300 epochs, batch 64.

Here: `encoder` is a stock transformers `DistilBertModel` driven through `inputs_embeds` (its index position table is
zeroed and frozen: point order carries no meaning; the point positions come from the centre MLP). The mini-PointNet
(`point_tokenizer`) and the position MLP (`point_pos_embed`) turn a cloud into those embeddings.
`get_input_features(point_values)` is the mean over all point tokens. `export_encoder` writes the DistilBERT stack (loads
with `AutoModel.from_pretrained`; call it with `inputs_embeds`) plus `point_tokenizer.safetensors` / `.json`;
`export_check_input(points)` computes the embeddings it expects. The 2D encoder (`image_encoder`, frozen, always in eval
mode, saved with the checkpoint) is a ViT built from `image_encoder_config`, filled from `image_encoder_path` (an hf_ssl
checkpoint / export or any transformers ViT folder) when given. Tests and the offline CPU demo use a RANDOM-INIT 2D
encoder: there the "2D semantics" and the saliency are those of random features, so the demo measures the 3D branch
much more than the 2D guidance. Built-in data: `builtin:digits3d` (real scikit-learn digits lifted to 3-D clouds, see
`hf_ssl.training.points`).

Paper defaults (config defaults): num_points 2048, mask_ratio 0.8, 3 views, 224 px depth maps, 5 x 5 splats, ViT-B/16
2D encoder, encoder width 384 with 6 heads, decoder width 384 with 6 heads, loss weights 1 / 1.

Deviations from the paper / official code:

1. Single scale instead of the Point-M2AE pyramid (512 x 16 -> 256 x 8 -> 64 x 8 tokens, widths 96 / 192 / 384, depths
   5 / 5 / 5, multi-scale masking by back-propagation of the top-level mask, 1 + 1 decoder blocks with PointNet++
   feature propagation): one Point-MAE tokenizer (64 groups x 32 points), a 12-layer encoder and a 2-block decoder, so
   that the encoder is a single stock transformers model. Chamfer / 2D losses are computed on these tokens (official:
   on the 256 x 8 middle scale).
2. The encoder is DistilBERT (post-norm blocks; position embeddings added once to the input) rather than Point-MAE's
   pre-norm blocks with the position added before every block; the decoder does add positions before every block.
3. 2D-semantic targets: the visible token regresses the MEAN back-projected 2D feature of its K points per view
   (`3 x C` values) instead of one feature per point (`K x 3 x C`, official), which at K = 32 and C = 768 would make a
   74k-wide head.
4. Back-projection samples the 2D maps with `grid_sample` (bicubic, pixel-centre aligned) at the needed pixels instead
   of upsampling whole maps to 224 x 224 and gathering (the same interpolation, border clamping at the image edge).
5. Saliency is the head-mean of the stock ViT's last-layer CLS attention (official: CLIP's modified attention output);
   the 2D encoder is any transformers ViT, not CLIP (no CLIP weights are bundled). `saliency_temperature` (default 1,
   official) scales the softmax; attention values are ~1/num_patches, so at 1 the guided draw is close to uniform, as
   in the official code.
6. Features for k-NN / export: mean over tokens (official linear-SVM protocol: max-pool); batch norm in the tokenizer is
   per process under DDP (as official DDP without SyncBN); FPS is exact and sequential in torch (official CUDA kernel).
7. Steps instead of epochs; the random rotation computed in the official pre-training loop is unused there and not
   reproduced.
"""

from ...training import points as _points  # noqa: F401  (registers the "points" / "points_eval" view policies)
from ..registry import MethodSpec
from .configuration_i2p_mae import I2PMAEConfig
from .image_processing_i2p_mae import I2PMAEImageProcessor
from .modeling_i2p_mae import I2PMAEForSelfSupervisedPretraining

METHOD = MethodSpec(
    name="i2p_mae",
    config_class=I2PMAEConfig,
    model_class=I2PMAEForSelfSupervisedPretraining,
    image_processor_class=I2PMAEImageProcessor,
    family="masked point modeling (2D-guided)",
    description=(
        "Image-to-point MAE: FPS + kNN point patches, 2D-guided masking from a frozen 2D encoder on three depth "
        "projections, Chamfer reconstruction of masked patches + regression of back-projected 2D features by visible "
        "tokens."
    ),
    presets={
        # 256-point digits3d clouds, 32 groups x 16, 32 px depth maps, random-init 2D ViT (no weights offline):
        # k-NN 0.120 -> 0.320 in 300 steps (batch 64)
        "cpu-demo": dict(backbone_config="point-transformer-micro", num_points=256, num_groups=32, group_size=16,
                         tokenizer_hidden_dims=[64, 128, 256], decoder_hidden_size=128, decoder_depth=1,
                         decoder_num_heads=4, image_size=32,
                         image_encoder_config=dict(model_type="vit", hidden_size=64, num_hidden_layers=2,
                                                   num_attention_heads=4, intermediate_size=128, patch_size=8)),
    },
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
    default_dataset="builtin:digits3d",
)

__all__ = ["I2PMAEConfig", "I2PMAEForSelfSupervisedPretraining", "I2PMAEImageProcessor", "METHOD"]
