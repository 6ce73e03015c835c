"""The machine's practical peak per precision: square matrix products through every library in the run.

A network's rate is only meaningful against what the machine can do in that precision, and which library reaches
it differs by CPU: on some, ``torch.mm`` in fp32 goes through a BLAS at half the rate of ONNX Runtime's MLAS or
of oneDNN's convolutions. So each precision gets one product per library able to run it here, all timed in the
same round-robin as the networks, and the fastest of them is the peak (see ``docs/performance.md``):

- fp32: ``torch.mm``; ONNX Runtime's ``MatMul``; OpenVINO's ``MatMul``.
- bf16: ``torch.mm`` in bf16 (oneDNN); OpenVINO's ``MatMul`` with its bf16 precision hint.
- int8: ONNX Runtime's ``MatMulInteger`` (uint8 x int8 -> int32, the kernel its quantized convolutions use);
  OpenVINO running a QDQ ``MatMul`` (int8 activations and weights), as it runs a quantized network.
- fp16: ``torch.mm`` (CUDA).

ONNX Runtime and OpenVINO take part when installed; their products run with ``threads`` intra-op threads.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .profiling import DTYPES, matmul_flops

__all__ = ["GEMM_PREFIX", "peak_gemms", "gemm_precision", "peak_rates"]

GEMM_PREFIX = "gemm"

Candidate = Tuple[str, Callable[[], Any], int]  # label, call, FLOPs


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def peak_gemms(precisions: Sequence[str], *, size: int = 2048, device: torch.device = torch.device("cpu"),
               threads: Optional[int] = None) -> List[Candidate]:
    """``(label, call, FLOPs)`` of a ``size x size`` product per library that runs each precision here.

    Labels read ``"gemm 2048 fp32 torch.mm"``; FLOPs are ``2 * size**3`` (integer operations for int8).
    """
    threads = threads or torch.get_num_threads()
    out: List[Candidate] = []
    for name in dict.fromkeys(precisions):
        label = f"{GEMM_PREFIX} {size} {name}"
        if name in DTYPES:
            fn, flops = matmul_flops(size, dtype=DTYPES[name], device=device)
            out.append((f"{label} torch.mm", fn, flops))
        if device.type != "cpu":
            continue
        if name in ("fp32", "int8") and _installed("onnxruntime"):
            out.append((f"{label} onnxruntime", _onnxruntime_gemm(size, name, threads), 2 * size ** 3))
        if name in ("fp32", "bf16", "int8") and _installed("openvino"):
            out.append((f"{label} openvino", _openvino_gemm(size, name, threads), 2 * size ** 3))
    return out


def gemm_precision(label: str) -> Optional[str]:
    """``"gemm 2048 bf16 openvino"`` -> ``"bf16"``; ``None`` for a label that is not a product."""
    parts = label.split()
    return parts[2] if len(parts) >= 3 and parts[0] == GEMM_PREFIX else None


def peak_rates(rates: Dict[str, float]) -> Dict[str, Tuple[float, str]]:
    """``{precision: (fastest rate, its label)}`` over the product labels in ``rates`` (label -> FLOP/s)."""
    best: Dict[str, Tuple[float, str]] = {}
    for label, rate in rates.items():
        precision = gemm_precision(label)
        if precision is not None and rate > best.get(precision, (0.0, ""))[0]:
            best[precision] = (rate, label)
    return best


def _graph(size: int, precision: str) -> Tuple[bytes, Dict[str, np.ndarray]]:
    """An ONNX graph ``Y = A @ B`` with ``B`` a constant, and its feed."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if precision == "int8":
        a = rng.integers(0, 256, (size, size), dtype=np.uint8)
        b = rng.integers(-127, 128, (size, size), dtype=np.int8)
        inits.append(numpy_helper.from_array(b, "B"))
        nodes.append(helper.make_node("MatMulInteger", ["A", "B"], ["Y"]))
        inputs = [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])]
        outputs = [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])]
    else:
        a = rng.standard_normal((size, size), dtype=np.float32)
        inits.append(numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "B"))
        nodes.append(helper.make_node("MatMul", ["A", "B"], ["Y"]))
        inputs = [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])]
        outputs = [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])]
    return _serialized(helper.make_graph(nodes, "gemm", inputs, outputs, initializer=inits)), {"A": a}


def _serialized(graph: Any) -> bytes:
    """An opset-18 model of ``graph``, checked, as bytes."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _onnxruntime_gemm(size: int, precision: str, threads: int) -> Callable[[], Any]:
    import onnxruntime as ort

    proto, feed = _graph(size, precision)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    return lambda: session.run(None, feed)


def _qdq_graph(size: int) -> Tuple[bytes, Dict[str, np.ndarray]]:
    """``Y = DQ(Q(A)) @ DQ(B_int8)``: what OpenVINO compiles into an int8 product, as in a quantized network."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (size, size), dtype=np.int8), "Bq"),
             numpy_helper.from_array(np.full((size,), 0.01, np.float32), "b_scale"),
             numpy_helper.from_array(np.zeros((size,), np.int8), "b_zero"),
             numpy_helper.from_array(np.array(0.02, np.float32), "a_scale"),
             numpy_helper.from_array(np.array(128, np.uint8), "a_zero")]
    nodes = [helper.make_node("QuantizeLinear", ["A", "a_scale", "a_zero"], ["Aq"]),
             helper.make_node("DequantizeLinear", ["Aq", "a_scale", "a_zero"], ["Ad"]),
             helper.make_node("DequantizeLinear", ["Bq", "b_scale", "b_zero"], ["Bd"], axis=1),
             helper.make_node("MatMul", ["Ad", "Bd"], ["Y"])]
    graph = helper.make_graph(nodes, "gemm_qdq", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])], initializer=inits)
    return _serialized(graph), {"A": rng.standard_normal((size, size), dtype=np.float32)}


def _openvino_gemm(size: int, precision: str, threads: int) -> Callable[[], Any]:
    import openvino as ov

    proto, feed = _qdq_graph(size) if precision == "int8" else _graph(size, "fp32")
    core = ov.Core()
    with tempfile.TemporaryDirectory(prefix="dense-gemm-") as tmp:
        path = os.path.join(tmp, "gemm.onnx")
        with open(path, "wb") as f:
            f.write(proto)
        model = core.read_model(path)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
                                                 "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads})
    request = compiled.create_infer_request()
    a = feed["A"]
    return lambda: request.infer({0: a})
