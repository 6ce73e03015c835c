"""Export a trained segmentation model (or any registered backbone) to ONNX, OpenVINO IR or TorchScript, and
verify it.

Examples::

    python -m tools.export --checkpoint runs/voc/best.pt --format onnx                  # runs/voc/best.onnx
    python -m tools.export --checkpoint runs/voc/best.pt --format onnx --precision int8 # best.int8.onnx
    python -m tools.export --checkpoint runs/voc/best.pt --format openvino --precision bf16  # best.bf16.xml/.bin
    python -m tools.export --checkpoint runs/voc/best.pt --format torchscript --deploy  # best.deploy.ts
    python -m tools.export --model resnet50 --head deeplabv3plus --num-classes 21 --format onnx
    python -m tools.export --checkpoint runs/<detector>/best.pt --format onnx           # a detector: fp32 ONNX

Default output names derive from the checkpoint (or the model name): ``<stem>[.deploy][.bf16|.int8]`` with the
format's suffix (``.onnx``, ``.xml`` + ``.bin``, ``.ts``); an export never writes over its checkpoint. Files
are written to a temporary folder beside the output, verified there, and only then moved into place, so a
failed export (error, or a verification beyond tolerance) leaves nothing behind.

ONNX files have dynamic batch, height and width (``torch.onnx.export`` with ``dynamo=True``, opset 18 by
default). OpenVINO IRs are converted from that ONNX file (``openvino.convert_model``), weights in fp32.
``--precision bf16`` is an OpenVINO compile hint (``INFERENCE_PRECISION_HINT``), not a weight format: the IR is
the fp32 one with ``bf16`` recorded in its ``rt_info``, and ``--engine openvino`` (``load_runner``) compiles it
with that hint; any fp32 ``.onnx`` or ``.xml`` runs in bf16 with ``--engine openvino --precision bf16`` too.
``--precision int8`` is post-training static quantization (QDQ: per-channel int8 weights, per-tensor uint8
activations) calibrated on ``--calib-images`` images of the run's own training split
(:func:`tools.runtime.quantize.calibration_batches`).

Verification compares the written file, run by its engine (ONNX Runtime for ``.onnx``, OpenVINO for ``.xml``),
with the eager PyTorch model (the original one even with ``--deploy``) on random inputs of several sizes:
relative error within ``--tolerance`` (1e-4 in fp32, 5e-2 in bf16). An int8 file is compared on calibration
images instead: the Pearson correlation of its logits with the eager ones must reach 0.9.

A detection checkpoint (``tools.train_det``) exports to ONNX (one ``(3, H, W)`` image per call, dynamic size;
outputs boxes, scores, labels) or TorchScript, in fp32 (:mod:`tools.runtime.detectors` says why not more), and
is verified on the run's validation images: the same detections (count and labels) as the eager detector, boxes
within ``--tolerance`` pixels (default 0.01) and scores within 1e-4.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import nn

from backbones import deploy

from .bench.profiling import parse_size
from .engine.checkpoint import checkpoint_task
from .engine.cli import add_list_argument, run_cli
from .tasks import build_named_model, model_from_checkpoint
from .runtime.runners import PRECISIONS, cpu_supports_bf16, load_runner
from .runtime.detectors import (DETECTOR_FORMATS, DetectorRunner, detection_error, export_detector_onnx,
                                export_detector_torchscript)
from .runtime.export import Staging, add_onnx_metadata, export_onnx, export_openvino, export_torchscript
from .runtime.quantize import QUANTIZERS, calibration_batches, quantize_onnx
from .runtime.verify import agreement, as_list, verify

__all__ = ["parse_args", "run", "main", "default_output"]

FORMATS = {"onnx": ".onnx", "openvino": ".xml", "torchscript": ".ts"}
ENGINE_OF_FORMAT = {"onnx": "onnxruntime", "openvino": "openvino", "torchscript": "torch"}
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}
# An int8 file whose logits correlate less than this with the fp32 model's is broken, not merely less exact.
INT8_MIN_CORRELATION = 0.9
INT8_CHECK_IMAGES = 8


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("what to export")
    src.add_argument("--checkpoint", default=None, help="a training checkpoint (tools.train_seg's best.pt/last.pt)")
    src.add_argument("--model", default=None, help="or: a registered backbone name (random weights)")
    src.add_argument("--head", default=None, help="with --model: a segmentation head")
    src.add_argument("--num-classes", type=int, default=19)
    src.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    p.add_argument("--format", choices=tuple(FORMATS), default="onnx")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: openvino only (a compile hint recorded in the IR); int8: onnx or openvino, "
                        "calibrated on the run's training images")
    p.add_argument("--output", default=None,
                   help="file to write (default: <checkpoint stem>[.deploy][.bf16|.int8].<onnx|xml|ts> beside the "
                        "checkpoint, or ./<model> with the same tail)")
    p.add_argument("--deploy", action="store_true", help="export the deploy() copy (BatchNorm folded)")
    p.add_argument("--size", default="512x512", help="example input HxW used for tracing")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--external-data", action="store_true", help="weights in <output>.data (models > 2 GiB)")
    p.add_argument("--min-size", type=int, default=64, help="smallest height/width the ONNX file accepts")
    q = p.add_argument_group("int8")
    q.add_argument("--calib-images", type=int, default=300,
                   help="training images to calibrate on (all of them when the split is smaller)")
    q.add_argument("--calib-seed", type=int, default=0, help="which images, and where they are cropped")
    q.add_argument("--calib-root", default=None, help="the run's dataset folder, if it moved since training")
    q.add_argument("--quantizer", choices=QUANTIZERS, default="ort",
                   help="ort: ONNX Runtime quantize_static (MinMax); nncf: NNCF with fast bias correction")
    add_list_argument(q, "--keep-fp32", default=[], help="Conv node names to leave unquantized")
    v = p.add_argument_group("verification")
    add_list_argument(v, "--verify-sizes", default=None,
                      help="HxW sizes to check, e.g. 512x512,300x400 (default: --size and an odd size)")
    v.add_argument("--tolerance", type=float, default=None, help="relative error; unset: 1e-4 fp32, 5e-2 bf16")
    v.add_argument("--no-verify", action="store_true")
    return p.parse_args(argv)


def default_output(args: argparse.Namespace) -> Path:
    """``best.pt`` -> ``best[.deploy][.bf16|.int8].<suffix>`` beside it; ``--model`` -> the same in ``./``."""
    tail = (".deploy" if args.deploy else "") + ("" if args.precision == "fp32" else f".{args.precision}")
    if args.checkpoint:
        ckpt = Path(args.checkpoint)
        return ckpt.with_name(ckpt.stem + tail + FORMATS[args.format])
    return Path(args.model + (f"_{args.head}" if args.head else "") + tail + FORMATS[args.format])


def _check_options(args: argparse.Namespace) -> None:
    if not args.checkpoint and not args.model:
        raise ValueError("give --checkpoint, or --model (and optionally --head) to export a fresh model")
    if args.precision == "bf16" and args.format != "openvino":
        other = ("ONNX Runtime has no bf16 CPU kernels: export --format openvino --precision bf16, or run the fp32 "
                 ".onnx with --engine openvino --precision bf16") if args.format == "onnx" else \
            "TorchScript files are fp32: use --format openvino --precision bf16, or --engine torch --precision bf16"
        raise ValueError(f"--precision bf16 with --format {args.format}: {other}")
    if args.precision == "int8":
        if args.format == "torchscript":
            raise ValueError("--precision int8 needs --format onnx or openvino (TorchScript files are fp32)")
        if not args.checkpoint:
            raise ValueError("--precision int8 calibrates on the run's training images: give --checkpoint "
                             "(a --model with random weights has no dataset to calibrate on)")
    if args.precision == "bf16" and not args.no_verify and not cpu_supports_bf16("openvino"):
        raise ValueError("--precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), so the IR cannot be "
                         "verified here; use --precision fp32 or int8, or --no-verify to write it for another machine")
    if args.calib_images < 1:
        raise ValueError(f"--calib-images must be >= 1, got {args.calib_images}")


def _output_path(args: argparse.Namespace) -> Path:
    out = Path(args.output) if args.output else default_output(args)
    written = [out] + ([out.with_suffix(".bin")] if args.format == "openvino" else []) + \
        ([out.with_name(out.name + ".data")] if args.external_data else [])
    if args.checkpoint and any(p.resolve() == Path(args.checkpoint).resolve() for p in written):
        raise ValueError(f"--output {str(out)!r} would overwrite the checkpoint {args.checkpoint!r}; choose another "
                         f"--output (default: {default_output(args).name})")
    suffix = FORMATS[args.format]
    if out.suffix.lower() != suffix:
        raise ValueError(f"--output {str(out)!r}: a --format {args.format} file must end in {suffix} (the tools "
                         f"tell files apart by suffix)")
    if not out.parent.is_dir():
        raise FileNotFoundError(f"--output folder {str(out.parent)!r} does not exist")
    return out


def _load_model(args: argparse.Namespace) -> Tuple[nn.Module, Optional[Dict[str, Any]]]:
    if args.checkpoint:
        return model_from_checkpoint(args.checkpoint)
    name = f"{args.model}+{args.head}" if args.head else args.model
    return build_named_model(name, output_stride=args.output_stride, num_classes=args.num_classes).eval(), None


def run(argv: Optional[List[str]] = None) -> int:
    """Export and verify as ``argv`` says; returns the exit status (1 when verification fails)."""
    args = parse_args(argv)
    _check_options(args)
    height, width = parse_size(args.size)
    if min(height, width) <= args.min_size:
        raise ValueError(f"--size {height}x{width} must exceed --min-size {args.min_size} on both sides")
    checks = ([parse_size(s) for s in args.verify_sizes] if args.verify_sizes
              else [(height, width), (height // 2 + 17, width // 2 + 31)])
    out = _output_path(args)
    model, checkpoint = _load_model(args)
    if checkpoint is not None and checkpoint_task(checkpoint) == "detection":
        return _export_detector(args, model, checkpoint, out, example=(height, width))
    calibration = None
    if args.precision == "int8":
        calibration = calibration_batches(checkpoint, num_images=args.calib_images, seed=args.calib_seed,
                                          root=args.calib_root)
    metadata: Dict[str, Any] = {"precision": args.precision, "deploy": args.deploy,
                                "source": Path(args.checkpoint).name if args.checkpoint else args.model}
    if checkpoint is not None:
        metadata["classes"] = list(checkpoint["classes"])
    exported = deploy(model) if args.deploy else model
    start = time.time()
    with Staging(out) as stage:
        entry = stage.path(out.name)
        details = _write(args, exported, entry, stage, calibration, metadata, example=(height, width))
        names = _companions(args, out, stage) + [out.name]
        size = sum(stage.path(n).stat().st_size for n in names) / 2**20
        what = "deployed " if args.deploy else ""
        print(f"built {out.name} ({size:.1f} MiB): {what}{type(model).__name__} as {args.format} {args.precision}"
              f"{details}, in {time.time() - start:.1f} s")
        if not args.no_verify and not _verify(args, model, entry, checks, calibration):
            print(f"verification failed: nothing written to {out}")
            return 1
        stage.commit(names)
    print(f"wrote {out}" + "".join(f" + {n}" for n in names[:-1]))
    return 0


def _companions(args: argparse.Namespace, out: Path, stage: Staging) -> List[str]:
    """The files written beside the entry file: an IR's weights, ONNX external data."""
    names = [out.with_suffix(".bin").name] if args.format == "openvino" else []
    if args.format == "onnx" and stage.path(out.name + ".data").exists():
        names.append(out.name + ".data")
    return names


