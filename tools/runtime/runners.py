"""One interface over every way to run a trained model: PyTorch, ONNX Runtime and OpenVINO.

``load_runner(source, engine=..., precision=...)`` returns an :class:`Runner`: a callable that maps a float32
NCHW batch to the model's logits ``(N, K, H, W)`` (or to a backbone's list of feature maps), whatever the
source is: a training checkpoint, an ``nn.Module`` (a ``deploy()``-ed copy included), a TorchScript file
(``.ts``), an ONNX file (``.onnx``, run by ONNX Runtime or OpenVINO) or an OpenVINO IR (``.xml`` + ``.bin``).

Precisions: ``fp32``; ``bf16`` (OpenVINO's ``INFERENCE_PRECISION_HINT``, or ``deploy(dtype=torch.bfloat16)``
for torch; needs a CPU of class ``avx512_bf16`` or ``amx``, see :mod:`backbones.machine`); ``int8`` (a file
quantized by :mod:`tools.runtime.quantize`).
``precision=None`` takes what the file holds: ``int8`` when it contains quantized operators, the precision an
IR records (``tools.export --format openvino --precision bf16``), else ``fp32``. OpenVINO is always given an
explicit precision hint: on a CPU with bf16 support its default would silently run an fp32 model in bf16.

ONNX Runtime and OpenVINO are imported when first needed; without them the error names the extra to install.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from backbones.machine import lacks_native_bf16

from .export import METADATA_KEY, export_for_runtime, first_conv_channels, output_names
from .extras import require

__all__ = ["RUNTIMES", "PRECISIONS", "Runner", "TorchRunner", "OnnxRuntimeRunner", "OpenVinoRunner", "load_runner",
           "add_runner_args", "resolve_runtime", "inference_device", "load_for_inference", "cpu_supports_bf16",
           "onnx_is_quantized", "openvino_is_quantized"]

RUNTIMES = ("torch", "onnxruntime", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")

# ONNX operators that only a quantized graph holds.
_QUANTIZED_ONNX_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
                                 "MatMulInteger", "DynamicQuantizeLinear"})

Output = Union[torch.Tensor, List[torch.Tensor]]


def cpu_supports_bf16(engine: str = "torch") -> bool:
    """Whether ``engine`` computes bf16 natively on this CPU: its class (:mod:`backbones.machine`) is
    ``avx512_bf16`` or ``amx``, and for torch PyTorch has oneDNN (OpenVINO brings its own)."""
    if engine not in RUNTIMES:
        raise ValueError(f"engine must be one of {', '.join(RUNTIMES)}, got {engine!r}")
    return not lacks_native_bf16(onednn=engine == "torch")


def _check_bf16_cpu(engine: str, what: str) -> None:
    if not cpu_supports_bf16(engine):
        lacks = lacks_native_bf16(onednn=engine == "torch") or "this CPU has no native bf16"
        raise ValueError(f"precision bf16 for {what}: {lacks}, so {engine} would emulate it slowly or not at all; "
                         f"use --precision fp32 or int8")


class Runner:
    """A model behind one calling convention: ``engine(images)`` -> logits ``(N, K, H, W)`` or feature list.

    ``images`` is a float32 ``(N, C, H, W)`` tensor (normalized as in training); outputs are float32 CPU tensors
    (for torch: on the model's device). Attributes: ``kind`` (``"torch"``, ``"onnxruntime"``, ``"openvino"``),
    ``precision``, ``source`` (a path or a description), ``output_names``, ``input_channels`` and
    ``output_channels`` (``None`` when not fixed) and ``metadata`` (what the export recorded: classes...).
    """

    kind = "engine"

    def __init__(self, *, source: str, precision: str, output_names: Sequence[str], input_channels: Optional[int],
                 output_channels: Optional[int], metadata: Optional[Dict[str, Any]] = None) -> None:
        self.source = source
        self.precision = precision
        self.output_names = list(output_names)
        self.input_channels = input_channels
        self.output_channels = output_channels
        self.metadata = dict(metadata or {})

    def __call__(self, images: torch.Tensor) -> Output:
        if images.dim() != 4:
            raise ValueError(f"{self.kind} engine expects an (N, C, H, W) batch, got shape {tuple(images.shape)}")
        outs = self._run(images)
        return outs[0] if len(outs) == 1 else outs

    def _run(self, images: torch.Tensor) -> List[torch.Tensor]:
        raise NotImplementedError

    def check_compatible(self, *, classes: Optional[Sequence[str]] = None, in_channels: int = 3,
                         reference: str = "the checkpoint") -> None:
        """Raise ``ValueError`` (naming the file) unless this model takes ``in_channels`` inputs and predicts
        ``classes`` (their number, and their names when the file records them)."""
        fix = "export that checkpoint again with python -m tools.export"
        if self.input_channels is not None and self.input_channels != in_channels:
            raise ValueError(f"{self.source} takes {self.input_channels}-channel inputs but {reference} feeds "
                             f"{in_channels}-channel images; {fix}")
        if classes is None:
            return
        if len(self.output_names) != 1:
            raise ValueError(f"{self.source} has {len(self.output_names)} outputs ({', '.join(self.output_names)}): "
                             f"a backbone, not a segmentation model of {reference}; {fix}")
        if self.output_channels is not None and self.output_channels != len(classes):
            raise ValueError(f"{self.source} predicts {self.output_channels} classes but {reference} has "
                             f"{len(classes)} ({', '.join(list(classes)[:5])}...); {fix}")
        recorded = self.metadata.get("classes")
        if recorded is not None and list(recorded) != list(classes):
            raise ValueError(f"{self.source} was exported for classes {list(recorded)[:5]}, but {reference} has "
                             f"{list(classes)[:5]}; {fix}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source}, precision={self.precision})"


class TorchRunner(Runner):
    """A PyTorch module (eval mode) or a TorchScript model; bf16 is a ``deploy(dtype=torch.bfloat16)`` copy."""

    kind = "torch"

    def __init__(self, module: nn.Module, *, source: str, precision: str = "fp32") -> None:
        names = output_names(module)
        super().__init__(source=source, precision=precision, output_names=names,
                         input_channels=first_conv_channels(module),
                         output_channels=getattr(module, "num_classes", None) if len(names) == 1 else None)
        self.module = module.eval()
        self.dtype = torch.bfloat16 if precision == "bf16" else None

    def _run(self, images: torch.Tensor) -> List[torch.Tensor]:
        with torch.no_grad():
            out = self.module(images.to(self.dtype) if self.dtype is not None else images)
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        return [o.float() for o in outs]


class OnnxRuntimeRunner(Runner):
    """An ONNX file run by ONNX Runtime's CPU provider (fp32, or int8 when the file is quantized)."""

    kind = "onnxruntime"

    def __init__(self, path: Path, *, precision: Optional[str] = None, threads: Optional[int] = None) -> None:
        ort = require("onnxruntime", "the onnxruntime engine")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT's warnings (unused initializers...) are not the user's concern
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail...)
            raise ValueError(f"cannot load {str(path)!r} with ONNX Runtime ({_first_line(err)}); is it a complete "
                             f".onnx file? Export it again with python -m tools.export") from None
        meta = self.session.get_modelmeta().custom_metadata_map  # what add_onnx_metadata recorded
        quantized = onnx_is_quantized(path)
        held = "int8" if quantized else "fp32"
        precision = _resolve_precision(precision, held, path, "onnxruntime")
        if precision == "bf16":
            raise ValueError(f"precision bf16 for {str(path)!r}: ONNX Runtime has no bf16 CPU kernels; run it "
                             f"with --engine openvino --precision bf16 (the same .onnx file works)")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        super().__init__(source=str(path), precision=precision, output_names=[o.name for o in outputs],
                         input_channels=_static(inputs[0].shape, 1),
                         output_channels=_static(outputs[0].shape, 1) if len(outputs) == 1 else None,
                         metadata=_decode_metadata(meta))
        self.input_name = inputs[0].name

    def _run(self, images: torch.Tensor) -> List[torch.Tensor]:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        return [torch.from_numpy(o) for o in self.session.run(None, {self.input_name: x})]


