"""Weight-decay parameter groups for any model (placeholder: filled in by the param-groups work)."""

from typing import Any, Dict, List, Mapping, Optional

from torch import nn

__all__ = ["param_groups"]


def param_groups(model: nn.Module, weight_decay: float, *, norm_weight_decay: float = 0.0,
                 bias_weight_decay: float = 0.0, lr_mult: Optional[Mapping[str, float]] = None
                 ) -> List[Dict[str, Any]]:
    raise NotImplementedError("param_groups is being written")
