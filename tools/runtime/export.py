"""Writing a model as an ONNX file (dynamic batch, height and width) or as TorchScript."""

from __future__ import annotations

import warnings
from typing import List

import torch
from torch import nn

__all__ = ["output_names", "export_onnx", "export_torchscript"]


def output_names(model: nn.Module) -> List[str]:
    """``["logits"]`` for a segmentation model; the feature names (``layer2``...) for a backbone."""
    info = getattr(model, "feature_info", None)
    if info is not None and not hasattr(model, "num_classes"):
        return list(info.names)
    return ["logits"]


def export_onnx(model: nn.Module, path: str, *, example: torch.Tensor, opset: int = 18, min_size: int = 64,
                external_data: bool = False) -> None:
    """Write ``model`` to ``path`` as ONNX with dynamic batch, height and width (heights/widths >= ``min_size``).

    ``example`` should have batch >= 2 and sides > ``min_size``: a size-1 dimension would be specialized.
    ``external_data`` puts the weights in ``<path>.data`` (needed above ONNX's 2 GiB file limit); by default
    the file is self-contained.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (ONNX's LayerNormalization/col2im era), got {opset}")
    batch = torch.export.Dim("batch", min=1)
    height = torch.export.Dim("height", min=min_size)
    width = torch.export.Dim("width", min=min_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's progress chatter is not the user's problem
        torch.onnx.export(model, (example,), path, dynamo=True, opset_version=opset, input_names=["images"],
                          output_names=output_names(model), dynamic_shapes=({0: batch, 2: height, 3: width},),
                          external_data=external_data, verbose=False)


def export_torchscript(model: nn.Module, path: str) -> None:
    """Write ``torch.jit.script(model)`` to ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream; asked for explicitly
        torch.jit.script(model).save(path)