def _write(args: argparse.Namespace, model: nn.Module, entry: Path, stage: Staging,
           calibration: Optional[List[torch.Tensor]], metadata: Dict[str, Any], *, example: Tuple[int, int]) -> str:
    """Write the export to ``entry`` in the staging folder; returns details for the report line."""
    if args.format == "torchscript":
        export_torchscript(model, str(entry))
        return ""
    onnx_file = entry if args.format == "onnx" and args.precision != "int8" else stage.path("fp32.onnx")
    export_onnx(model, str(onnx_file), example=torch.randn(2, 3, *example), opset=args.opset,
                min_size=args.min_size, external_data=args.external_data)
    details = f", opset {args.opset}, dynamic batch/height/width >= {args.min_size}"
    if args.precision == "int8":
        quantized = entry if args.format == "onnx" else stage.path("int8.onnx")
        report = quantize_onnx(onnx_file, quantized, calibration, method=args.quantizer, keep_fp32=args.keep_fp32,
                               external_data=args.external_data)
        metadata.update(quantizer=report.method, calibration_images=report.calibration_images,
                        kept_fp32=report.kept_fp32)
        details += (f", {report.quantized_convs} convolutions in int8 ({report.method}, calibrated on "
                    f"{report.calibration_images} training images), in fp32: "
                    f"{', '.join(report.kept_fp32) or 'none'}")
        onnx_file = quantized
    if args.format == "onnx":
        add_onnx_metadata(str(entry), metadata)
    else:
        export_openvino(str(onnx_file), str(entry), metadata=metadata)
    return details


