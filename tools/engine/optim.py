"""A run's optimizer and learning-rate schedule: SGD with momentum or AdamW over ``backbones.param_groups``
(weight decay per kind of parameter, an lr multiplier for the backbone), then the lr schedule (poly, cosine or
multi-step) with warm-up.

The fused optimizer step (one kernel over all tensors) is used wherever PyTorch has it (CPU and CUDA): its
default on CPU is a loop over the tensors, a visible share of a small model's step (docs/performance.md), and
the fused step computes the same update.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from backbones import param_groups

from .schedule import warmup_scheduler

__all__ = ["OPTIMIZERS", "DEFAULT_LR", "build_optimizer"]

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.01, "adamw": 0.002}


def build_optimizer(cfg: Mapping[str, Any], model: nn.Module, *, max_iters: int
                    ) -> Tuple[torch.optim.Optimizer, LambdaLR]:
    """The optimizer and per-iteration scheduler ``cfg`` (a training program's keys) asks for; a config without
    ``lr_schedule`` (written before the option existed) is poly.

    Each group gets lr = base lr x its multiplier; ``LambdaLR`` then scales each group's own initial lr, which keeps
    the multiplier for the whole run.
    """
    lr_mult = {"backbone": cfg["backbone_lr_mult"]} if cfg["backbone_lr_mult"] != 1.0 else None
    groups = param_groups(model, cfg["weight_decay"], norm_weight_decay=cfg["norm_weight_decay"],
                          bias_weight_decay=cfg["bias_weight_decay"], lr_mult=lr_mult, lr=cfg["lr"])
    fused = fused_supported(model)
    if cfg["optimizer"] == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg["lr"], momentum=cfg["momentum"], fused=fused)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg["lr"], fused=fused)
    scheduler = warmup_scheduler(optimizer, schedule=cfg.get("lr_schedule") or "poly", max_iters=max_iters,
                                 power=cfg["poly_power"], steps=cfg.get("lr_steps") or (),
                                 gamma=cfg.get("lr_gamma", 0.1), warmup_iters=min(cfg["warmup_iters"], max_iters),
                                 warmup_ratio=cfg["warmup_ratio"])
    return optimizer, scheduler


def fused_supported(model: nn.Module) -> Optional[bool]:
    """``True`` when every trainable parameter is a floating-point tensor on CPU or CUDA (where PyTorch has fused
    AdamW/SGD kernels); ``None`` (PyTorch's own choice) otherwise."""
    params = [p for p in model.parameters() if p.requires_grad]
    ok = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return True if ok else None
