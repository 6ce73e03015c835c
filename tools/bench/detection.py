"""Detector timing for the benchmark: a torchvision detector on our backbone (``"resnet18+fcos"``) end to end
(resize, backbone, pyramid, head, box decoding, NMS), eager, with its backbone ``deploy()``-ed, and exported to
ONNX and run by ONNX Runtime (:mod:`tools.runtime.detectors`), interleaved round-robin."""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from backbones import deploy
from backbones.machine import machine_info
from heads.detection import build_detector, list_detectors

from ..runtime.detectors import DetectorRunner, detection_error, export_detector_onnx
from ..runtime.extras import require
from .profiling import MIB, peak_tensor_memory, time_round_robin

__all__ = ["NUM_CLASSES", "is_detector_spec", "run_detection_inference"]

NUM_CLASSES = 91  # COCO-sized heads, torchvision's convention (background included)


def is_detector_spec(spec: str) -> bool:
    """``"resnet18+fcos"`` names a detector; ``"resnet18+fpn"`` a segmentation model."""
    _, _, head = spec.partition("+")
    return head in list_detectors()


def _conv_flops(model: nn.Module, images: List[torch.Tensor]) -> int:
    """FLOPs (2 per MAC) of the convolutions of one eval-mode forward (counted by hooks on a real run)."""
    total = [0]

    def count(module: nn.Conv2d, _: Any, output: torch.Tensor) -> None:
        per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total[0] += 2 * output.numel() * per_output

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.inference_mode():
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def run_detection_inference(spec: str, *, size: Tuple[int, int], batch: int, device: torch.device, reps: int,
                            warmup: int, engines: Sequence[str] = ("torch",)) -> Dict[str, Any]:
    """Time detector ``spec`` (``"<backbone>+<detector>"``, random weights, 91 classes) on ``batch`` images of
    ``size``, which the detector keeps at their size (``min_size``/``max_size`` set to it).

    Rows: ``dense eager``; with ``"torch"`` in ``engines``, ``dense deploy fp32 (backbone)``: the same detector
    with its backbone ``deploy()``-ed (BatchNorm folded, packed convolutions); with ``"onnxruntime"``,
    ``onnxruntime fp32``: the detector exported to ONNX, one image per call. The result has the layout of
    :func:`tools.bench.inference.run_inference`'s, so one report formats both.
    """
    backbone, _, detector = spec.partition("+")
    torch.manual_seed(0)
    model = build_detector(detector, backbone=backbone, num_classes=NUM_CLASSES, min_size=min(size),
                           max_size=max(size)).to(device).eval()
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, *size, generator=gen).to(device) for _ in range(batch)]
    flops = _conv_flops(model, images)
    notes: List[str] = []
    candidates: Dict[str, Callable[[], Any]] = {"dense eager": lambda: model(images)}
    outputs: Dict[str, Callable[[], Any]] = {}
    if "torch" in engines:
        fast = copy.deepcopy(model)
        fast.backbone.body = deploy(fast.backbone.body)
        candidates["dense deploy fp32 (backbone)"] = outputs["dense deploy fp32 (backbone)"] = lambda: fast(images)
    tmp = None
    for engine in engines:
        if engine == "torch":
            continue
        if engine != "onnxruntime" or device.type != "cpu":
            notes.append(f"{engine}: skipped, detectors export to ONNX for ONNX Runtime on the CPU only")
            continue
        require("onnxruntime", "--engines onnxruntime")

        tmp = tempfile.TemporaryDirectory(prefix="dense-bench-det-")
        path = Path(tmp.name) / "detector.onnx"
        export_detector_onnx(model.cpu(), path, example=size)
        runner = DetectorRunner(path, threads=torch.get_num_threads())
        candidates["onnxruntime fp32"] = outputs["onnxruntime fp32"] = lambda runner=runner: runner(images)
    try:
        with torch.inference_mode():
            reference = model(images)
            for name, run in outputs.items():
                mismatched, box_err, _ = detection_error(reference, run())
                if mismatched or box_err > 1e-2:
                    notes.append(f"{name}: detections differ from dense eager ({mismatched} images with other "
                                 f"detections, boxes up to {box_err:.1e} px apart); not the same network")
            timings = time_round_robin(candidates, reps=reps, warmup=warmup, device=device)
            memory = {name: peak_tensor_memory(fn) for name, fn in candidates.items() if name.startswith("dense")}
    finally:
        if tmp is not None:
            tmp.cleanup()
    ref = timings["dense eager"].median
    rows = [{"candidate": name, "median_ms": 1e3 * t.median, "min_ms": 1e3 * t.min, "max_ms": 1e3 * t.max,
             "speedup": ref / t.median, "gflops": flops / t.median / 1e9, "peak_fraction": None,
             "peak_mib": memory[name] / MIB if name in memory else None} for name, t in timings.items()]
    return {"model": spec, "mode": "infer", "machine": machine_info().describe(), "input_shape": [batch, 3, *size],
            "output_stride": 32,
            "conv_gflop": flops / 1e9, "reference": "dense eager", "rows": rows, "notes": notes, "peaks": {}}
