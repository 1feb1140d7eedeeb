"""CMD: Cross-level Multi-instance Distillation for self-supervised fine-grained visual categorization.

Qi Bi, Wei Ji, Jingjun Yi, Haolan Zhan, Gui-Song Xia. "Cross-level Multi-instance Distillation for Self-supervised
Fine-grained Visual Categorization", IEEE Transactions on Image Processing 2025 (arXiv:2401.08860, 2024).
Official code: https://github.com/BiQiWHU/CMD (built on EsViT / DINO: `main_esvit.py`, `DDINOLoss`).

Method. Fine-grained categories are decided by a few key patches, so CMD treats the patch tokens of a view as a
multiple-instance bag and learns, with gated-attention MIL pooling (Ilse et al. 2018), how much each patch
contributes. An EMA teacher and a student (stock ViT here) each produce an image-level prediction (DINO head on CLS)
and region-level predictions (a second DINO head on every patch token). The objective has two families of terms:

* intra-level multi-instance distillation (teacher <-> student, across crops): image level, DINO's centred/sharpened
  cross entropy between the teacher's global crops and every other student crop (shared core
  `hf_ssl.modeling.distillation.SelfDistillationLoss`); region level, each student patch distils the teacher patch
  of the other crop whose backbone feature is most similar (`distillation.matched_region_distillation`, EsViT's
  region loss) with its own all-reduced center;
* inter-level multi-instance distillation (image <-> region inside a network): the image-level distribution of a
  crop is distilled into the MIL bag of its region predictions, `KL(p_image || sum_k a_k p_region,k)` with gated
  attention weights `a` (softmax over the bag of `w^T (tanh(V h_k) * sigmoid(U h_k))`).

Loss per step: `0.5 * image + 0.5 * region + 1.0 * inter` (official weights). Features for k-NN / export: the
teacher's CLS token.

Paper / official defaults: ViT-S/16 (also Swin-T in the paper), 65536 prototypes in both heads, last layer not
normalised (`--norm_last_layer false`), student temperature 0.1, teacher 0.04 -> 0.07 over 30 of 300 epochs,
center momentum 0.9, teacher EMA 0.996 -> 1 (cosine), 2 global crops (0.4-1, 224) + 8 local crops (0.05-0.4, 96),
AdamW lr 5e-4 (per 256 images), weight decay 0.04 -> 0.4, gradient clipping 3, last layer frozen for the first epoch.

Presets: `"cpu-demo"` - the short CPU run of `hf-ssl pretrain` on 32 px digits (2-block ViT with 8 px patches,
256 prototypes with a normalised last layer, image-level head on the mean patch token, 2 global + 2 local 16 px crops,
no colour jitter / grayscale on the grey digits) with a short-run DINO recipe: teacher temperature 0.02 (constant),
teacher EMA 0.99 -> 1, AdamW lr 1.25e-4 (DINO's 5e-4 per 256 images at batch 64), last layers frozen for the first 50
steps (`METHOD.demo_training`, trainer argument `freeze_last_layer_steps`), 300 steps: k-NN 0.580 -> 0.640 with all
three terms active. Not a paper setting. At lr 1e-3 / teacher 0.04 / EMA 0.996 the student's bottleneck output loses
its across-image diversity within ~30 steps and the image-level term sits at log K (k-NN 0.58 -> 0.46 at 800 steps);
with this recipe the image-level term still drifts towards log K in the second half of the run (5.42 of 5.55 at the
end), so the gain comes mostly from the region and inter-level terms.

Deviations from the paper / official code:

1. Inter-level term: the official `DDINOLoss` compares the image-level output with the plain SUM of the region
   probabilities through `F.kl_div(probabilities, ...)` (inputs not in log space, element-mean reduction, i.e. scaled
   by 1/K); we implement what the paper describes: the gated-attention MIL bag (weights summing to one) and a proper
   KL divergence summed over prototypes. By default (`inter_level_target="image"`) the image-level distribution is
   the stop-gradient target of the bag (the distillation direction image -> region): with gradients on both sides
   (`"both"`) the student can satisfy the term by flattening its image-level predictions, which collapsed the
   image head to uniform outputs in our runs. The teacher's inter-level term carries no gradient (EMA teacher), so it is
   logged (`teacher_inter_level_loss`) but not added to the loss. The student term is averaged over all crops once
   (officially it is repeated for every teacher/student pair).
2. The encoder is a stock transformers ViT (the EsViT code also allows Swin / multi-stage ViTs); only ViTs are
   accepted because the MIL instances are its patch tokens.
3. Schedules are in optimizer steps (`teacher_temperature_warmup_steps`); weight-decay schedule, gradient clipping and
   first-epoch last-layer freezing are trainer settings (`SSLTrainingArguments.freeze_last_layer_steps`). The
   multi-crop policy uses one augmentation setting for all crops (DINO's asymmetric blur/solarize per global crop is
   approximated by blur 0.5 / solarize 0.1 on every crop). Mixup views of the official code (off by default) are not
   provided.
"""

from ..registry import MethodSpec
from .configuration_cmd import CMDConfig
from .image_processing_cmd import CMDImageProcessor
from .modeling_cmd import CMDForSelfSupervisedPretraining

CPU_DEMO_PRESET = {
    "backbone_config": {"model_type": "vit", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                        "intermediate_size": 512, "patch_size": 8},
    "image_size": 32,
    "feature_pooling": "mean",
    "head_out_dim": 256,
    "head_hidden_dim": 512,
    "head_bottleneck_dim": 128,
    "mil_attention_dim": 64,
    "norm_last_layer": True,
    "image_feature": "mean",
    "teacher_temperature": 0.02,
    "teacher_temperature_warmup": 0.02,
    "teacher_momentum": 0.99,
    "augmentation": {"num_global": 2, "num_local": 2, "local_size": 16, "global_scale": [0.4, 1.0],
                     "local_scale": [0.1, 0.4], "horizontal_flip": 0.0, "solarize": 0.0, "gaussian_blur": 0.0,
                     "color_jitter": 0.0, "grayscale": 0.0},
}

METHOD = MethodSpec(
    name="cmd",
    config_class=CMDConfig,
    model_class=CMDForSelfSupervisedPretraining,
    image_processor_class=CMDImageProcessor,
    family="self-distillation (multi-instance, fine-grained)",
    description=(
        "Patch tokens as a multiple-instance bag with gated-attention MIL pooling; intra-level (teacher <-> student "
        "image and region) and inter-level (image <-> MIL bag) distillation on the shared DINO core."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1.25e-4, "freeze_last_layer_steps": 50},
)

__all__ = ["CMDConfig", "CMDForSelfSupervisedPretraining", "CMDImageProcessor", "METHOD", "CPU_DEMO_PRESET"]