def _verify(args: argparse.Namespace, model: nn.Module, entry: Path, checks: List[Tuple[int, int]],
            calibration: Optional[List[torch.Tensor]]) -> bool:
    engine = load_runner(entry, engine=ENGINE_OF_FORMAT[args.format], precision=args.precision)
    runner = as_list(engine)
    if args.precision == "int8":
        assert calibration is not None
        images = calibration[:INT8_CHECK_IMAGES]
        r, same = agreement(model, runner, images)
        good = r >= INT8_MIN_CORRELATION
        print(f"  {'ok  ' if good else 'FAIL'} {engine.kind} int8 against eager PyTorch on {len(images)} calibration "
              f"images: logits correlation {r:.4f} (minimum {INT8_MIN_CORRELATION}), same argmax at "
              f"{100 * same:.1f}% of pixels")
        return good
    tolerance = args.tolerance if args.tolerance is not None else TOLERANCE[args.precision]
    ok = True
    for shape, err in verify(model, runner, [(b, 3, h, w) for (h, w) in checks for b in (1, 2)]):
        good = err <= tolerance
        ok &= good
        print(f"  {'ok  ' if good else 'FAIL'} {engine.kind} {args.precision} input {'x'.join(map(str, shape))}: "
              f"relative error {err:.1e} against eager PyTorch (tolerance {tolerance:g})")
    return ok


