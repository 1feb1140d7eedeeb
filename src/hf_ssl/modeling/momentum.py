"""EMA teachers and the cosine schedules that drive momentum, temperature and weight decay."""

from __future__ import annotations

import math

import torch
from torch import nn


def cosine_schedule(step: int, max_steps: int, start: float, end: float) -> float:
    """Half-cosine from `start` (step 0) to `end` (step `max_steps`), constant afterwards (BYOL/DINO)."""
    if max_steps <= 0:
        return end
    progress = min(max(step / max_steps, 0.0), 1.0)
    return end - (end - start) * (math.cos(math.pi * progress) + 1.0) / 2.0


def warmup_then_constant(step: int, warmup_steps: int, start: float, end: float) -> float:
    """Linear from `start` to `end` over `warmup_steps`, then `end` (DINO's teacher temperature)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    return start + (end - start) * step / warmup_steps


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """`teacher = momentum * teacher + (1 - momentum) * student` for parameters; buffers (BN statistics) are
    copied from the student, as in MoCo/BYOL's official code."""
    t_params = [p for p in teacher.parameters()]
    s_params = [p.detach() for p in student.parameters()]
    if len(t_params) != len(s_params):
        raise ValueError("teacher and student must have the same parameters")
    if t_params:
        torch._foreach_lerp_(t_params, s_params, 1.0 - momentum)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


@torch.no_grad()
def copy_weights_(teacher: nn.Module, student: nn.Module) -> None:
    teacher.load_state_dict(student.state_dict())


def init_teacher_from_student_(*pairs) -> None:
    """Inside `_init_weights`: start each `(teacher, student)` module pair as an exact copy (parameters and
    buffers), through transformers' init functions so a checkpoint being loaded is never overwritten."""
    from transformers import initialization as init

    for teacher, student in pairs:
        for tp, sp in zip(teacher.parameters(), student.parameters()):
            init.copy_(tp, sp.detach())
        for tb, sb in zip(teacher.buffers(), student.buffers()):
            init.copy_(tb, sb.detach())


def freeze_(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


__all__ = ["cosine_schedule", "warmup_then_constant", "ema_update_", "copy_weights_", "init_teacher_from_student_", "freeze_"]
