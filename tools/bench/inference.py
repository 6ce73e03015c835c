"""Inference timing: our eager model, its deploy() copies, the peers and a matrix product, round-robin."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from backbones import deploy
from backbones.winograd import release_workspace

from .models import build, check_size
from .peers import PEERS, PeerUnavailable, build_peer, same_output
from .profiling import DTYPES, MIB, conv_flops, matmul_flops, peak_tensor_memory, time_round_robin

__all__ = ["run_inference"]


def run_inference(spec: str, *, size: Tuple[int, int], batch: int, dtypes: Sequence[str], output_stride: int,
                  device: torch.device, reps: int, warmup: int, peers: Sequence[str] = PEERS,
                  ablation: bool = False) -> Dict[str, Any]:
    """Time ``spec`` eager and deployed (each dtype), its peers and a matrix product; see the module doc.

    ``ablation`` adds fp32 deploy variants without packed weights, without channels_last, and without Winograd
    (``deploy(winograd=False)``), to show what each step of :func:`backbones.deploy` contributes."""
    torch.manual_seed(0)
    model = build(spec, output_stride=output_stride).to(device).eval()
    check_size(model, spec, *size)
    shape = (batch, 3, *size)
    x = torch.randn(shape, device=device)
    flops = conv_flops(model, shape)
    candidates: Dict[str, Callable[[], Any]] = {"dense eager": lambda: model(x)}
    comparable: Dict[str, nn.Module] = {"dense eager": model}
    for name in dtypes:
        dt = DTYPES[name]
        fast = deploy(model, dtype=None if dt == torch.float32 else dt)
        candidates[f"dense deploy {name}"] = lambda fast=fast, dt=dt: fast(x.to(dt))
        if dt == torch.float32:
            comparable[f"dense deploy {name}"] = fast
    if ablation:
        for label, kwargs in (("dense deploy fp32 NCHW", dict(channels_last=False)),
                              ("dense deploy fp32 unpacked", dict(pack_weights=False)),
                              ("dense deploy fp32 direct", dict(winograd=False))):
            variant = deploy(model, **kwargs)
            candidates[label] = lambda variant=variant: variant(x)
            comparable[label] = variant
    notes: List[str] = []
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
    mm_flops: Dict[str, int] = {}
    for name in dict.fromkeys(["fp32", *dtypes]):
        fn, mm_flops[name] = matmul_flops(2048, dtype=DTYPES[name], device=device)
        candidates[f"matmul 2048 {name}"] = fn

    with torch.inference_mode():
        timings = time_round_robin(candidates, reps=reps, warmup=warmup, device=device)
        memory = {}
        for name, fn in candidates.items():
            if not name.startswith("matmul"):
                release_workspace()  # so that Winograd's scratch buffers are created, and counted, in the call
                memory[name] = peak_tensor_memory(fn)
    ref_names = peer_names or ["dense eager"]
    ref = min(ref_names, key=lambda n: timings[n].median)
    rows = []
    for name, t in timings.items():
        is_mm = name.startswith("matmul")
        dtype_name = next((d for d in DTYPES if f" {d}" in name), "fp32")
        work = mm_flops[dtype_name] if is_mm else flops
        rate = work / t.median / 1e9
        mm_rate = mm_flops[dtype_name] / timings[f"matmul 2048 {dtype_name}"].median / 1e9
        rows.append({"candidate": name, "median_ms": 1e3 * t.median, "min_ms": 1e3 * t.min, "max_ms": 1e3 * t.max,
                     "speedup": None if is_mm else timings[ref].median / t.median, "gflops": rate,
                     "mm_fraction": None if is_mm else rate / mm_rate,
                     "peak_mib": None if is_mm else memory[name] / MIB})
    return {"model": spec, "mode": "infer", "input_shape": list(shape), "output_stride": output_stride,
            "conv_gflop": flops / 1e9, "reference": ref, "rows": rows, "notes": notes}
