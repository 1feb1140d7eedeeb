"""`SSLTrainingArguments`: `transformers.TrainingArguments` plus the knobs self-supervised training needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments


def _has_accelerator(torch) -> bool:
    if torch.cuda.is_available():
        return True
    xpu = getattr(torch, "xpu", None)
    return bool(xpu is not None and xpu.is_available())


@dataclass
class SSLTrainingArguments(TrainingArguments):
    """Adds weight-decay scheduling, LARS, k-NN / linear-probe evaluation settings and SSL-friendly defaults
    (`remove_unused_columns=False` because views are not model-signature columns; per-process streaming
    shards instead of batch dispatch from rank 0; no external loggers unless asked)."""

    remove_unused_columns: bool = field(default=False, metadata={"help": "Keep all view fields."})
    report_to: Optional[str] = field(default="none", metadata={"help": "Logging integrations (default none)."})
    weight_decay_end: Optional[float] = field(
        default=None, metadata={"help": "If set, weight decay follows a cosine from weight_decay to this value (DINO)."}
    )
    freeze_last_layer_steps: int = field(
        default=0,
        metadata={"help": "DINO's `--freeze_last_layer`: drop the gradients of every DINO head's last (prototype) layer "
                          "during the first N optimizer steps (official: one epoch); 0 = off."},
    )
    use_lars: bool = field(default=False, metadata={"help": "Use LARS (SwAV/SimCLR/BYOL large-batch optimizer)."})
    lars_eta: float = field(default=0.001, metadata={"help": "LARS trust coefficient."})
    lars_momentum: float = field(default=0.9, metadata={"help": "LARS momentum."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours for k-NN evaluation."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Vote temperature for weighted k-NN."})
    linear_probe: bool = field(default=False, metadata={"help": "Also report linear-probe accuracy at evaluation."})
    plot_loss_curve: bool = field(default=True, metadata={"help": "Write loss_curve.png to output_dir at the end."})
    channels_last: bool = field(
        default=False,
        metadata={"help": "Train ConvNet encoders in channels-last memory format (model weights and 4-D image "
                          "inputs); faster convolutions on most GPUs and on oneDNN CPUs. No effect on ViTs."},
    )

    def __post_init__(self):
        import os

        import torch

        if self.accelerator_config is None:
            self.accelerator_config = {"dispatch_batches": False}
        launched = int(os.environ.get("LOCAL_RANK", -1)) != -1 or int(os.environ.get("WORLD_SIZE", 1)) > 1
        if launched and not self.use_cpu and not _has_accelerator(torch):
            # `torchrun` on a machine without an accelerator: accelerate only sets up CPU DDP (gloo) when told
            # `cpu=True`; otherwise every process would silently train its own copy of the model.
            self.use_cpu = True
            if self.ddp_backend is None:
                self.ddp_backend = "gloo"
        super().__post_init__()

        if not torch.cuda.is_available():
            self.dataloader_pin_memory = False  # nothing to pin to; avoids a warning per DataLoader
        if isinstance(self.freeze_last_layer_steps, bool) or not isinstance(self.freeze_last_layer_steps, int) \
                or self.freeze_last_layer_steps < 0:
            raise ValueError(f"freeze_last_layer_steps must be an integer >= 0, got {self.freeze_last_layer_steps!r}")
        if self.knn_k < 1:
            raise ValueError("knn_k must be >= 1")
        if self.knn_temperature <= 0:
            raise ValueError("knn_temperature must be > 0")
