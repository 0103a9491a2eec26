"""AdamW with parameter groups, and a warm-up + cosine learning rate that is a pure function of the step.

Groups: the pretrained encoders (``image_encoder``, ``text_encoder``) train at ``optim.lr``; every
new module (projections, MLPs, fusion, classifiers, temperatures) at ``optim.head_lr``; with
``optim.image_lr`` set, the image encoder in groups of its own at that rate (a pretrained image
encoder kept close to what it perceives while a new text encoder learns at ``lr``). Weight decay
applies only to matrices: never to biases, norm weights or learnable scalars.

The learning rate is computed from the optimizer-step counter and written into the groups before
each step (:func:`apply_lr`) instead of a scheduler object handed to ``accelerator.prepare``: a
prepared scheduler is stepped once per process per optimizer step (a 4-step warm-up ends after 2 in a
2-process run, see DISTRIBUTED-NOTES), while a function of the step is right under any process
count, any accumulation, and after a resume (the step is part of the checkpointed state).
"""

from __future__ import annotations

import math

import torch

from reid.config import OptimConfig
from reid.model import ENCODER_PREFIXES

IMAGE_ENCODER_PREFIX = "image_encoder."  # one of ENCODER_PREFIXES; its own groups with optim.image_lr
GROUP_SETTINGS = ("base_lr", "weight_decay", "betas", "eps")  # from the config, also over a resumed optimizer state


def param_groups(model: torch.nn.Module, cfg: OptimConfig) -> list[dict]:
    """Four groups: {encoders, heads} x {decay, no decay} (six with ``image_lr``: the image encoder's
    own two); empty groups are dropped."""
    buckets: dict[tuple[str, bool], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = "encoders" if name.startswith(ENCODER_PREFIXES) else "heads"
        if cfg.image_lr and name.startswith(IMAGE_ENCODER_PREFIX):
            part = "image_encoder"
        decay = param.ndim >= 2  # biases, norm weights, [1]-shaped scalars: no decay
        buckets.setdefault((part, decay), []).append(param)
    rates = {"encoders": cfg.lr, "heads": cfg.head_lr, "image_encoder": cfg.image_lr}
    groups = []
    for (part, decay), params in sorted(buckets.items()):
        base_lr = rates[part]
        groups.append(
            {
                "params": params,
                "name": f"{part}{'' if decay else '_no_decay'}",
                "lr": base_lr,
                "base_lr": base_lr,
                "weight_decay": cfg.weight_decay if decay else 0.0,
            }
        )
    return groups


def build_optimizer(
    model: torch.nn.Module, cfg: OptimConfig, *, fused: bool = False, cpu_offload: bool = False
) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`: ``fused`` (one kernel for all parameters) on CUDA, or
    DeepSpeed's ``DeepSpeedCPUAdam`` when ZeRO offloads the optimizer state to CPU memory (DeepSpeed
    refuses a torch optimizer there)."""
    groups = param_groups(model, cfg)
    if cpu_offload:
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=cfg.head_lr, betas=cfg.betas, eps=cfg.eps, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=cfg.head_lr, betas=cfg.betas, eps=cfg.eps, fused=fused or None)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of each group's base lr at optimizer step ``step`` (0-based).

    Linear warm-up over ``warmup_steps`` (from 1/warmup to 1), then a half cosine from 1 down to
    ``min_lr_ratio`` at ``total_steps``.
    """
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine


def apply_lr(optimizer: torch.optim.Optimizer, step: int, total_steps: int, cfg: OptimConfig) -> dict[str, float]:
    """Set every group's lr for the coming optimizer step; returns {group name: lr} for logging."""
    factor = lr_factor(step, total_steps, cfg)
    lrs = {}
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
        lrs[group["name"]] = group["lr"]
    return lrs
