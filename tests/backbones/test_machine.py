"""backbones.machine: the CPU class and VNNI of fixed /proc/cpuinfo flag sets, the cached one-line description,
the fallback to PyTorch's probes without /proc/cpuinfo, CUDA fields, and the bf16 answers built on the class."""

from __future__ import annotations

import pytest
import torch

from backbones import machine
from backbones.machine import (BF16_CLASSES, ISA_CLASSES, has_vnni, isa_class, lacks_native_bf16, machine_info,
                               native_bf16, parse_cpuinfo)

from tests.backbones.cpus import CPUS, EXPECTED, cpuinfo_text, forget_machine, pretend_cpu  # noqa: F401


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("cpu", sorted(CPUS))
def test_flag_sets_classify_as_their_generation(cpu):
    name, flags = parse_cpuinfo(cpuinfo_text(*CPUS[cpu]))
    assert name == CPUS[cpu][0] and flags == frozenset(CPUS[cpu][1].split())
    assert (isa_class(flags), has_vnni(flags)) == EXPECTED[cpu]


def test_every_class_is_reached():
    assert set(ISA_CLASSES) == {cls for cls, _ in EXPECTED.values()}
    assert set(BF16_CLASSES) < set(ISA_CLASSES)
    # a partial AVX-512 (Knights Landing's F + CD, no BW/VL/DQ) is not the class PyTorch's AVX512 kernels need
    assert isa_class({"avx", "avx2", "fma", "avx512f", "avx512cd"}) == "avx2"
    assert isa_class({"avx2"}) == "baseline"  # AVX2 without FMA: not what the AVX2 kernels are built for
    assert isa_class(set()) == "baseline" and not has_vnni(set())


def test_description_is_one_cached_line(pretend_cpu, no_cuda):
    pretend_cpu("zen3")
    info = machine_info()
    assert machine_info() is info, "found once per process"
    assert (info.cpu, info.isa, info.vnni, info.flags, info.flags_source) == (
        "AMD EPYC 7B13", "avx2", False, ("avx", "avx2", "fma"), machine.CPUINFO)
    threads = torch.get_num_threads()
    assert info.describe() == (f"AMD EPYC 7B13 (avx2: AVX2+FMA, no AVX-512, no bf16, no VNNI), {threads} "
                               f"thread{'s' * (threads != 1)}, torch {torch.__version__.split('+')[0]}")


@pytest.mark.parametrize("cpu, summary", [
    ("zen4", "avx512_bf16: AVX-512, AVX-512 BF16, AVX-512 VNNI"),
    ("skylake_x", "avx512: AVX-512, no bf16, no VNNI"),
    ("sapphire_rapids", "amx: AVX-512, AVX-512 BF16 + AMX, AVX-512 VNNI"),
    ("avx_only", "baseline: AVX, no AVX2, no bf16, no VNNI"),
    ("alder_lake", "avx2: AVX2+FMA, no AVX-512, no bf16, AVX-VNNI"),
])
def test_summary_says_what_the_class_has_and_lacks(pretend_cpu, no_cuda, cpu, summary):
    pretend_cpu(cpu)
    info = machine_info()
    assert info.isa_summary() == summary and f"({summary})" in info.describe() and "\n" not in info.describe()
    assert info.bf16 == (info.isa in BF16_CLASSES)


def test_cuda_fields_absent_without_cuda(pretend_cpu, no_cuda):
    pretend_cpu("zen3")
    info = machine_info()
    assert info.cuda_device is None and info.cuda_capability is None and "CUDA" not in info.describe()
    record = info.to_dict()
    assert record["cuda_device"] is None and record["cuda_capability"] is None and record["isa"] == "avx2"


def test_cuda_fields_with_a_gpu(pretend_cpu, monkeypatch):
    pretend_cpu("sapphire_rapids")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    info = machine_info()
    assert (info.cuda_device, info.cuda_capability) == ("NVIDIA H200", (9, 0))
    assert info.describe().endswith(", CUDA NVIDIA H200 (compute capability 9.0)")
    assert info.to_dict()["cuda_capability"] == [9, 0]


def test_without_proc_cpuinfo_the_torch_probes_decide(pretend_cpu, monkeypatch, tmp_path, no_cuda):
    pretend_cpu("zen3")  # restores this machine's answers afterwards
    monkeypatch.setattr(machine, "CPUINFO", str(tmp_path / "missing"))  # macOS, Windows
    for probe, value in (("_is_avx2_supported", True), ("_is_avx512_supported", True),
                         ("_is_avx512_bf16_supported", True), ("_is_amx_tile_supported", False),
                         ("_is_vnni_supported", True)):
        monkeypatch.setattr(torch.cpu, probe, lambda value=value: value, raising=False)
    forget_machine()
    info = machine_info()
    assert (info.isa, info.vnni, info.flags_source) == ("avx512_bf16", True, "torch") and info.cpu


def test_a_cpuinfo_without_flags_falls_back_to_the_probes(pretend_cpu, monkeypatch, no_cuda):
    for probe in ("_is_avx2_supported", "_is_avx512_supported", "_is_avx512_bf16_supported",
                  "_is_amx_tile_supported", "_is_vnni_supported"):
        monkeypatch.delattr(torch.cpu, probe, raising=False)  # a torch without the probes: "no"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    pretend_cpu("processor\t: 0\nBogoMIPS\t: 243.75\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32\n")
    info = machine_info()
    assert (info.isa, info.vnni, info.flags_source, info.flags) == ("baseline", False, "torch", ())


@pytest.mark.parametrize("cpu, native, lacking", [
    ("zen3", False, "this CPU (AMD EPYC 7B13, class avx2) has no native bf16 (no AVX-512 BF16, no AMX)"),
    ("avx_only", False, "class baseline) has no native bf16 (no AVX-512 BF16, no AMX)"),
    ("skylake_x", False, "class avx512) has no native bf16 (AVX-512 without its BF16 extension, no AMX)"),
    ("zen4", True, ""), ("sapphire_rapids", True, ""),
])
def test_native_bf16_follows_the_class(pretend_cpu, cpu, native, lacking):
    pretend_cpu(cpu)
    assert native_bf16("cpu") is native and native_bf16(torch.device("cpu")) is native
    assert lacks_native_bf16().endswith(lacking) and bool(lacks_native_bf16()) is not native


def test_native_bf16_needs_onednn_for_torch_only(pretend_cpu, monkeypatch):
    pretend_cpu("zen4")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert not native_bf16("cpu") and "this PyTorch build has no oneDNN" in lacks_native_bf16()
    assert lacks_native_bf16(onednn=False) == ""  # OpenVINO brings its own kernels


@pytest.mark.parametrize("capability, native", [((8, 0), True), ((9, 0), True), ((7, 5), False)])
def test_native_bf16_on_cuda_follows_the_compute_capability(monkeypatch, capability, native):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert native_bf16(torch.device("cuda", 0)) is native
