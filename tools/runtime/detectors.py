"""Exported detectors: torchvision's detectors to ONNX and TorchScript, the runner that runs either file, and the
check of an export against the eager detector.

What works with torchvision's detectors (RetinaNet, FCOS, Faster R-CNN) on our backbones:

- ONNX through the TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``, opset 17), one image
  ``(3, H, W)`` float in [0, 1] per call with dynamic ``H`` and ``W``: the graph holds the detector's own resize,
  normalization, box decoding and NMS, and returns ``boxes`` ``(K, 4)``, ``scores`` ``(K,)``, ``labels`` ``(K,)``.
  The dynamo exporter (``dynamo=True``, what segmentation models use) fails on the data-dependent shapes of the
  detectors' post-processing. ONNX Runtime runs the file; OpenVINO and int8 are not offered for detectors.
- TorchScript through ``torch.jit.script`` (the detectors are scriptable), fp32.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .export import METADATA_KEY
from .extras import require

__all__ = ["DETECTOR_FORMATS", "export_detector_onnx", "export_detector_torchscript", "DetectorRunner",
           "detection_error"]

DETECTOR_FORMATS = ("onnx", "torchscript")
OUTPUT_NAMES = ("boxes", "scores", "labels")
Detections = List[Dict[str, torch.Tensor]]


def export_detector_onnx(model: nn.Module, path: Union[str, Path], *, example: Tuple[int, int], opset: int = 17,
                         metadata: Optional[Mapping[str, Any]] = None) -> None:
    """Write eval-mode ``model`` to ``path`` as ONNX: input ``image`` ``(3, H, W)`` (dynamic ``H``, ``W``),
    outputs ``boxes``, ``scores``, ``labels``; ``metadata`` (JSON values) recorded as ``dense_backbones.<key>``."""
    onnx = require("onnx", "ONNX export")
    model = model.eval()
    image = torch.rand(3, *example)
    with warnings.catch_warnings():
        # the exporter warns about every traced shape computation of the detectors' post-processing
        warnings.simplefilter("ignore")
        torch.onnx.export(model, ([image],), str(path), opset_version=opset, dynamo=False,
                          input_names=["image"], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={"image": {1: "height", 2: "width"}, "boxes": {0: "detections"},
                                        "scores": {0: "detections"}, "labels": {0: "detections"}})
    if metadata:
        proto = onnx.load(str(path))
        for key, value in metadata.items():
            proto.metadata_props.add(key=f"{METADATA_KEY}.{key}", value=json.dumps(value))
        onnx.save(proto, str(path))


def export_detector_torchscript(model: nn.Module, path: Union[str, Path]) -> None:
    """Write ``torch.jit.script(model)`` (eval mode) to ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript is deprecated upstream; asked for explicitly
        torch.jit.script(model.eval()).save(str(path))


class DetectorRunner:
    """An exported detector behind the eager detector's calling convention: ``runner(images)`` with a list of
    ``(3, H, W)`` float images in [0, 1] returns one ``{"boxes" (K, 4), "scores" (K,), "labels" (K,)}`` per
    image, on the CPU.

    ``.onnx`` runs on ONNX Runtime (``threads`` intra-op threads, 0: its default), ``.ts`` on TorchScript.
    Attributes: ``kind``, ``source``, ``precision`` (``fp32``), ``metadata`` (what the export recorded).
    """

    precision = "fp32"

    def __init__(self, path: Union[str, Path], *, threads: int = 0) -> None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"exported detector not found: {str(path)!r}")
        self.source = str(path)
        suffix = path.suffix.lower()
        if suffix == ".onnx":
            ort = require("onnxruntime", "running an ONNX detector")
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            try:
                self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            except Exception as err:  # ORT raises its own exception types for a damaged or foreign file
                raise ValueError(f"cannot load ONNX file {str(path)!r}: {str(err).splitlines()[0]}") from None
            names = [o.name for o in self.session.get_outputs()]
            if names != list(OUTPUT_NAMES):
                raise ValueError(f"{str(path)!r} has outputs {names}, not a detector's {list(OUTPUT_NAMES)}: export "
                                 f"a detection checkpoint with python -m tools.export")
            meta = self.session.get_modelmeta().custom_metadata_map
            self.metadata = {k[len(METADATA_KEY) + 1:]: json.loads(v) for k, v in meta.items()
                             if k.startswith(METADATA_KEY + ".")}
            self.kind, self.module = "onnxruntime", None
        elif suffix == ".ts":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                try:
                    self.module = torch.jit.load(str(path), map_location="cpu")
                except RuntimeError as err:
                    raise ValueError(f"cannot load TorchScript file {str(path)!r} ({str(err).splitlines()[0]})") \
                        from None
            self.kind, self.session, self.metadata = "torch", None, {}
        else:
            raise ValueError(f"{str(path)!r}: an exported detector is an .onnx or .ts file, got "
                             f"{suffix or 'no suffix'}")

    def __call__(self, images: Sequence[torch.Tensor]) -> Detections:
        outputs: Detections = []
        for image in images:
            if image.dim() != 3:
                raise ValueError(f"{self.kind} detector expects (3, H, W) images, got shape {tuple(image.shape)}")
            if self.session is not None:
                boxes, scores, labels = self.session.run(None, {"image": image.detach().cpu().float().numpy()})
                outputs.append({"boxes": torch.from_numpy(boxes), "scores": torch.from_numpy(scores),
                                "labels": torch.from_numpy(labels).long()})
            else:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # "always returns a (Losses, Detections) tuple"
                    _, detections = self.module([image.cpu().float()])
                outputs.append(detections[0])
        return outputs

    def check_compatible(self, *, classes: Sequence[str], reference: str) -> None:
        """Raise ``ValueError`` when the file records other classes than ``reference``'s."""
        recorded = self.metadata.get("classes")
        if recorded is not None and list(recorded) != list(classes):
            raise ValueError(f"{self.source} was exported for classes {list(recorded)[:5]}, but {reference} has "
                             f"{list(classes)[:5]}; export that checkpoint again with python -m tools.export")

    def __repr__(self) -> str:
        return f"DetectorRunner({self.source}, {self.kind})"


def detection_error(reference: Detections, outputs: Detections) -> Tuple[int, float, float]:
    """How far ``outputs`` are from ``reference`` (one dict per image): the number of images whose detections
    differ in count or labels, and the largest box difference (pixels) and score difference over the others."""
    mismatched, box_err, score_err = 0, 0.0, 0.0
    for ref, out in zip(reference, outputs):
        same = ref["boxes"].shape == out["boxes"].shape and torch.equal(ref["labels"].cpu(), out["labels"].cpu())
        if not same:
            mismatched += 1
            continue
        if len(ref["boxes"]):
            box_err = max(box_err, float((ref["boxes"].cpu() - out["boxes"].cpu()).abs().max()))
            score_err = max(score_err, float((ref["scores"].cpu() - out["scores"].cpu()).abs().max()))
    return mismatched, box_err, score_err

