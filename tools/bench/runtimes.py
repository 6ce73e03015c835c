"""Inference engines in the benchmark: the model exported to ONNX once (and quantized once for int8), run by ONNX
Runtime and OpenVINO through :func:`tools.runtime.runners.load_runner`, beside the PyTorch candidates."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import nn

from ..runtime.runners import RUNTIMES, load_runner
from ..runtime.export import export_for_runtime, first_conv_channels
from ..runtime.extras import require
from ..runtime.quantize import quantize_onnx

__all__ = ["RUNTIMES", "RUNTIME_PRECISIONS", "CALIBRATION", "check_runtimes", "runtime_candidates"]

# What each engine runs; torch's rows are deploy() copies (fp16 on CUDA only).
RUNTIME_PRECISIONS = {"torch": ("fp32", "bf16", "fp16"), "onnxruntime": ("fp32", "int8"),
                     "openvino": ("fp32", "bf16", "int8")}
# int8 calibration for speed only (accuracy is measured by tools.eval_seg): a few seeded random batches, small so
# that quantizing a large network stays quick. The quantized graph's speed does not depend on the ranges found.
CALIBRATION = dict(batches=4, size=(128, 128), seed=0)


def check_runtimes(engines: Sequence[str]) -> None:
    """Raise ``ValueError`` for an unknown engine and ``MissingExtra`` (one line, naming the extra) for an
    engine whose package is not installed."""
    bad = [e for e in engines if e not in RUNTIMES]
    if bad:
        raise ValueError(f"--engines: {', '.join(map(repr, bad))} not among {', '.join(RUNTIMES)}")
    for engine in engines:
        if engine != "torch":
            require(engine, f"--engines {engine}")
            require("onnx", f"--engines {engine} (the model is exported to ONNX)")


def runtime_candidates(model: nn.Module, *, engines: Sequence[str], precisions: Sequence[str], threads: int,
                      notes: List[str]) -> Dict[str, Callable[[torch.Tensor], Any]]:
    """``{"onnxruntime fp32": run, ...}`` for every non-torch engine and precision it runs.

    The model is exported once; int8 rows share one QDQ file quantized (ONNX Runtime's quantizer, per-channel
    weights) on :data:`CALIBRATION`'s random batches. Each ``run`` maps a float32 NCHW batch to the model's
    output. A pair the engine cannot run (ONNX Runtime in bf16, bf16 on a CPU without it) adds a line to
    ``notes`` instead of a row.
    """
    wanted = [(e, p) for e in engines if e != "torch" for p in precisions]
    runs: Dict[str, Callable[[torch.Tensor], Any]] = {}
    if not wanted:
        return runs
    channels = first_conv_channels(model)
    with tempfile.TemporaryDirectory(prefix="dense-bench-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        export_for_runtime(model, str(fp32))
        int8 = None
        for engine, precision in wanted:
            if precision not in RUNTIME_PRECISIONS[engine]:
                notes.append(f"{engine} {precision}: skipped, {engine} runs {', '.join(RUNTIME_PRECISIONS[engine])}")
                continue
            path = fp32
            if precision == "int8":
                if int8 is None:
                    int8 = Path(tmp) / "model.int8.onnx"
                    gen = torch.Generator().manual_seed(CALIBRATION["seed"])
                    batches = [torch.randn(1, channels, *CALIBRATION["size"], generator=gen)
                               for _ in range(CALIBRATION["batches"])]
                    quantize_onnx(fp32, int8, batches)
                path = int8
            try:
                runs[f"{engine} {precision}"] = load_runner(path, engine=engine, precision=precision, threads=threads)
            except ValueError as err:  # e.g. bf16 on a CPU without it
                notes.append(f"{engine} {precision}: skipped, {err}")
    return runs