class OpenVinoRunner(Runner):
    """An OpenVINO IR (``.xml``) or ONNX file compiled for OpenVINO's CPU plugin with an explicit precision."""

    kind = "openvino"

    def __init__(self, path: Path, *, precision: Optional[str] = None, threads: Optional[int] = None) -> None:
        ov = require("openvino", "the openvino engine")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as err:  # OpenVINO raises RuntimeError subclasses with multi-line reports
            raise ValueError(f"cannot read {str(path)!r} with OpenVINO ({_first_line(err)}); is it a complete "
                             f"{'IR (.xml with its .bin)' if path.suffix == '.xml' else 'file'}? Export it again "
                             f"with python -m tools.export") from None
        meta = _onnx_metadata(path) if path.suffix.lower() == ".onnx" else _ov_metadata(model)
        held = "int8" if openvino_is_quantized(model) else meta.get("precision", "fp32")
        precision = _resolve_precision(precision, held, path, "openvino")
        if precision == "bf16":
            _check_bf16_cpu("openvino", repr(str(path)))
        config = {
            # int8 files keep their unquantized layers in fp32, as ONNX Runtime runs them.
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(),
        }
        try:
            self.compiled = core.compile_model(model, "CPU", config)
        except Exception as err:
            raise ValueError(f"OpenVINO cannot compile {str(path)!r} for CPU ({_first_line(err)})") from None
        self.request = self.compiled.create_infer_request()
        inp = model.input(0).get_partial_shape()
        outputs = list(model.outputs)
        names = [_ov_name(o, k) for k, o in enumerate(outputs)]
        super().__init__(source=str(path), precision=precision, output_names=names,
                         input_channels=_ov_static(inp, 1),
                         output_channels=_ov_static(outputs[0].get_partial_shape(), 1) if len(outputs) == 1
                         else None, metadata=meta)

    def _run(self, images: torch.Tensor) -> List[torch.Tensor]:
        x = images.detach().to("cpu", torch.float32).contiguous().numpy()
        result = self.request.infer({0: x}, share_inputs=True, share_outputs=False)
        return [torch.from_numpy(np.asarray(result[o])) for o in self.compiled.outputs]


