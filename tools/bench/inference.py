"""Inference timing, round-robin: our eager model, its deploy() copies, the peers, the model on ONNX Runtime and
OpenVINO, and the matrix products that give the machine's peak per precision."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch

from backbones import deploy
from backbones.machine import machine_info
from backbones.winograd import release_workspace

from .runtimes import runtime_candidates
from .models import build, check_size
from .peak import gemm_precision, peak_gemms, peak_rates
from .peers import PEERS, PeerUnavailable, build_peer, same_output
from .profiling import DTYPES, MIB, conv_flops, peak_tensor_memory, time_round_robin

__all__ = ["run_inference"]


def run_inference(spec: str, *, size: Tuple[int, int], batch: int, precisions: Sequence[str], output_stride: int,
                  device: torch.device, reps: int, warmup: int, peers: Sequence[str] = PEERS,
                  engines: Sequence[str] = ("torch",), ablation: bool = False, compile: bool = False
                  ) -> Dict[str, Any]:
    """Time ``spec`` eager, deployed and on each engine in each precision, its peers and the peak products.

    ``engines``: ``"torch"`` adds a ``deploy()`` copy per precision (fp32, bf16, fp16 on CUDA); ``"onnxruntime"``
    and ``"openvino"`` run the model exported to ONNX (fp32, bf16 on OpenVINO, int8 quantized once; see
    :mod:`tools.bench.runtimes`). ``ablation`` adds fp32 deploy variants without packed weights, without
    channels_last, without Winograd (``winograd=False``) and without ReLU/addition fusion (``fuse=False``), to
    show what each step of :func:`backbones.deploy` contributes. ``compile`` adds, per torch precision,
    ``torch.compile`` (Inductor, with freezing) of the deployed model on plain convolutions (``pack_weights=False``:
    Inductor packs and fuses them itself), compiled before timing. Each row's "fraction of peak" divides its rate
    by the fastest matrix product of its precision in the run (:mod:`tools.bench.peak`)."""
    torch.manual_seed(0)
    model = build(spec, output_stride=output_stride).to(device).eval()
    check_size(model, spec, *size)
    shape = (batch, 3, *size)
    x = torch.randn(shape, device=device)
    flops = conv_flops(model, shape)
    notes: List[str] = []
    candidates: Dict[str, Callable[[], Any]] = {"dense eager": lambda: model(x)}
    comparable: Dict[str, Callable[[torch.Tensor], Any]] = {"dense eager": model}
    if "torch" in engines:
        for name in precisions:
            if name not in DTYPES:
                notes.append(f"dense deploy {name}: skipped, torch runs int8 through --engines onnxruntime,openvino")
                continue
            dt = DTYPES[name]
            try:
                fast = deploy(model, dtype=None if dt == torch.float32 else dt)
            except ValueError as err:  # a precision this device cannot run (bf16 on an AVX2 CPU): a note, not a stop
                notes.append(f"dense deploy {name}: skipped, {err}")
                continue
            candidates[f"dense deploy {name}"] = lambda fast=fast, dt=dt: fast(x.to(dt))
            if dt == torch.float32:
                comparable[f"dense deploy {name}"] = fast
            if compile:
                compiled = torch.compile(deploy(model, dtype=None if dt == torch.float32 else dt, pack_weights=False),
                                         options={"freezing": True})
                with torch.no_grad():
                    compiled(x.to(dt))  # compiles now, not inside the timed rounds
                candidates[f"dense deploy {name} compiled"] = lambda compiled=compiled, dt=dt: compiled(x.to(dt))
    if ablation:
        for label, kwargs in (("dense deploy fp32 NCHW", dict(channels_last=False)),
                              ("dense deploy fp32 unpacked", dict(pack_weights=False)),
                              ("dense deploy fp32 direct", dict(winograd=False)),
                              ("dense deploy fp32 unfused", dict(fuse=False))):
            variant = deploy(model, **kwargs)
            candidates[label] = lambda variant=variant: variant(x)
            comparable[label] = variant
    if device.type == "cpu":
        for label, run in runtime_candidates(model, engines=engines, precisions=precisions,
                                            threads=torch.get_num_threads(), notes=notes).items():
            candidates[label] = lambda run=run: run(x)
            if label.endswith(" fp32"):
                comparable[label] = run
    elif any(e != "torch" for e in engines):
        notes.append("onnxruntime/openvino: skipped, they run on the CPU (--device cpu)")
    peer_names: List[str] = []
    if "+" not in spec:
        state = model.state_dict()
        for kind in peers:
            try:
                peer = build_peer(kind, spec, output_stride=output_stride, state_dict=state).to(device)
            except PeerUnavailable as err:
                notes.append(f"{kind}: skipped, {err}")
                continue
            label = {"torchvision": "torchvision ILG", "timm": "timm features_only", "smp": "smp encoder"}[kind]
            candidates[label] = lambda peer=peer: peer(x)
            comparable[label] = peer
            peer_names.append(label)
    check = torch.randn(1, 3, 64, 96, device=device)
    for name, err in same_output(comparable, check):
        if err > 1e-3:
            notes.append(f"{name}: output differs from dense eager (relative error {err:.1e}); not the same network")
    gemm_flops: Dict[str, int] = {}
    row_precisions = ["fp32"] + [_precision(n) for n in candidates]
    for label, fn, work in peak_gemms(row_precisions, device=device):
        candidates[label] = fn
        gemm_flops[label] = work

    with torch.inference_mode():
        timings = time_round_robin(candidates, reps=reps, warmup=warmup, device=device)
        memory = {}
        for name, fn in candidates.items():
            if name.startswith("dense") or name in peer_names:  # engines allocate outside torch: not counted
                release_workspace()  # so that Winograd's scratch buffers are created, and counted, in the call
                memory[name] = peak_tensor_memory(fn)
    rates = {name: gemm_flops.get(name, flops) / t.median for name, t in timings.items()}
    peaks = peak_rates({name: rate for name, rate in rates.items() if name in gemm_flops})
    ref_names = peer_names or ["dense eager"]
    ref = min(ref_names, key=lambda n: timings[n].median)
    rows = []
    for name, t in timings.items():
        is_gemm = name in gemm_flops
        peak = peaks.get(gemm_precision(name) if is_gemm else _precision(name))
        rows.append({"candidate": name, "median_ms": 1e3 * t.median, "min_ms": 1e3 * t.min, "max_ms": 1e3 * t.max,
                     "speedup": None if is_gemm else timings[ref].median / t.median, "gflops": rates[name] / 1e9,
                     "peak_fraction": None if peak is None else rates[name] / peak[0],
                     "peak_mib": memory[name] / MIB if name in memory else None})
    return {"model": spec, "mode": "infer", "machine": machine_info().describe(), "input_shape": list(shape),
            "output_stride": output_stride, "conv_gflop": flops / 1e9, "reference": ref, "rows": rows, "notes": notes,
            "peaks": {p: {"gflops": rate / 1e9, "gemm": label} for p, (rate, label) in peaks.items()}}


def _precision(candidate: str) -> str:
    """The precision a candidate computes in: the last word of ``"openvino bf16"``/``"dense deploy bf16"``;
    fp32 for eager models, peers and ablation variants."""
    words = candidate.split()
    return next((w for w in reversed(words) if w in ("fp32", "bf16", "fp16", "int8")), "fp32")
