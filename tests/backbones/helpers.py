"""Helpers shared by the deploy tests (test_deploy, test_fold, test_packed)."""

import torch
from torch import nn

from backbones import FrozenBatchNorm2d
from backbones.machine import native_bf16

# What deploy(dtype=torch.bfloat16) accepts here: a CPU class with native bf16, and oneDNN.
BF16_OK = native_bf16("cpu")


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest absolute difference relative to the largest reference magnitude."""
    return float((out.float() - ref.float()).abs().max() / ref.float().abs().max())


def batchnorms(model: nn.Module) -> list:
    """Qualified names of the batch norms (of any kind this project folds) left in ``model``."""
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, FrozenBatchNorm2d))]