def load_runner(source: Union[str, os.PathLike, nn.Module], *, engine: str = "torch",
                precision: Optional[str] = None, threads: Optional[int] = None, deploy: bool = False,
                device: Union[str, torch.device] = "cpu",
                calibration: Optional[Iterable[torch.Tensor]] = None) -> Runner:
    """Load ``source`` for ``engine`` at ``precision``.

    Args:
        source: a training checkpoint (``best.pt``), an ``nn.Module``, a TorchScript file (``.ts``), an ONNX
            file (``.onnx``) or an OpenVINO IR (``.xml``).
        engine: ``"torch"``, ``"onnxruntime"`` or ``"openvino"``. A checkpoint or module given to ONNX Runtime
            or OpenVINO is exported to ONNX in a temporary folder first (and quantized when
            ``precision="int8"``, on ``calibration``).
        precision: ``"fp32"``, ``"bf16"``, ``"int8"``; ``None``: what the file holds (fp32 for a module).
        threads: intra-op threads of ONNX Runtime / OpenVINO; default ``torch.get_num_threads()``.
        deploy: torch only: run ``backbones.deploy(model)`` (always done for bf16).
        device: torch only: where the model runs.
        calibration: float32 ``(N, C, H, W)`` batches to quantize a module or checkpoint for ``int8``.

    Returns:
        an :class:`Runner`; ``engine(images)`` gives float32 logits ``(N, K, H, W)`` (a list for a backbone).

    Example::

        run = load_runner("runs/r18/best.int8.onnx", engine="openvino")
        logits = run(torch.randn(1, 3, 512, 512))   # (1, K, 512, 512)
    """
    if engine not in RUNTIMES:
        raise ValueError(f"engine must be one of {', '.join(RUNTIMES)}, got {engine!r}")
    if precision is not None and precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if isinstance(source, nn.Module):
        return _from_module(source, source_name=type(source).__name__, engine=engine, precision=precision,
                            threads=threads, deploy=deploy, device=device, calibration=calibration)
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        if engine == "torch":
            raise ValueError(f"{str(path)!r} is an ONNX file: run it with --engine onnxruntime or openvino")
        cls = OnnxRuntimeRunner if engine == "onnxruntime" else OpenVinoRunner
        return cls(path, precision=precision, threads=threads)
    if suffix == ".xml":
        if engine != "openvino":
            raise ValueError(f"{str(path)!r} is an OpenVINO IR: run it with --engine openvino")
        return OpenVinoRunner(path, precision=precision, threads=threads)
    if suffix == ".ts":
        if engine != "torch":
            raise ValueError(f"{str(path)!r} is a TorchScript file: run it with --engine torch")
        if precision not in (None, "fp32"):
            raise ValueError(f"{str(path)!r} is a TorchScript file: it runs in fp32 only, got precision {precision}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated upstream; asked for
                scripted = torch.jit.load(str(path), map_location=device)
        except RuntimeError as err:
            raise ValueError(f"cannot load TorchScript file {str(path)!r} ({_first_line(err)})") from None
        return TorchRunner(scripted, source=str(path))
    from ..tasks import model_from_checkpoint

    model, checkpoint = model_from_checkpoint(path, device=device)
    engine_ = _from_module(model, source_name=str(path), engine=engine, precision=precision, threads=threads,
                           deploy=deploy, device=device, calibration=calibration)
    engine_.metadata.setdefault("classes", list(checkpoint["classes"]))
    return engine_


# The engine a file runs on when --engine is not given.
_DEFAULT_ENGINE = {".onnx": "onnxruntime", ".xml": "openvino"}


def add_runner_args(p: argparse.ArgumentParser) -> None:
    """The ``--engine``, ``--model`` and ``--precision`` flags of ``tools.eval_seg`` and ``tools.predict``."""
    g = p.add_argument_group("engine")
    g.add_argument("--engine", choices=RUNTIMES, default=None,
                   help="what runs the model; unset: onnxruntime for .onnx, openvino for .xml, else torch")
    g.add_argument("--model", default=None, help="an exported file to run (.onnx, .xml, .ts) instead of the "
                                                 "checkpoint's weights; the checkpoint still gives classes and data")
    g.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="unset: what the file holds (fp32 for a checkpoint); bf16: openvino, or torch via deploy()")


