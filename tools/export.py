"""Export a trained segmentation model (or any registered backbone) to ONNX or TorchScript, and verify it.

Examples::

    python -m tools.export --checkpoint runs/voc/best.pt --format onnx --deploy --output model.onnx
    python -m tools.export --model resnet50 --head deeplabv3plus --num-classes 21 --format onnx
    python -m tools.export --model resnet18 --format torchscript --output resnet18.pt

ONNX files have dynamic batch, height and width (``torch.onnx.export`` with ``dynamo=True``, opset 18 by
default); heights and widths from ``--min-size`` up are accepted. After writing, the file is run with ONNX Runtime
(or reloaded with ``torch.jit.load``) at several input sizes and compared with the eager PyTorch model, the
original one even with ``--deploy``, so a passing check covers both the folding and the export. The command
fails (exit status 1) when the relative error exceeds ``--tolerance`` (1e-4).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from backbones import build_backbone, deploy

from .profiling import parse_size

__all__ = ["export_onnx", "export_torchscript", "verify", "load_model", "main"]


def load_model(*, checkpoint: Optional[str] = None, model: Optional[str] = None, head: Optional[str] = None,
               num_classes: int = 19, output_stride: int = 32) -> nn.Module:
    """The eval-mode model of a training checkpoint, or a freshly built ``model`` (+ ``head``)."""
    if checkpoint:
        from .checkpoint import check_model_state, load_checkpoint
        from .model import build_model, describe_model

        ckpt = load_checkpoint(checkpoint)
        classes = list(ckpt.get("classes") or [])
        if not classes:
            raise ValueError(f"checkpoint {checkpoint!r} records no class names")
        net = build_model(ckpt["config"], len(classes))
        check_model_state(net, ckpt["model"], where=f"{checkpoint!r} ({describe_model(ckpt['config'], len(classes))})")
        net.load_state_dict(ckpt["model"])
        return net.eval()
    if not model:
        raise ValueError("give --checkpoint, or --model (and optionally --head) to export a fresh model")
    if head:
        from heads import build_segmentor

        return build_segmentor(head=head, backbone=model, num_classes=num_classes,
                               output_stride=output_stride).eval()
    return build_backbone(model, output_stride=output_stride).eval()


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


def onnx_runner(path: str) -> Callable[[torch.Tensor], List[torch.Tensor]]:
    """Run the ONNX file with ONNX Runtime's CPU provider."""
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise RuntimeError(f"verifying needs onnxruntime (pip install onnxruntime), or pass --no-verify: {err}")
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: [torch.from_numpy(o) for o in session.run(None, {name: x.numpy()})]


def torchscript_runner(path: str) -> Callable[[torch.Tensor], List[torch.Tensor]]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(path, map_location="cpu").eval()

    def run(x: torch.Tensor) -> List[torch.Tensor]:
        with torch.no_grad():
            out = scripted(x)
        return list(out) if isinstance(out, (list, tuple)) else [out]

    return run


def verify(reference: nn.Module, run: Callable[[torch.Tensor], List[torch.Tensor]],
           shapes: Sequence[Tuple[int, int, int, int]]) -> List[Tuple[Tuple[int, ...], float]]:
    """``(shape, relative error)`` of ``run`` against ``reference`` (eval, CPU) for random inputs of ``shapes``.

    The error is the largest absolute difference over the largest reference magnitude, over all outputs.
    """
    results = []
    for shape in shapes:
        x = torch.randn(shape)
        with torch.no_grad():
            ref = reference(x)
        refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        outs = run(x)
        if len(outs) != len(refs) or any(o.shape != r.shape for o, r in zip(outs, refs)):
            results.append((shape, float("inf")))
            continue
        err = max(float((o.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-12))
                  for o, r in zip(outs, refs))
        results.append((shape, err))
    return results


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.export", description=__doc__.split("\n\n")[0])
    src = p.add_argument_group("what to export")
    src.add_argument("--checkpoint", default=None, help="a training checkpoint (tools.train_seg's best.pt/last.pt)")
    src.add_argument("--model", default=None, help="or: a registered backbone name (random weights)")
    src.add_argument("--head", default=None, help="with --model: a segmentation head")
    src.add_argument("--num-classes", type=int, default=19)
    src.add_argument("--output-stride", type=int, default=32, choices=(8, 16, 32))
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--output", default=None, help="file to write (default: next to the checkpoint, or ./<model>)")
    p.add_argument("--deploy", action="store_true", help="export the deploy() copy (BatchNorm folded)")
    p.add_argument("--size", default="512x512", help="example input HxW used for tracing")
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--external-data", action="store_true", help="weights in <output>.data (models > 2 GiB)")
    p.add_argument("--min-size", type=int, default=64, help="smallest height/width the ONNX file accepts")
    p.add_argument("--verify-sizes", default=None,
                   help="HxW sizes to check, comma-separated (default: --size and an odd size)")
    p.add_argument("--tolerance", type=float, default=1e-4)
    p.add_argument("--no-verify", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        height, width = parse_size(args.size)
        if min(height, width) <= args.min_size:
            raise ValueError(f"--size {height}x{width} must exceed --min-size {args.min_size} on both sides")
        checks = ([parse_size(s) for s in args.verify_sizes.split(",")] if args.verify_sizes
                  else [(height, width), (height // 2 + 17, width // 2 + 31)])
        model = load_model(checkpoint=args.checkpoint, model=args.model, head=args.head,
                           num_classes=args.num_classes, output_stride=args.output_stride)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    suffix = ".onnx" if args.format == "onnx" else ".pt"
    if args.output:
        out = Path(args.output)
    elif args.checkpoint:
        out = Path(args.checkpoint).with_suffix(suffix)
    else:
        out = Path(args.model + (f"_{args.head}" if args.head else "") + suffix)
    exported = deploy(model) if args.deploy else model
    start = time.time()
    try:
        if args.format == "onnx":
            export_onnx(exported, str(out), example=torch.randn(2, 3, height, width), opset=args.opset,
                        min_size=args.min_size, external_data=args.external_data)
        else:
            export_torchscript(exported, str(out))
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    what = "deployed " if args.deploy else ""
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB): {what}{type(model).__name__} as {args.format}"
          + (f", opset {args.opset}, dynamic batch/height/width >= {args.min_size}" if args.format == "onnx" else "")
          + f", in {time.time() - start:.1f} s")
    if args.no_verify:
        return 0
    try:
        run = onnx_runner(str(out)) if args.format == "onnx" else torchscript_runner(str(out))
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    shapes = [(b, 3, h, w) for (h, w) in checks for b in (1, 2)]
    results = verify(model, run, shapes)
    ok = True
    for shape, err in results:
        good = err <= args.tolerance
        ok &= good
        print(f"  {'ok  ' if good else 'FAIL'} input {'x'.join(map(str, shape))}: relative error {err:.1e} "
              f"against eager PyTorch (tolerance {args.tolerance:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
