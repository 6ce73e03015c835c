"""Small helpers over nests of tensors and the modules holding them, shared by the deploy modules and tools."""

from typing import Any, Iterator, Optional

import torch
from torch import nn

__all__ = ["device_of", "iter_tensors", "to_dtype"]


def iter_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nest of tensors, lists, tuples and dicts (a model's inputs or outputs), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from iter_tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_tensors(v)


def to_dtype(obj: Any, dtype: Optional[torch.dtype]) -> Any:
    """``obj`` (a nest of tensors, lists, tuples and dicts) with its floating-point tensors cast to ``dtype``
    (``None``: unchanged)."""
    if dtype is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_dtype(v, dtype) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_dtype(v, dtype) for v in obj)
    return obj


def device_of(model: nn.Module) -> torch.device:
    """Device of ``model``'s first parameter (or buffer); CPU for a module holding neither."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
