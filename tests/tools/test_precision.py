"""``--amp auto``: bf16 + channels_last where the device runs bf16 natively, fp32 elsewhere; explicit modes
pass through and are checked."""

from __future__ import annotations

import pytest
import torch

from tools.engine import precision
from tools.engine.precision import resolve_amp

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("avx512_bf16, amx, mkldnn, expected", [
    (True, False, True, ("bf16", True)),     # e.g. Zen 4, Cooper Lake
    (False, True, True, ("bf16", True)),     # Sapphire Rapids and later
    (False, False, True, ("none", False)),   # AVX2 or plain AVX-512: bf16 would be emulated
    (True, True, False, ("none", False)),    # a build without oneDNN
])
def test_auto_on_cpu_follows_the_bf16_instructions(monkeypatch, avx512_bf16, amx, mkldnn, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)
    amp, channels_last, reason = resolve_amp("auto", None, CPU)
    assert (amp, channels_last) == expected
    assert reason.startswith("--amp auto: this CPU ") and ("has" in reason) == (amp == "bf16")


def test_auto_on_cpu_without_the_probes_is_fp32(monkeypatch):
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert resolve_amp("auto", None, CPU)[:2] == ("none", False)


@pytest.mark.parametrize("capability, expected", [((8, 0), "bf16"), ((9, 0), "bf16"), ((7, 5), "none")])
def test_auto_on_cuda_follows_the_compute_capability(monkeypatch, capability, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    amp, channels_last, reason = resolve_amp("auto", None, CUDA)
    assert (amp, channels_last) == (expected, expected == "bf16") and "a GPU" in reason


def test_explicit_choices_pass_through(monkeypatch):
    monkeypatch.setattr(precision, "fast_bf16", lambda device: pytest.fail("an explicit mode must not probe"))
    assert resolve_amp("bf16", None, CPU) == ("bf16", True, "")
    assert resolve_amp("none", None, CPU) == ("none", False, "")
    assert resolve_amp("none", True, CPU) == ("none", True, "")
    assert resolve_amp("bf16", False, CPU) == ("bf16", False, "")
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        resolve_amp("fp16", None, CPU)
    with pytest.raises(ValueError, match="amp must be one of"):
        resolve_amp("fp8", None, CPU)