def resolve_runtime(args: Mapping[str, Any]) -> str:
    """``--engine``, or when unset the engine that runs the ``--model`` file (torch without one)."""
    model_file = args.get("model")
    return args.get("engine") or _DEFAULT_ENGINE.get(Path(model_file).suffix.lower() if model_file else "", "torch")


def inference_device(args: Mapping[str, Any]) -> str:
    """The ``--device`` to run on: as given for torch; ``--device auto`` means the CPU for the other engines."""
    return "cpu" if args.get("device", "auto") == "auto" and resolve_runtime(args) != "torch" else args["device"]


def load_for_inference(args: Mapping[str, Any], device: torch.device
                       ) -> Tuple[Callable[[Any], Any], Dict[str, Any]]:
    """The model ``tools.eval_seg``/``tools.predict`` run, and the checkpoint (config, classes...), read once.

    Without ``--model``/``--precision`` on torch: the checkpoint's eval-mode module, which ``--amp`` and
    ``--channels-last`` apply to. Otherwise: a :class:`Runner` (a segmentation model or backbone) or a
    :class:`tools.runtime.detectors.DetectorRunner` (a detector), checked against the checkpoint's classes.
    """
    from ..engine.checkpoint import checkpoint_task, load_checkpoint
    from ..tasks import model_of_checkpoint

    model_file, engine, precision = args.get("model"), resolve_runtime(args), args.get("precision")
    checkpoint = load_checkpoint(args["checkpoint"])
    where = repr(str(args["checkpoint"]))
    if engine == "torch" and model_file is None and precision in (None, "fp32"):
        return model_of_checkpoint(checkpoint, where=where).to(device), checkpoint
    if args.get("amp", "none") != "none" or args.get("channels_last"):
        raise ValueError(f"--amp and --channels-last apply to the plain torch model only, not to --engine {engine} "
                         f"{'--model ' + model_file if model_file else ''} --precision {precision}; "
                         f"for bf16 use --precision bf16")
    if engine != "torch" and device.type != "cpu":
        raise ValueError(f"--engine {engine} runs on the CPU; use --device cpu (or auto)")
    classes = list(checkpoint.get("classes") or [])
    if not classes:
        raise ValueError(f"checkpoint {where} records no class names")
    if checkpoint_task(checkpoint) == "detection":
        return _detector_for_inference(model_file, engine, precision, classes, where), checkpoint
    calibration = None
    if precision == "int8" and model_file is None:
        from .quantize import calibration_batches

        calibration = calibration_batches(checkpoint)
    loaded = load_runner(model_file or args["checkpoint"], engine=engine, precision=precision, device=device,
                         calibration=calibration)
    loaded.check_compatible(classes=classes, reference=f"checkpoint {where}")
    return loaded, checkpoint


