"""Fixed ``/proc/cpuinfo`` flag sets of real CPU generations, and a fixture that makes :mod:`backbones.machine`
read one of them instead of this machine's file.

Each entry: the model name and the ``flags`` line as Linux prints it (trimmed of flags unrelated to the
instruction set), with the class and VNNI :func:`backbones.machine.isa_class` / ``has_vnni`` must find.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import pytest

from backbones import machine

_X86 = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
        "syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni pclmulqdq ssse3 "
        "cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave")
_HASWELL_ON = "avx f16c rdrand hypervisor lahf_lm abm fma bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap"
_AVX512_CORE = "avx512f avx512dq avx512cd avx512bw avx512vl"

CPUS = {
    # AMD EPYC Milan (family 25, model 1): this project's AVX2 machine.
    "zen3": ("AMD EPYC 7B13", f"{_X86} {_HASWELL_ON} clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves "
                              f"clzero wbnoinvd arat umip pku ospke vaes vpclmulqdq rdpid fsrm"),
    # AMD EPYC Genoa: AVX-512 with bf16 and VNNI (Zen 5 adds avx_vnni and avx512_vp2intersect).
    "zen4": ("AMD EPYC 9654 96-Core Processor",
             f"{_X86} {_HASWELL_ON} {_AVX512_CORE} avx512ifma clflushopt clwb sha_ni xsaveopt xsavec avx512_bf16 "
             f"clzero avx512vbmi umip pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg "
             f"avx512_vpopcntdq rdpid fsrm"),
    "zen5": ("AMD EPYC 9755 128-Core Processor",
             f"{_X86} {_HASWELL_ON} {_AVX512_CORE} avx512ifma clflushopt clwb sha_ni avx_vnni avx512_bf16 "
             f"avx512vbmi avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg avx512_vpopcntdq "
             f"avx512_vp2intersect movdiri movdir64b"),
    # Intel Skylake-SP: AVX-512 without bf16 or VNNI.
    "skylake_x": ("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz",
                  f"{_X86} {_HASWELL_ON} {_AVX512_CORE} mpx clflushopt clwb intel_pt xsaveopt xsavec xgetbv1 "
                  f"xsaves pku ospke md_clear flush_l1d"),
    # Intel Sapphire Rapids: AMX tiles with bf16 and int8, AVX-512 bf16/fp16, both VNNIs.
    "sapphire_rapids": ("Intel(R) Xeon(R) Platinum 8480+",
                        f"{_X86} {_HASWELL_ON} {_AVX512_CORE} avx512ifma clflushopt clwb sha_ni avx_vnni "
                        f"avx512_bf16 wbnoinvd avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes "
                        f"vpclmulqdq avx512_vnni avx512_bitalg tme avx512_vpopcntdq la57 rdpid movdiri "
                        f"movdir64b serialize tsxldtrk amx_bf16 avx512_fp16 amx_tile amx_int8"),
    # Intel Sandy Bridge: AVX without AVX2 or FMA.
    "avx_only": ("Intel(R) Core(TM) i7-2600 CPU @ 3.40GHz", f"{_X86} avx lahf_lm epb pti tpr_shadow vnmi"),
    # Intel Alder Lake: AVX2 with AVX-VNNI, no AVX-512.
    "alder_lake": ("12th Gen Intel(R) Core(TM) i7-12700", f"{_X86} {_HASWELL_ON} clflushopt clwb sha_ni umip "
                                                            f"pku ospke waitpkg gfni vaes vpclmulqdq avx_vnni"),
}

EXPECTED = {  # name: (class, VNNI)
    "zen3": ("avx2", False), "zen4": ("avx512_bf16", True), "zen5": ("avx512_bf16", True),
    "skylake_x": ("avx512", False), "sapphire_rapids": ("amx", True), "avx_only": ("baseline", False),
    "alder_lake": ("avx2", True),
}


def cpuinfo_text(name: str, flags: str, processors: int = 2) -> str:
    """``/proc/cpuinfo`` as Linux writes it: one block per logical processor."""
    block = "processor\t: {i}\nmodel name\t: {name}\nflags\t\t: {flags}\nbogomips\t: 4899.99\n\n"
    return "".join(block.format(i=i, name=name, flags=flags) for i in range(processors))


def forget_machine() -> None:
    """Drop what :mod:`backbones.machine` cached, so the next call reads the (possibly patched) file again."""
    machine._read_cpu.cache_clear()
    machine.machine_info.cache_clear()


@pytest.fixture
def pretend_cpu(monkeypatch, tmp_path) -> Iterator[Callable[[str], Path]]:
    """``pretend_cpu("zen4")`` (a key of :data:`CPUS`, or raw cpuinfo text): :mod:`backbones.machine` reads that
    file from then on in the test; this machine's is read again afterwards."""
    def pretend(cpu: str) -> Path:
        path = tmp_path / "cpuinfo"
        path.write_text(cpuinfo_text(*CPUS[cpu]) if cpu in CPUS else cpu)
        monkeypatch.setattr(machine, "CPUINFO", str(path))
        forget_machine()
        return path

    yield pretend
    forget_machine()
