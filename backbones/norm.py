"""Normalization layers: a norm factory, ``FrozenBatchNorm2d`` and converters in both directions.

The converters walk any module tree (ours, torchvision's, timm's), so they also serve third-party models.
"""

from __future__ import annotations

from typing import Callable, Dict

import torch
from torch import nn

from .registry import UsageError

__all__ = [
    "NORMS",
    "FrozenBatchNorm2d",
    "BATCHNORM_TYPES",
    "NORM_TYPES",
    "get_norm_layer",
    "freeze_batchnorm",
    "unfreeze_batchnorm",
]

NORMS = ("bn", "frozen_bn", "sync_bn", "gn")

# 2-D batch norms that have a frozen equivalent (SyncBatchNorm is used on 4-D maps in our models).
BATCHNORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters, all held as buffers.

    Computes ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` as one multiply-add, in
    every mode. Nothing here is a parameter, so optimizers never see it and DDP never syncs it.

    Shape: input ``(N, C, H, W)``, output the same.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # BatchNorm checkpoints carry a step counter that has no meaning once statistics are frozen.
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1).to(x.dtype) + shift.reshape(1, -1, 1, 1).to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


# Norm modules, recognised by type: param_groups() exempts their parameters from weight decay by default.
NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LocalResponseNorm,
    FrozenBatchNorm2d,
)


def _group_norm(num_channels: int) -> nn.GroupNorm:
    # 32 groups is the GroupNorm paper's default; fall back to the largest divisor for narrow layers.
    groups = 32
    while num_channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, num_channels)


_FACTORIES: Dict[str, Callable[[int], nn.Module]] = {
    "bn": nn.BatchNorm2d,
    "frozen_bn": FrozenBatchNorm2d,
    "sync_bn": nn.SyncBatchNorm,
    "gn": _group_norm,
}


def get_norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """Factory ``num_channels -> module`` for ``norm`` in :data:`NORMS`."""
    if norm not in _FACTORIES:
        raise ValueError(f"norm must be one of {', '.join(repr(n) for n in NORMS)}, got {norm!r}")
    return _FACTORIES[norm]


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` / ``SyncBatchNorm`` in ``module`` by an equivalent ``FrozenBatchNorm2d``.

    Works on any module tree. Returns the converted module (a new object if ``module`` itself is a
    BatchNorm, otherwise ``module`` modified in place). Statistics and affine parameters are copied, so the
    eval-mode output is unchanged. timm's fused ``BatchNormAct2d`` becomes timm's ``FrozenBatchNormAct2d``
    (keeping its activation).

    Raises:
        TypeError: a BatchNorm that cannot be frozen without changing its output (a subclass with its own
            ``forward``, or one without running statistics); raised before anything is converted.
    """
    for m in module.modules():
        if isinstance(m, BATCHNORM_TYPES) and not _is_timm_bn_act(m):
            if type(m).forward not in _PLAIN_BN_FORWARDS or any(True for _ in m.children()):
                raise UsageError(
                    f"cannot freeze {type(m).__module__}.{type(m).__qualname__}: a BatchNorm subclass with its "
                    f"own forward or submodules; only BatchNorm2d, SyncBatchNorm and timm's BatchNormAct2d are "
                    f"converted"
                )
            if m.running_mean is None:
                raise UsageError(
                    f"cannot freeze {type(m).__name__}({m.num_features}) built with track_running_stats=False: "
                    f"it always normalizes with batch statistics, so there is nothing to freeze"
                )
    return _freeze(module)


def _freeze(module: nn.Module) -> nn.Module:
    if _is_timm_bn_act(module):
        return _timm_norm_act(module).freeze_batch_norm_2d(module)
    if isinstance(module, BATCHNORM_TYPES):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        with torch.no_grad():
            if module.affine:
                frozen.weight.copy_(module.weight)
                frozen.bias.copy_(module.bias)
            frozen.running_mean.copy_(module.running_mean)
            frozen.running_var.copy_(module.running_var)
        return frozen.to(device=module.running_mean.device, dtype=module.running_mean.dtype)
    for name, child in module.named_children():
        new = _freeze(child)
        if new is not child:
            setattr(module, name, new)
    return module


def unfreeze_batchnorm(module: nn.Module, *, sync: bool = False) -> nn.Module:
    """Replace every frozen BatchNorm in ``module`` by a trainable ``BatchNorm2d`` (or ``SyncBatchNorm``).

    The inverse of :func:`freeze_batchnorm`: statistics and affine parameters are copied so the eval-mode
    output is unchanged. Converts this project's and torchvision's ``FrozenBatchNorm2d`` (torchvision's
    detection models use it), and timm's ``FrozenBatchNormAct2d`` back to timm's ``BatchNormAct2d``.
    """
    if _is_frozen_bn(module):
        cls = nn.SyncBatchNorm if sync else nn.BatchNorm2d
        bn = cls(module.weight.numel(), eps=module.eps)
        with torch.no_grad():
            bn.weight.copy_(module.weight)
            bn.bias.copy_(module.bias)
            bn.running_mean.copy_(module.running_mean)
            bn.running_var.copy_(module.running_var)
        return bn.to(device=module.weight.device, dtype=module.weight.dtype)
    norm_act = _timm_norm_act(module)
    if norm_act is not None and isinstance(module, norm_act.FrozenBatchNormAct2d):
        return norm_act.unfreeze_batch_norm_2d(module)
    for name, child in module.named_children():
        new = unfreeze_batchnorm(child, sync=sync)
        if new is not child:
            setattr(module, name, new)
    return module


_PLAIN_BN_FORWARDS = (nn.BatchNorm2d.forward, nn.SyncBatchNorm.forward)


def _is_frozen_bn(module: nn.Module) -> bool:
    if isinstance(module, FrozenBatchNorm2d):
        return True
    if type(module).__module__.startswith(("torchvision.", "timm.")):
        # Imported only when such a module is met: backbones itself needs neither library to convert its own.
        from torchvision.ops.misc import FrozenBatchNorm2d as TorchvisionFrozenBatchNorm2d

        return isinstance(module, TorchvisionFrozenBatchNorm2d)
    return False


def _is_timm_bn_act(module: nn.Module) -> bool:
    norm_act = _timm_norm_act(module)
    return norm_act is not None and isinstance(module, (norm_act.BatchNormAct2d, norm_act.SyncBatchNormAct))


def _timm_norm_act(module: nn.Module):
    """timm's ``norm_act`` module when ``module`` comes from timm, else ``None``."""
    if not type(module).__module__.startswith("timm."):
        return None
    from timm.layers import norm_act

    return norm_act