def _detector_for_inference(model_file: Optional[str], engine: str, precision: Optional[str],
                            classes: List[str], where: str) -> Callable[[Any], Any]:
    """An exported detector of checkpoint ``where``: fp32 ONNX (ONNX Runtime) or TorchScript only."""
    from .detectors import DetectorRunner

    if precision not in (None, "fp32"):
        raise ValueError(f"checkpoint {where} is a detector: detectors run in fp32 only (torchvision's detectors "
                         f"export to fp32 ONNX and TorchScript), got --precision {precision}")
    if model_file is None:
        raise ValueError(f"--engine {engine} needs --model: a detector exported from checkpoint {where} with "
                         f"python -m tools.export --checkpoint {where.strip(chr(39))} --format onnx")
    wanted = {".onnx": "onnxruntime", ".ts": "torch"}.get(Path(model_file).suffix.lower())
    if wanted is None:
        raise ValueError(f"--model {model_file!r}: an exported detector is an .onnx (ONNX Runtime) or .ts "
                         f"(TorchScript) file")
    if engine != wanted:
        raise ValueError(f"--model {model_file!r} runs on --engine {wanted}, not {engine} (detectors export to ONNX "
                         f"for ONNX Runtime and to TorchScript)")
    runner = DetectorRunner(model_file)
    runner.check_compatible(classes=classes, reference=f"checkpoint {where}")
    return runner


