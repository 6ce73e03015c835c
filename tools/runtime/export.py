"""Writing a model as an ONNX file (dynamic batch, height and width), an OpenVINO IR or TorchScript, with what
the export records about itself, through a staging folder so that a failed export leaves nothing behind."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, List, Mapping, Optional, Sequence

import torch
from torch import nn

from .extras import require

__all__ = ["METADATA_KEY", "output_names", "first_conv_channels", "export_onnx", "export_for_runtime",
           "export_openvino", "export_torchscript", "add_onnx_metadata", "Staging"]

# Prefix of what an export records in the file (ONNX metadata_props, OpenVINO rt_info): classes, precision...
METADATA_KEY = "dense_backbones"


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
    require("onnx", "ONNX export")
    require("onnxscript", "ONNX export")  # torch.onnx's dynamo exporter writes the graph with it
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


def first_conv_channels(model: nn.Module) -> Optional[int]:
    """Input channels of ``model``'s first ``nn.Conv2d`` (the channels it takes), ``None`` without one."""
    return next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), None)


def export_for_runtime(model: nn.Module, path: str) -> None:
    """Write ``model`` as ONNX for an engine of this process to run: from the CPU in eval mode (a CPU copy when
    its weights are elsewhere, so the caller's model stays put), dynamic batch, height and width >= 32."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    export_onnx(model.eval(), path, example=torch.randn(2, first_conv_channels(model) or 3, 96, 96), min_size=32)


def export_torchscript(model: nn.Module, path: str) -> None:
    """Write ``torch.jit.script(model)`` to ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream; asked for explicitly
        torch.jit.script(model).save(path)


def add_onnx_metadata(path: str, metadata: Mapping[str, Any]) -> None:
    """Record ``metadata`` (JSON values) in the ONNX file's ``metadata_props`` as ``dense_backbones.<key>``."""
    onnx = require("onnx", "ONNX export")
    proto = onnx.load(path, load_external_data=False)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({f"{METADATA_KEY}.{k}": json.dumps(v) for k, v in metadata.items()})
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, path)  # the weights, if external, stay in their own file, which this does not touch


def export_openvino(onnx_path: str, xml_path: str, *, metadata: Mapping[str, Any]) -> None:
    """Convert the ONNX file to an OpenVINO IR (``xml_path`` and the ``.bin`` beside it), weights kept in fp32
    (``save_model`` would halve them to fp16 by default), ``metadata`` recorded in the IR's ``rt_info``."""
    ov = require("openvino", "OpenVINO export")
    model = ov.convert_model(onnx_path)
    for key, value in metadata.items():
        model.set_rt_info(json.dumps(value), [METADATA_KEY, key])
    ov.save_model(model, xml_path, compress_to_fp16=False)


class Staging:
    """A temporary folder beside the final files: write there under the final names, then :meth:`commit`.

    Files keep their final names inside the folder, so references between them (an IR's ``.bin``, ONNX external
    data) stay valid after the move. ``commit`` moves them with ``os.replace`` (atomic per file), companions
    first and the entry file last; leaving the ``with`` block removes whatever was not committed.
    """

    def __init__(self, final: Path) -> None:
        self.final = Path(final)
        self.dir = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".tmp", dir=self.final.parent))

    def path(self, name: str) -> Path:
        return self.dir / name

    def commit(self, names: Sequence[str]) -> List[Path]:
        """Move ``names`` (the entry file last) from the staging folder to the final folder."""
        moved = []
        for name in names:
            target = self.final.parent / name
            os.replace(self.dir / name, target)
            moved.append(target)
        return moved

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
