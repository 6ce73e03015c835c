"""``--amp auto``: bf16 + channels_last where the device runs bf16 natively, fp32 elsewhere; explicit modes
pass through and are checked."""

from __future__ import annotations

import pytest
import torch

from backbones import machine
from tools.engine import precision
from tools.engine.precision import resolve_amp

from tests.backbones.cpus import CPUS, EXPECTED, cpuinfo_text, forget_machine, pretend_cpu  # noqa: F401

CPU, CUDA = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize("avx512_bf16, amx, mkldnn, expected", [
    (True, False, True, ("bf16", True)),     # e.g. Zen 4, Cooper Lake
    (False, True, True, ("bf16", True)),     # Sapphire Rapids and later
    (False, False, True, ("none", False)),   # AVX2 or plain AVX-512: bf16 would be emulated
    (True, True, False, ("none", False)),    # a build without oneDNN
])
def test_auto_on_cpu_follows_the_bf16_instructions(monkeypatch, pretend_cpu, avx512_bf16, amx, mkldnn, expected):
    # A Skylake-X's flags plus the bf16 instructions the case names, as /proc/cpuinfo would list them.
    name, flags = CPUS["skylake_x"]
    flags += " avx512_bf16" * avx512_bf16 + " amx_tile amx_bf16" * amx
    pretend_cpu(cpuinfo_text(name, flags))
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: mkldnn)
    amp, channels_last, reason = resolve_amp("auto", None, CPU)
    assert (amp, channels_last) == expected
    assert reason.startswith("--amp auto: this CPU ") and ("has" in reason) == (amp == "bf16")


def test_auto_on_cpu_without_the_probes_is_fp32(monkeypatch, pretend_cpu, tmp_path):
    pretend_cpu("zen4")  # restores this machine's answers afterwards
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "missing"))  # no flags to read either
    forget_machine()
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    assert resolve_amp("auto", None, CPU)[:2] == ("none", False)


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_auto_on_cpu_resolves_as_the_class_says(pretend_cpu, cpu):
    pretend_cpu(cpu)
    native = EXPECTED[cpu][0] in machine.BF16_CLASSES
    assert resolve_amp("auto", None, CPU) == (("bf16", True, "--amp auto: this CPU has native bf16") if native
                                              else ("none", False, "--amp auto: this CPU lacks native bf16"))


@pytest.mark.parametrize("cpu, lacking", [("zen3", "class avx2) has no native bf16 (no AVX-512 BF16, no AMX)"),
                                          ("skylake_x", "class avx512) has no native bf16 (AVX-512 without")])
def test_explicit_bf16_on_a_cpu_without_it_is_one_warning_line(pretend_cpu, capsys, cpu, lacking):
    pretend_cpu(cpu)
    assert resolve_amp("bf16", None, CPU) == ("bf16", True, "")  # kept: it trains, only slower
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("warning: --amp bf16: this CPU (") and lacking in captured.err
    assert "--amp none (or auto, which picks fp32 here) is faster" in captured.err


def test_no_warning_where_bf16_is_native_or_not_asked_for(pretend_cpu, capsys):
    pretend_cpu("zen4")
    assert resolve_amp("bf16", None, CPU) == ("bf16", True, "")
    pretend_cpu("zen3")
    assert resolve_amp("none", None, CPU) == ("none", False, "")
    assert resolve_amp("auto", None, CPU)[0] == "none"
    assert capsys.readouterr().err == ""


def test_explicit_bf16_on_an_old_gpu_warns(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    assert resolve_amp("bf16", None, CUDA) == ("bf16", True, "")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Tesla T4 (compute capability 7.5) has no native bf16" in err
    assert "--amp fp16 is faster" in err


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
