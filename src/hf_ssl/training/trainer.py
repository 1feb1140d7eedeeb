"""`SSLTrainer`: a `transformers.Trainer` for self-supervised pretraining.

On top of the stock Trainer it: calls `model.on_step_end` after each optimizer step; averages the model's
`SSLOutput.metrics` between logging steps (without a host sync per step); logs the running count of
skipped (undecodable) images; evaluates representations with k-NN / linear probe on labeled streams;
supports LARS and a weight-decay schedule; applies batched photometric augmentation on the training device
to batches whose view policy deferred it (`training/device_augment.py`); and writes checkpoints atomically
(into a staging folder that is renamed into place once complete, so a crash never leaves a half-written
`checkpoint-N`).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Dict, Optional

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

from .callbacks import FreezeLastLayerCallback, LossCurveCallback, StepHookCallback, WeightDecayScheduleCallback
from .data import SSLDataCollator
from .device_augment import FLAG as DEVICE_FLAG
from .device_augment import DevicePhotometricAugment
from .evaluation import evaluate_representations
from .optim import LARS, param_groups_weight_decay

logger = logging.getLogger(__name__)

STAGING_DIR = ".staging"


class SSLTrainer(Trainer):
    def __init__(self, model=None, args=None, train_dataset=None, data_collator=None, knn_train_dataset=None,
                 knn_eval_dataset=None, callbacks=None, **kwargs):
        if args is None:
            from .arguments import SSLTrainingArguments

            args = SSLTrainingArguments(output_dir="hf-ssl-runs/run")
        if knn_eval_dataset is not None:
            kwargs.setdefault("eval_dataset", knn_eval_dataset)  # evaluate() uses the k-NN streams
        callbacks = [StepHookCallback(), WeightDecayScheduleCallback(), FreezeLastLayerCallback(),
                     LossCurveCallback()] + list(callbacks or [])
        super().__init__(model=model, args=args, train_dataset=train_dataset,
                         data_collator=data_collator or SSLDataCollator(), callbacks=callbacks, **kwargs)
        self.knn_train_dataset = knn_train_dataset
        self.knn_eval_dataset = knn_eval_dataset
        self._metric_sums: Dict[str, torch.Tensor] = {}
        self._metric_count = 0
        self._skipped = torch.zeros((), dtype=torch.long)
        self._staging = False
        self._device_augment = None  # built on the first batch that asks for device photometric augmentation
        if getattr(self.args, "channels_last", False):
            self.model.to(memory_format=torch.channels_last)

    # -- optimisation -------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if not getattr(self.args, "use_lars", False):
            return super().create_optimizer(model) if model is not None else super().create_optimizer()
        if self.optimizer is None:
            groups = param_groups_weight_decay(self.model, self.args.weight_decay)
            self.optimizer = LARS(groups, lr=self.args.learning_rate, momentum=self.args.lars_momentum,
                                  eta=self.args.lars_eta)
        return self.optimizer

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not set(inputs) - {"num_skipped"}:
            # every sample of this batch was undecodable: count them, take no step on it
            self._count_skipped(inputs.pop("num_skipped", None))
            return torch.zeros((), device=self.args.device)
        return super().training_step(model, inputs, num_items_in_batch)

    def floating_point_ops(self, inputs: Dict[str, Any]) -> int:
        """Rough training FLOPs (6 x params x input elements), counting every view of a multi-view batch."""
        views = inputs.get(self.model.main_input_name)
        if views is None:
            return 0
        views = views if isinstance(views, (list, tuple)) else [views]
        numel = sum(v.numel() for v in views if torch.is_tensor(v))
        return 6 * numel * self.model.num_parameters(exclude_embeddings=True)

    def _device_photometric(self, inputs):
        """Batches from a view policy built with `device_photometric=True` carry `photometric_on_device` (one flag
        per image): apply the config's colour jitter / grayscale / blur / solarize to every view here, batched
        on the training device (`training/device_augment.py`)."""
        flags = inputs.pop(DEVICE_FLAG, None)
        if flags is None:
            return inputs
        if self._device_augment is None:
            config = self.accelerator.unwrap_model(self.model).config
            self._device_augment = DevicePhotometricAugment.from_config(config)
        inputs = dict(inputs)
        inputs["pixel_values"] = self._device_augment(inputs["pixel_values"], mask=flags.bool())
        return inputs

    def _count_skipped(self, skipped):
        if skipped is not None:
            self._skipped = self._skipped.to(skipped.device) + skipped.detach()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._count_skipped(inputs.pop("num_skipped", None))
        inputs = self._device_photometric(inputs)
        if getattr(self.args, "channels_last", False):
            inputs = {k: _to_channels_last(v) for k, v in inputs.items()}
        outputs = model(**inputs, return_dict=True)
        loss = outputs.loss
        if loss is None:
            raise ValueError(
                f"{type(self.model).__name__} returned no loss for a batch with keys {sorted(inputs)}; check that "
                "the data collator produces the views this method trains on (config.augmentation['policy'])."
            )
        if model.training and outputs.metrics:
            for key, value in outputs.metrics.items():
                value = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
                self._metric_sums[key] = self._metric_sums.get(key, 0) + value
            self._metric_count += 1
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: Dict[str, float], start_time: Optional[float] = None) -> None:
        if "loss" in logs:
            if self._metric_count:
                for key, value in self._metric_sums.items():
                    logs[key] = round(float(value) / self._metric_count, 6)
                self._metric_sums, self._metric_count = {}, 0
            logs["skipped_images"] = int(self._skipped)
        super().log(logs, start_time)

    @property
    def skipped_images(self) -> int:
        return int(self._skipped)

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> Dict[str, float]:
        """k-NN (and optional linear-probe) accuracy of the current encoder on labeled streams. Every process
        computes the same metrics on the full (small) evaluation sets, so no gathering is needed."""
        if self.knn_train_dataset is None or self.knn_eval_dataset is None:
            return super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
        model = self.accelerator.unwrap_model(self.model)
        metrics = evaluate_representations(
            model, self.knn_train_dataset, self.knn_eval_dataset, batch_size=self.args.per_device_eval_batch_size,
            k=self.args.knn_k, temperature=self.args.knn_temperature, linear_probe=self.args.linear_probe,
            device=self.args.device, disable_progress=self.args.disable_tqdm or not self.is_world_process_zero(),
        )
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    # -- checkpoints --------------------------------------------------------------------------------
    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        """Resume weights through `from_pretrained`, which applies transformers' checkpoint key conversions
        (e.g. ViT's legacy `encoder.layer.*` names written by `save_pretrained`), then copy them in strictly."""
        model = model if model is not None else self.model
        target = self.accelerator.unwrap_model(model)
        from ..modeling.base import SSLPreTrainedModel

        if not isinstance(target, SSLPreTrainedModel):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        loaded = type(target).from_pretrained(resume_from_checkpoint, config=target.config)
        target.load_state_dict(loaded.state_dict(), strict=True)
        del loaded

    # -- atomic checkpoints -------------------------------------------------------------------------
    def _get_output_dir(self, trial):
        run_dir = super()._get_output_dir(trial)
        return os.path.join(run_dir, STAGING_DIR) if self._staging else run_dir

    def _save_checkpoint(self, model, trial):
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        self._staging = True
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = False
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            staged = os.path.join(run_dir, STAGING_DIR, name)
            final = os.path.join(run_dir, name)
            if os.path.exists(final):
                shutil.rmtree(final)
            os.replace(staged, final)
            _fsync_dir(run_dir)
            if self.state.best_model_checkpoint and STAGING_DIR in self.state.best_model_checkpoint:
                self.state.best_model_checkpoint = self.state.best_model_checkpoint.replace(
                    os.sep + STAGING_DIR, "")
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
            shutil.rmtree(os.path.join(run_dir, STAGING_DIR), ignore_errors=True)
        self.accelerator.wait_for_everyone()


def _to_channels_last(value):
    """4-D float image tensors (alone or in a list of views) -> channels-last memory format; the rest unchanged."""
    if isinstance(value, (list, tuple)):
        return type(value)(_to_channels_last(v) for v in value)
    if torch.is_tensor(value) and value.dim() == 4 and value.is_floating_point():
        return value.contiguous(memory_format=torch.channels_last)
    return value


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["SSLTrainer"]
