"""int8 post-training static quantization of an ONNX file, calibrated on a run's own training images.

:func:`calibration_batches` draws images (seeded) from a run's training split through its evaluation
preprocessing; :func:`quantize_onnx` writes a QDQ ONNX file with per-channel int8 weights and uint8 activations,
using ONNX Runtime's ``quantize_static`` (MinMax calibration) or NNCF's ``nncf.quantize`` (its ONNX backend, with
fast bias correction). Both ONNX Runtime and OpenVINO run the QDQ file in int8.

ONNX Runtime's quantizer is the default: on this project's models the two are equally accurate, and its files run
as fast as NNCF's on OpenVINO but markedly faster on ONNX Runtime.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .extras import require

__all__ = ["QUANTIZERS", "QuantizationReport", "calibration_batches", "quantize_onnx", "conv_nodes", "int8_convs"]

QUANTIZERS = ("ort", "nncf")
PathLike = Union[str, os.PathLike]


@dataclass
class QuantizationReport:
    """What :func:`quantize_onnx` did: the quantizer, how many images calibrated it, the convolutions left in
    fp32 and the number of quantized convolutions."""

    method: str
    calibration_images: int
    kept_fp32: List[str] = field(default_factory=list)
    quantized_convs: int = 0


def calibration_batches(checkpoint: Mapping[str, Any], *, num_images: int = 300, seed: int = 0,
                        root: Optional[str] = None) -> List[torch.Tensor]:
    """``(1, 3, h, w)`` float32 calibration images from the training split of the run that wrote ``checkpoint``.

    Images are drawn without replacement (seeded) from the run's ``train_split`` (all of them when the split is
    smaller than ``num_images``), normalized by the run's evaluation transform, and cut to the run's training
    crop size at a seeded random position (zero-padded, i.e. the mean colour, when smaller), never resized, so
    activations have the scale evaluation sees. ``root`` replaces the run's dataset root (a moved dataset).

    Raises ``ValueError`` naming the dataset when the split cannot be read or is empty.
    """
    from ..data import build_dataset
    from ..data.transforms import eval_transform

    if num_images < 1:
        raise ValueError(f"--calib-images must be >= 1, got {num_images}")
    config = checkpoint.get("config") or {}
    name, split = config.get("dataset"), config.get("train_split", "train")
    root = root if root is not None else config.get("root")
    if not name:
        raise ValueError("int8 calibration needs the run's dataset, but the checkpoint's config names none")
    try:
        dataset = build_dataset(name, root=root, split=split, transform=eval_transform(),
                                **(config.get("data_kwargs") or {}))
    except (FileNotFoundError, ValueError, OSError) as err:
        raise ValueError(f"int8 calibration reads the run's {split!r} split of {name} (root {root!r}), which failed: "
                         f"{str(err).splitlines()[0]}; pass --calib-root with the dataset's folder") from None
    if len(dataset) == 0:
        raise ValueError(f"int8 calibration: the run's {split!r} split of {name} (root {root!r}) holds no images")
    rng = np.random.default_rng(seed)
    count = min(num_images, len(dataset))
    indices = sorted(rng.choice(len(dataset), size=count, replace=False).tolist())
    crop = list(config.get("crop_size") or [512])
    ch, cw = crop[0], crop[-1]
    batches = []
    for index in indices:
        image, _ = dataset[index]
        height, width = image.shape[-2:]
        image = F.pad(image, (0, max(cw - width, 0), 0, max(ch - height, 0)))
        top = int(rng.integers(0, image.shape[-2] - ch + 1))
        left = int(rng.integers(0, image.shape[-1] - cw + 1))
        batches.append(image[None, :, top:top + ch, left:left + cw].contiguous())
    return batches


def conv_nodes(path: PathLike) -> List[str]:
    """Names of the Conv nodes of an ONNX file, in graph order (for ``keep_fp32``)."""
    onnx = require("onnx", "reading ONNX files")
    return [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"]


def quantize_onnx(onnx_path: PathLike, out_path: PathLike, calibration_batches: Iterable[torch.Tensor], *,
                  method: str = "ort", keep_fp32: Sequence[str] = (), keep_last_conv: bool = False,
                  external_data: bool = False) -> QuantizationReport:
    """Write an int8 QDQ copy of the fp32 ONNX file ``onnx_path`` to ``out_path``.

    Weights are quantized per output channel (symmetric int8), activations per tensor (asymmetric), from the
    ranges seen on ``calibration_batches`` (float32 ``(N, C, H, W)`` tensors, normalized like training).

    Args:
        method: ``"ort"``: ONNX Runtime's ``quantize_static`` (QDQ, MinMax calibration, after its pre-processing
            pass that folds BatchNorm into the convolutions); ``"nncf"``: NNCF's ONNX backend (adds fast bias
            correction).
        keep_fp32: Conv node names left unquantized.
        keep_last_conv: also leave the graph's last convolution (the classifier) unquantized.
        external_data: store the weights in ``<out_path>.data``.

    Returns a :class:`QuantizationReport`.
    """
    if method not in QUANTIZERS:
        raise ValueError(f"quantizer must be one of {', '.join(QUANTIZERS)}, got {method!r}")
    onnx = require("onnx", "int8 quantization")
    batches = [b.detach().to("cpu", torch.float32).contiguous() for b in calibration_batches]
    if not batches:
        raise ValueError("int8 quantization needs at least one calibration batch")
    with tempfile.TemporaryDirectory(prefix="dense-quantize-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        _pre_process(Path(onnx_path), prepared)
        convs = conv_nodes(prepared)
        excluded = list(keep_fp32) + ([convs[-1]] if keep_last_conv and convs else [])
        unknown = sorted(set(excluded) - set(convs))
        if unknown:
            raise ValueError(f"keep_fp32 names {unknown[:3]}, which are not Conv nodes of {str(onnx_path)!r} "
                             f"(first ones: {convs[:3]})")
        input_name = onnx.load(str(prepared), load_external_data=False).graph.input[0].name
        if method == "ort":
            _quantize_ort(prepared, Path(out_path), batches, input_name, excluded, external_data)
        else:
            _quantize_nncf(prepared, Path(out_path), batches, input_name, excluded, external_data)
    return QuantizationReport(method=method, calibration_images=sum(b.shape[0] for b in batches),
                              kept_fp32=excluded, quantized_convs=len(int8_convs(out_path)))


def int8_convs(path: PathLike) -> List[str]:
    """Names of the Conv nodes of an ONNX file whose weights arrive through a DequantizeLinear (int8)."""
    onnx = require("onnx", "reading ONNX files")
    graph = onnx.load(str(path), load_external_data=False).graph
    producers = {out: node.op_type for node in graph.node for out in node.output}
    return [n.name for n in graph.node if n.op_type == "Conv" and producers.get(n.input[1]) == "DequantizeLinear"]


def _pre_process(src: Path, dst: Path) -> None:
    """ONNX Runtime's recommended pre-quantization pass: shape inference and graph optimization (BatchNorm
    folded into Conv), so that quantization sees the graph the runtime executes."""
    require("onnxruntime", "int8 quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(src), str(dst), skip_symbolic_shape=True)


class _Reader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over a list of tensors."""

    def __init__(self, batches: List[torch.Tensor], input_name: str) -> None:
        self.batches, self.input_name, self.index = batches, input_name, 0

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        if self.index >= len(self.batches):
            return None
        self.index += 1
        return {self.input_name: self.batches[self.index - 1].numpy()}

    def rewind(self) -> None:
        self.index = 0


def _quantize_ort(src: Path, dst: Path, batches: List[torch.Tensor], input_name: str, excluded: List[str],
                  external_data: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # U8 activations / S8 weights is ONNX Runtime's recommendation for x86 CPUs; OpenVINO runs the same file.
    quantize_static(str(src), str(dst), _Reader(batches, input_name), quant_format=QuantFormat.QDQ,
                    per_channel=True, reduce_range=False, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=excluded or None,
                    calibrate_method=CalibrationMethod.MinMax, use_external_data_format=external_data)


def _quantize_nncf(src: Path, dst: Path, batches: List[torch.Tensor], input_name: str, excluded: List[str],
                   external_data: bool) -> None:
    nncf = require("nncf", "int8 quantization with NNCF")
    onnx = require("onnx", "int8 quantization")
    model = onnx.load(str(src))
    dataset = nncf.Dataset(batches, lambda x: {input_name: x.numpy()})
    quantized = nncf.quantize(model, dataset, subset_size=len(batches), fast_bias_correction=True,
                              ignored_scope=nncf.IgnoredScope(names=excluded) if excluded else None)
    onnx.save(quantized, str(dst), save_as_external_data=external_data,
              location=dst.name + ".data" if external_data else None)
