"""Mod-X: Continual Vision-Language Representation Learning with Off-Diagonal Information.

Zixuan Ni, Longhui Wei, Siliang Tang, Yueting Zhuang, Qi Tian. ICML 2023 (arXiv:2305.07437).
Official code: https://github.com/ZixuanNi/Mod-X (`ModX_Training/continue_train_model.py`: `cognition_align`,
the KL on both similarity matrices, `all_loss = loss_train + alpha * loss_distill`; `modx_5phase.sh`: alpha 20).

Method (method `"modx"`, built on the hf_ssl CLIP core, `hf_ssl.modeling.clip`):

* Continual CLIP training: the new model is trained on the new data domain with CLIP's symmetric InfoNCE
  (`clip_contrastive_loss`, DDP-gathered), while a frozen copy of the previous phase's model ("old model")
  scores the same batch.
* Off-diagonal information distillation: the new model's image->text and text->image cosine-similarity matrices
  are matched row by row to the old model's with a KL divergence, `KL(softmax(S_old) || softmax(S_new))`, summed
  over rows and averaged over the two directions. Matching whole rows keeps the old model's *off-diagonal*
  structure (how similar each image is to the other captions), which the paper shows is what drifts ("spatial
  disorder") during plain continual CLIP training.
* Screening of the old model's errors (official `cognition_align`): rows where the old model's best match is
  not the paired item are replaced by the new model's row (zero KL, zero gradient).
* Loss: `L = L_CLIP + alpha * L_KL`.
* The old model: `old_model_name_or_path` (a previous `hf_ssl_clip` / `hf_ssl_modx` checkpoint; both models start
  from it, as the official `--checkpoint_path`) or, without a path, a snapshot of the new model taken at
  construction (`snapshot_old_model()` re-takes it, e.g. at the start of the next phase). Its parameters
  (`teacher_encoder`, `teacher_text_encoder`, `teacher_*_projection`) never get gradients and run in eval mode.
* Under DDP each process builds its rows of both matrices against the gathered columns (`losses.all_gather`; new
  columns with gradient, old without), so the KL equals the single-process one on the global batch.

Paper / official defaults: RN50 or ViT-B/32 CLIP; alpha = 20 (official scripts), KL temperature 1 on raw cosine
similarities, reduction sum; AdamW lr 5e-4, eps 1e-5, weight decay 0.01, 20% warm-up + cosine, batch 280,
5 phases over Flickr30K/COCO splits (trainer / data settings, not model settings).

Presets: `"cpu-demo"`: the CLIP demo towers (resnet-tiny + 2 x 64 CLIP text encoder, 32 px digits), alpha 1 (the
demo's old model is the random-init snapshot, so the screen drops most rows at first).

Deviations from the paper:

1. Built on hf_ssl's CLIP core: stock transformers image backbones and `CLIPTextModel`, offline BPE tokenizer,
   forward-clamped logit scale (see the CLIP DEVIATIONS).
2. Under DDP the summed KL is scaled by the world size so gradients match one process on the global batch (the
   official code uses single-process DataParallel).
3. `distillation_temperature` and `distillation_reduction="mean"` are extra knobs (official: 1 and sum).
4. The built-in demo has no real continual sequence of domains: with no `old_model_name_or_path` the old model is
   the snapshot at construction. Supply a previous checkpoint for a continual phase.
"""

from ..registry import MethodSpec
from ..clip import views_clip  # noqa: F401  (registers the "image_text" view policy)
from ..clip import CPU_DEMO_PRESET as _CLIP_DEMO
from .configuration_modx import ModXConfig
from .image_processing_modx import ModXImageProcessor
from .modeling_modx import (ModXForSelfSupervisedPretraining, modx_distillation_loss, offdiagonal_kl,
                            screen_old_rows)

CPU_DEMO_PRESET = {**_CLIP_DEMO, "distillation_weight": 1.0}

METHOD = MethodSpec(
    name="modx",
    config_class=ModXConfig,
    model_class=ModXForSelfSupervisedPretraining,
    image_processor_class=ModXImageProcessor,
    family="vision-language (continual)",
    description=(
        "Continual CLIP training that distils the frozen old model's full image-text similarity matrices "
        "(off-diagonal information) with a row-wise KL, after screening the old model's wrong rows."
    ),
    presets={"cpu-demo": CPU_DEMO_PRESET},
    demo_training={"max_steps": 300, "learning_rate": 1e-3},
)

__all__ = ["ModXConfig", "ModXForSelfSupervisedPretraining", "ModXImageProcessor", "modx_distillation_loss",
           "offdiagonal_kl", "screen_old_rows", "METHOD"]
