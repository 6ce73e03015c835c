"""Optimizer parameter groups: weight decay by parameter kind, learning-rate multipliers by module prefix.

Normalization parameters and biases usually take no weight decay: decaying a norm's scale towards zero fights
the normalization, and biases hardly overfit. Norm parameters are found by module *type* (so a norm called
``gn3`` or ``ln_pre`` is still found), biases by name.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Dict, List, Mapping, Optional, Tuple

from torch import nn

from .norm import NORM_TYPES
from .registry import UsageError

__all__ = ["param_groups"]

# Group kinds, in the order their groups appear for a given lr_mult prefix.
_KINDS = ("decay", "norm", "bias")


def param_groups(model: nn.Module, weight_decay: float, *, norm_weight_decay: float = 0.0,
                 bias_weight_decay: float = 0.0, lr_mult: Optional[Mapping[str, float]] = None,
                 lr: Optional[float] = None) -> List[Dict[str, Any]]:
    """Split ``model``'s trainable parameters into groups for ``torch.optim``.

    Every parameter with ``requires_grad`` lands in exactly one group; frozen ones are left out; a parameter
    shared by several modules is counted once (under the first name ``named_modules`` gives it).

    Args:
        model: any module (a backbone, or a backbone and head together).
        weight_decay: for weights (every parameter that is neither a norm parameter nor a bias).
        norm_weight_decay: for parameters of normalization modules (BatchNorm, SyncBatchNorm, GroupNorm,
            LayerNorm, InstanceNorm: :data:`backbones.norm.NORM_TYPES`), found by module type.
        bias_weight_decay: for parameters named ``bias`` outside normalization modules.
        lr_mult: maps a module-name prefix to a learning-rate multiplier, e.g. ``{"backbone": 0.1}`` for a
            backbone trained ten times slower than the head. A prefix covers the module of that name and
            everything under it (``"backbone"`` covers ``backbone.layer1.0.conv1.weight``, not
            ``backbone2.weight``); the longest matching prefix wins; unmatched parameters get 1.0.
        lr: base learning rate. When given, each group also gets ``"lr": lr * lr_mult``, so the multipliers
            take effect in any optimizer (and in schedulers, which scale each group's initial lr).

    Returns:
        A list of non-empty group dicts with keys ``params`` (list of parameters), ``weight_decay`` (float),
        ``lr_mult`` (float) and ``name`` (``"<prefix>.<kind>"`` or ``"<kind>"`` with kind ``decay``, ``norm``
        or ``bias``), plus ``lr`` when ``lr`` is given, in the order parameters first appear in the model.
        Pass it to any optimizer: ``torch.optim.SGD(param_groups(model, 1e-4, lr=0.01, lr_mult=...), lr=0.01,
        momentum=0.9)``. Optimizers themselves ignore the ``lr_mult`` key, which is why ``lr`` is needed for
        the multipliers to apply.

    Raises:
        TypeError: ``model`` is not a module, or a decay / multiplier is not a number.
        ValueError: a negative or non-finite weight decay, multiplier or lr, or an ``lr_mult`` prefix that
            covers no parameter of ``model`` (the message suggests close names).
    """
    if not isinstance(model, nn.Module):
        raise UsageError(f"param_groups expects an nn.Module, got {type(model).__name__}")
    decays = {
        "decay": _non_negative("weight_decay", weight_decay),
        "norm": _non_negative("norm_weight_decay", norm_weight_decay),
        "bias": _non_negative("bias_weight_decay", bias_weight_decay),
    }
    mults = _check_lr_mult(model, lr_mult)
    base_lr = None if lr is None else _non_negative("lr", lr)
    # Longest first, so the first match is the most specific prefix.
    prefixes = sorted(mults, key=len, reverse=True)

    groups: Dict[Tuple[Optional[str], str], Dict[str, Any]] = {}
    seen = set()
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, NORM_TYPES)
        for param_name, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            prefix = next((pre for pre in prefixes if _covers(pre, full_name)), None)
            kind = "norm" if is_norm else "bias" if param_name == "bias" else "decay"
            key = (prefix, kind)
            if key not in groups:
                groups[key] = {
                    "params": [],
                    "weight_decay": decays[kind],
                    "lr_mult": mults[prefix] if prefix is not None else 1.0,
                    "name": f"{prefix}.{kind}" if prefix is not None else kind,
                }
            groups[key]["params"].append(p)
    if base_lr is not None:
        for group in groups.values():
            group["lr"] = base_lr * group["lr_mult"]
    return list(groups.values())


def _covers(prefix: str, name: str) -> bool:
    # Match on whole dotted components: "backbone" covers "backbone.x" but not "backbone2.x".
    return name == prefix or name.startswith(prefix + ".")


def _non_negative(what: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{what} must be a number, got {type(value).__name__}: {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return float(value)


def _check_lr_mult(model: nn.Module, lr_mult: Optional[Mapping[str, float]]) -> Dict[str, float]:
    if lr_mult is None:
        return {}
    if not isinstance(lr_mult, Mapping):
        raise UsageError(f"lr_mult must map module-name prefixes to multipliers, e.g. {{'backbone': 0.1}}, "
                        f"got {type(lr_mult).__name__}: {lr_mult!r}")
    # A prefix must cover a parameter (trainable or not): a module without any, such as a stage that was
    # not built, would silently get no multiplier.
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    candidates = list(dict.fromkeys([n for n, _ in model.named_modules() if n] + names))
    out = {}
    for prefix, mult in lr_mult.items():
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"lr_mult keys must be non-empty module-name prefixes, got {prefix!r}")
        if not any(_covers(prefix, n) for n in names):
            close = difflib.get_close_matches(prefix, candidates, n=3)
            hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
            raise ValueError(
                f"lr_mult prefix {prefix!r} matches no parameter of {type(model).__name__}{hint}. "
                f"Top-level modules: {', '.join(n for n, _ in model.named_children()) or '(none)'}"
            )
        out[prefix] = _non_negative(f"lr_mult[{prefix!r}]", mult)
    return out