# A detector's exported boxes may differ from the eager ones by float rounding of the resize and box decoding.
DETECTOR_BOX_TOLERANCE = 0.01
DETECTOR_SCORE_TOLERANCE = 1e-4


def _export_detector(args: argparse.Namespace, model: nn.Module, checkpoint: Dict[str, Any], out: Path, *,
                     example: Tuple[int, int]) -> int:
    """Write a detection checkpoint's detector as ONNX or TorchScript (fp32), verified on validation images."""
    where = f"checkpoint {args.checkpoint!r} is a detector"
    if args.format not in DETECTOR_FORMATS:
        raise ValueError(f"{where}: it exports to --format {' or '.join(DETECTOR_FORMATS)}, not {args.format} "
                         f"(torchvision's detectors)")
    if args.precision != "fp32" or args.deploy:
        raise ValueError(f"{where}: it exports in fp32 without --deploy (got --precision {args.precision}"
                         f"{', --deploy' if args.deploy else ''})")
    metadata = {"task": "detection", "classes": list(checkpoint["classes"]), "source": Path(args.checkpoint).name}
    start = time.time()
    with Staging(out) as stage:
        entry = stage.path(out.name)
        if args.format == "onnx":
            export_detector_onnx(model, entry, example=example, metadata=metadata)
        else:
            export_detector_torchscript(model, entry)
        size = entry.stat().st_size / 2**20
        print(f"built {out.name} ({size:.1f} MiB): {checkpoint['config'].get('detector')} detector as {args.format} "
              f"fp32, in {time.time() - start:.1f} s")
        if not args.no_verify and not _verify_detector(args, model, checkpoint, entry):
            print(f"verification failed: nothing written to {out}")
            return 1
        stage.commit([out.name])
    print(f"wrote {out}")
    return 0


def _verify_detector(args: argparse.Namespace, model: nn.Module, checkpoint: Dict[str, Any], entry: Path) -> bool:
    from .data.detection import build_detection_dataset, det_eval_transform
    from .tasks.detection.inference import detect

    config = checkpoint["config"]
    try:
        dataset = build_detection_dataset(config["dataset"], root=args.calib_root or config.get("root"),
                                          split=config.get("val_split", "val"), transform=det_eval_transform(),
                                          **(config.get("data_kwargs") or {}))
        images = [dataset[i][0] for i in range(min(INT8_CHECK_IMAGES, len(dataset)))]
        what = f"{len(images)} validation images of {dataset.name}"
    except (OSError, ValueError) as err:  # the run's data moved: random images still compare the graphs
        gen = torch.Generator().manual_seed(0)
        images = [torch.rand(3, 96 + 32 * k, 128, generator=gen) for k in range(3)]
        what = f"{len(images)} random images (the run's validation split is not readable here: {err})"
    reference = detect(model, images)
    mismatched, box_err, score_err = detection_error(reference, DetectorRunner(entry)(images))
    tolerance = args.tolerance if args.tolerance is not None else DETECTOR_BOX_TOLERANCE
    good = not mismatched and box_err <= tolerance and score_err <= DETECTOR_SCORE_TOLERANCE
    print(f"  {'ok  ' if good else 'FAIL'} {args.format} against the eager detector on {what}: "
          f"{mismatched} images with other detections, boxes within {box_err:.1e} px (tolerance {tolerance:g}), "
          f"scores within {score_err:.1e}")
    return good


def main(argv: Optional[List[str]] = None) -> int:
    """Command-line entry point (``dense-export``)."""
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
