"""SOLIDER: a semantic-controllable self-supervised framework for human-centric representations.

Weihua Chen, Xianzhe Xu, Jian Jia, Hao Luo, Yaohua Wang, Fan Wang, Rong Jin, Xiuyu Sun. "Beyond Appearance: a Semantic
Controllable Self-Supervised Learning Framework for Human-Centric Visual Tasks", CVPR 2023 (arXiv:2303.17602).
Official code: https://github.com/tinyvision/SOLIDER (`main_solider.py`, `swin_transformer.py`, `utils.get_mask`).

Method (as in the official code):

* DINO self-distillation (shared core `hf_ssl.modeling.distillation`): EMA teacher on the 2 global crops, student on
  all crops, centred/sharpened teacher targets (65536 prototypes, teacher 0.04 / student 0.1, center 0.9, EMA
  0.996 -> 1).
* Pseudo semantic labels: the teacher's last-stage tokens (computed at lambda = 1) of every global crop are clustered
  PER IMAGE: 2-means on token norms gives foreground (high norm) vs background; images with more than half of their
  tokens in the foreground are clustered into `num_parts` = 3 parts, numbered top to bottom by mean row (so labels
  mean the same body region across images), background = 0.
* Semantic head: a 3-layer DINO-style head on every student token predicts the `num_parts + 1` labels (cross
  entropy), on the global crops and on extra copies of them with one randomly chosen part erased (whose tokens must
  still be labelled with the erased part). Each image's token losses are multiplied by its lambda.
* Semantic controller: lambda in [0, 1] (trained with lambda in {0, 1}, one per image, shared by all of its crops and
  by the teacher's DINO targets) enters as `[lambda, 1 - lambda]`; after every patch-merging stage the tokens are
  modulated per channel `x * softplus(W s + b) + (W' s + b')`. At inference lambda is a user input:
  `get_image_features(pixel_values, semantic_weight=0.2)` (0 = appearance, 1 = semantics; the paper picks it per
  downstream task).

Backbone: the paper's Swin, as the stock transformers `SwinModel` (Swin-T by default). The
controller lives OUTSIDE the stock encoder (transformers' Swin has no conditioning input): the model runs the stock
Swin stage by stage and modulates between stages. Export: `export_encoder` writes a vanilla `SwinModel` at a fixed
lambda (`config.semantic_weight`, default 1.0, or `export_encoder(dir, semantic_weight=0.2)`): the modulation after a
patch merging is an exact per-channel affine map of the merging output, so it is folded into the merging layer
(reduction weight scaled per output channel, LayerNorm bias solved through the scaled reduction's pseudo-inverse,
checked for exactness). The exported checkpoint therefore reproduces
`get_image_features(x, semantic_weight=lambda)` for that one lambda; other lambdas need another export or hf_ssl.
`semantic_weight="none"` exports the unconditioned base encoder (not what training optimised).

Paper / official defaults: Swin-T/S/B, LUPerson, 100 epochs, batch 384, 256 x 128 global crops (scale 0.8-1) + 8
local 128 x 64 crops (scale 0.05-0.8), `--partnum 3`, `--parthead_nlayers 3`, `--semantic_loss 1.0`, AdamW with
weight decay 0.04 -> 0.4, norm_last_layer True.

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on 32 px digits (2-stage Swin, embed 32, patch 4,
window 4; 256 prototypes; 2 global + 2 local 16 px crops) with a short-run DINO recipe: teacher temperature 0.02
(constant), teacher EMA 0.99 -> 1, AdamW lr 1.25e-4 (DINO's 5e-4 per 256 images at batch 64), DINO last layers
frozen for the first 50 steps (`METHOD.demo_training`, trainer argument `freeze_last_layer_steps`); 300 steps: k-NN
0.563 -> 0.613 with the semantic terms active (previously lr 1e-3 / teacher 0.04 / EMA 0.996, 800 steps: 0.563 ->
0.570). Not a paper setting.

Deviations from the paper / official code:

1. Square crops (hf_ssl's views and image processors are square); the official person crops are 256 x 128 with
   aspect ratios 0.4-0.6 - set `image_size` and pass person images; the multi-crop policy uses one augmentation
   setting for all crops (DINO's per-crop blur/solarize asymmetry approximated by blur 0.5 / solarize 0.1).
2. k-means: torch Lloyd iterations with a fixed-seed k-means++ start (`hf_ssl.modeling.losses.kmeans`) per image
   instead of scikit-learn's `KMeans(random_state=0)` with several restarts; labels are per image, so they never
   depend on the batch or on the process.
3. The official erased part is one random part index per batch; kept. The last-stage modulation of the official
   model has no effect on any output and is omitted (no parameters for it).
4. Small crops: transformers' Swin permanently shrinks a block's window when a feature map is smaller than the window
   (its relative-position table then no longer fits); SOLIDER runs each stage with the configured window kept and the
   map padded to it, as the official mmcv Swin does (shift dropped for a map that fits in one window, as stock), see
   `modeling_solider._fixed_windows`, so 96 px local crops work with window 7.
5. Schedules are in optimizer steps; weight-decay schedule, gradient clipping and first-epoch last-layer freezing are
   trainer settings (`SSLTrainingArguments.freeze_last_layer_steps`). `semantic_weight_sampling="uniform"` (lambda ~ U[0, 1]) is offered as an option; the default is
   the official {0, 1}.
"""

from ..registry import MethodSpec
from .configuration_solider import SOLIDERConfig
from .image_processing_solider import SOLIDERImageProcessor
from .modeling_solider import SOLIDERForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": {"model_type": "swin", "embed_dim": 32, "depths": [2, 2], "num_heads": [2, 4],
                        "window_size": 4, "patch_size": 4},
    "image_size": 32,
    "head_out_dim": 256,
    "head_hidden_dim": 512,
    "head_bottleneck_dim": 128,
    "teacher_temperature": 0.02,
    "teacher_temperature_warmup": 0.02,
    "teacher_momentum": 0.99,
    "augmentation": {"num_global": 2, "num_local": 2, "local_size": 16, "global_scale": [0.4, 1.0],
                     "local_scale": [0.1, 0.4], "horizontal_flip": 0.0, "solarize": 0.0, "gaussian_blur": 0.0},
}

METHOD = MethodSpec(
    name="solider",
    config_class=SOLIDERConfig,
    model_class=SOLIDERForSelfSupervisedPretraining,
    image_processor_class=SOLIDERImageProcessor,
    family="self-distillation + semantic clustering (controllable)",
    description=(
        "DINO on a stock Swin plus per-image token clustering into semantic parts, a token classification head and a "
        "lambda-conditioned semantic controller between Swin stages (appearance vs semantics at inference)."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1.25e-4, "freeze_last_layer_steps": 50},
)

__all__ = ["SOLIDERConfig", "SOLIDERForSelfSupervisedPretraining", "SOLIDERImageProcessor", "METHOD", "CPU_DEMO_PRESET"]