def _from_module(model: nn.Module, *, source_name: str, engine: str, precision: Optional[str],
                 threads: Optional[int], deploy: bool, device: Union[str, torch.device],
                 calibration: Optional[Iterable[torch.Tensor]]) -> Runner:
    from backbones import deploy as deploy_model

    precision = precision or "fp32"
    if engine == "torch":
        if precision == "int8":
            raise ValueError(f"precision int8 for {source_name}: int8 runs on onnxruntime or openvino; export it "
                             f"with python -m tools.export --precision int8 and load that file")
        if precision == "bf16":
            if torch.device(device).type == "cpu":
                _check_bf16_cpu("torch", source_name)
            return TorchRunner(deploy_model(model, dtype=torch.bfloat16), source=source_name, precision="bf16")
        return TorchRunner(deploy_model(model) if deploy else model.eval(), source=source_name)
    from .quantize import quantize_onnx

    if precision == "int8" and calibration is None:
        raise ValueError(f"precision int8 for {source_name} needs calibration batches to quantize it")
    with tempfile.TemporaryDirectory(prefix="dense-engine-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_for_runtime(model, str(path))
        if precision == "int8":
            quantized = Path(tmp) / "model.int8.onnx"
            quantize_onnx(path, quantized, calibration)
            path = quantized
        # Both engines read the whole file into memory, so the folder can go once they are built.
        cls = OnnxRuntimeRunner if engine == "onnxruntime" else OpenVinoRunner
        built = cls(path, precision=precision, threads=threads)
    built.source = source_name
    return built


def onnx_is_quantized(path: Union[str, os.PathLike]) -> bool:
    """Whether the ONNX file at ``path`` holds quantized operators (QDQ pairs or integer convolutions)."""
    onnx = require("onnx", "reading ONNX files")
    proto = onnx.load(str(path), load_external_data=False)
    return any(node.op_type in _QUANTIZED_ONNX_OPS for node in proto.graph.node)


def openvino_is_quantized(model: Any) -> bool:
    """Whether an ``openvino.Model`` holds FakeQuantize/FakeConvert operators or 8-bit weights."""
    import openvino as ov

    eight_bit = (ov.Type.i8, ov.Type.u8)
    for op in model.get_ops():
        kind = op.get_type_name()
        if kind in ("FakeQuantize", "FakeConvert"):
            return True
        if kind == "Constant" and op.get_element_type() in eight_bit:
            return True
    return False


def _resolve_precision(asked: Optional[str], held: str, path: Path, engine: str) -> str:
    if asked is None:
        return held
    if held == "int8" and asked != "int8":
        raise ValueError(f"{str(path)!r} is quantized to int8; load it with --precision int8 (or leave it unset), "
                         f"or export the fp32 file for --precision {asked}")
    if asked == "int8" and held != "int8":
        raise ValueError(f"{str(path)!r} is not quantized; export an int8 file with python -m tools.export "
                         f"--precision int8 to run {engine} in int8")
    return asked


def _decode_metadata(props: Dict[str, str]) -> Dict[str, Any]:
    """Our entries of an ONNX file's metadata_props (``dense_backbones.<key>`` -> JSON)."""
    out: Dict[str, Any] = {}
    for key, value in props.items():
        if key.startswith(METADATA_KEY + "."):
            try:
                out[key[len(METADATA_KEY) + 1:]] = json.loads(value)
            except json.JSONDecodeError:
                out[key[len(METADATA_KEY) + 1:]] = value
    return out


def _onnx_metadata(path: Path) -> Dict[str, Any]:
    onnx = require("onnx", "reading ONNX files")
    proto = onnx.load(str(path), load_external_data=False)
    return _decode_metadata({p.key: p.value for p in proto.metadata_props})


def _ov_metadata(model: Any) -> Dict[str, Any]:
    """Our entries of an IR's ``rt_info`` (``dense_backbones/<key>`` -> JSON)."""
    entries = model.get_rt_info()
    if METADATA_KEY not in entries:
        return {}
    return _decode_metadata({f"{METADATA_KEY}.{k}": v.astype(str) for k, v in entries[METADATA_KEY].items()})


def _ov_name(output: Any, index: int) -> str:
    try:
        return output.get_any_name()
    except RuntimeError:  # an output without a tensor name
        return f"output{index}"


def _static(shape: Sequence[Any], dim: int) -> Optional[int]:
    value = shape[dim] if len(shape) > dim else None
    return value if isinstance(value, int) else None


def _ov_static(shape: Any, dim: int) -> Optional[int]:
    if shape.rank.is_dynamic or len(shape) <= dim or shape[dim].is_dynamic:
        return None
    return shape[dim].get_length()


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else type(err).__name__
