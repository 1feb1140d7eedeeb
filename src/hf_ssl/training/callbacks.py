"""Trainer callbacks: the per-step model hook, weight-decay schedule and loss-curve plots."""

from __future__ import annotations

import logging
import os

from transformers import TrainerCallback

from ..modeling.momentum import cosine_schedule

logger = logging.getLogger(__name__)


def _unwrap(model):
    while hasattr(model, "module"):
        model = model.module
    return model


class StepHookCallback(TrainerCallback):
    """Calls `model.on_step_end(global_step, max_steps)` after every optimizer step (EMA teachers, queues,
    prototype normalization, momentum/temperature schedules)."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        model = _unwrap(model)
        hook = getattr(model, "on_step_end", None)
        if hook is not None:
            hook(state.global_step, state.max_steps)


class WeightDecayScheduleCallback(TrainerCallback):
    """Cosine weight-decay schedule from `args.weight_decay` to `args.weight_decay_end` (DINO/iBOT), applied
    to the parameter groups that decay (groups created with weight_decay 0 stay at 0)."""

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if args.weight_decay_end is None or optimizer is None:
            return
        wd = cosine_schedule(state.global_step, state.max_steps, args.weight_decay, args.weight_decay_end)
        for group in optimizer.param_groups:
            if group.setdefault("_hf_ssl_decays", group.get("weight_decay", 0.0) > 0):
                group["weight_decay"] = wd


class FreezeLastLayerCallback(TrainerCallback):
    """DINO's first-epoch freezing of the head's last layer (official `utils.cancel_gradients_last_layer`, called
    after gradient clipping and before the optimizer step): while `state.global_step < args.freeze_last_layer_steps`
    the gradients of the last (prototype) layer of every `distillation.DINOHead` in the model are set to None, so the
    optimizer leaves those weights untouched (no update, no weight decay). Early in training the teacher's centred
    targets are close to uniform; prototypes free to move can then arrange themselves so that the student's output
    is uniform for every image, a collapse that fixed prototypes rule out."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        steps = int(getattr(args, "freeze_last_layer_steps", 0) or 0)
        if model is None or state.global_step >= steps:
            return
        from ..modeling.distillation import DINOHead, cancel_last_layer_gradients_

        for module in _unwrap(model).modules():
            if isinstance(module, DINOHead):
                cancel_last_layer_gradients_(module)


class LossCurveCallback(TrainerCallback):
    """Writes `loss_curve.png` (training loss and, when evaluated, k-NN accuracy) into `output_dir` at the
    end of training; the model card links it."""

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not getattr(args, "plot_loss_curve", True):
            return
        from ..utils.plotting import plot_curves

        loss = [(h["step"], h["loss"]) for h in state.log_history if "loss" in h and "step" in h]
        if loss:
            path = os.path.join(args.output_dir, "loss_curve.png")
            plot_curves({"train loss": loss}, path, title="Training loss", xlabel="step", ylabel="loss")
            logger.info("Wrote %s", path)
        knn = [(h["step"], h["eval_knn_accuracy"]) for h in state.log_history if "eval_knn_accuracy" in h]
        if knn:
            plot_curves({"k-NN accuracy": knn}, os.path.join(args.output_dir, "knn_curve.png"),
                        title="k-NN accuracy", xlabel="step", ylabel="accuracy")
