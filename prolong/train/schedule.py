"""Learning-rate schedule (linear warmup, then cosine to the minimum) and AdamW parameter groups."""

from __future__ import annotations

import math

import torch
from torch import nn

from prolong.config import OptimizerSpec


def lr_at(step: int, num_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """Learning rate of optimizer step `step` (0-based).

    Warmup rises linearly to the peak over `warmup_steps` (the first step already trains, at
    peak/warmup_steps); the cosine then falls from the peak to exactly `min_lr` at the last step.
    A pure function of the step, so resuming needs nothing but the step number.
    """
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step + 1 - warmup_steps) / max(1, num_steps - warmup_steps))
    return min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: nn.Module, spec: OptimizerSpec, lr: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: norms and biases (1-D parameters) are not decayed."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": spec.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=spec.betas, eps=spec.eps)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Write the learning rate into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
