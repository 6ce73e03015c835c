"""What this machine computes fast: the CPU's instruction-set class, whether it has VNNI, and the CUDA device.

The class is the one answer the rest of the project asks: ``--amp auto`` (``tools.engine.precision``), whether
:func:`backbones.deploy` and the inference engines accept bf16, deploy's Winograd channel floor
(:func:`backbones.winograd.min_channels`), and the line on top of every benchmark table. Classes, from the
oldest CPUs to the newest:

- ``"baseline"``: no AVX2 (an older x86 CPU, or another architecture): nothing this project tunes for;
- ``"avx2"``: AVX2 and FMA (most laptops, desktops and cloud VMs);
- ``"avx512"``: AVX-512 (F, BW, VL, DQ: what PyTorch's and oneDNN's AVX-512 kernels need) without bf16;
- ``"avx512_bf16"``: AVX-512 with its bf16 dot products (``avx512_bf16``): bf16 runs natively;
- ``"amx"``: AVX-512 with AMX tiles and their bf16 products (``amx_tile`` + ``amx_bf16``).

VNNI (int8 dot products, ``avx512_vnni`` or ``avx_vnni``) is reported beside the class: it is what makes int8
inference fast, and it exists in the avx2 class too (``avx_vnni``).

The flags come from the kernel's list (the ``flags`` line of ``/proc/cpuinfo``, which lists only what the
kernel lets programs use); where that file does not exist, from PyTorch's own CPU probes. :func:`isa_class` and
:func:`has_vnni` are pure functions of a flag set, so any CPU can be classified from its flags.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import asdict, dataclass
from typing import Any, Dict, FrozenSet, Iterable, Optional, Tuple, Union

import torch

__all__ = ["ISA_CLASSES", "BF16_CLASSES", "CPUINFO", "MachineInfo", "isa_class", "has_vnni", "parse_cpuinfo",
           "cpu_flags", "cpu_name", "cpu_class", "machine_info", "native_bf16", "lacks_native_bf16"]

ISA_CLASSES = ("baseline", "avx2", "avx512", "avx512_bf16", "amx")
# The classes whose CPUs compute bf16 natively; elsewhere oneDNN emulates bf16, slower than fp32.
BF16_CLASSES = ("avx512_bf16", "amx")
CPUINFO = "/proc/cpuinfo"

# The AVX-512 subsets PyTorch's AVX512 kernels and oneDNN's avx512_core kernels require (Knights Landing's
# AVX-512F alone does not qualify).
_AVX512 = frozenset({"avx512f", "avx512bw", "avx512vl", "avx512dq"})
_VNNI = frozenset({"avx512_vnni", "avx_vnni"})
# The flags a report keeps: those that decide the class, VNNI, and the newer extensions worth knowing about.
_REPORTED = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "amx_fp16")


def isa_class(flags: Iterable[str]) -> str:
    """The instruction-set class (one of :data:`ISA_CLASSES`) of a CPU with these ``/proc/cpuinfo`` flags.

    Example::

        isa_class({"avx", "avx2", "fma"})                       # "avx2"
        isa_class({"avx2", "fma", *AVX512, "avx512_bf16"})      # "avx512_bf16"
    """
    flags = frozenset(flags)
    if not _AVX512 <= flags:
        return "avx2" if {"avx2", "fma"} <= flags else "baseline"
    if {"amx_tile", "amx_bf16"} <= flags:
        return "amx"
    return "avx512_bf16" if "avx512_bf16" in flags else "avx512"


def has_vnni(flags: Iterable[str]) -> bool:
    """Whether a CPU with these flags has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI)."""
    return bool(_VNNI & frozenset(flags))


def parse_cpuinfo(text: str) -> Tuple[Optional[str], FrozenSet[str]]:
    """``(model name, flags)`` of the first processor in ``/proc/cpuinfo``-style ``text`` (``None`` and an empty
    set for fields it does not have, as on CPUs whose kernel lists ``Features`` instead of ``flags``)."""
    name: Optional[str] = None
    flags: Optional[FrozenSet[str]] = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "model name" and name is None:
            name = value.strip() or None
        elif key == "flags" and flags is None:
            flags = frozenset(value.split())
        if name is not None and flags is not None:
            break
    return name, flags or frozenset()


def _torch_flags() -> FrozenSet[str]:
    """The flags PyTorch's CPU probes vouch for (where there is no ``/proc/cpuinfo``); a missing probe is "no"."""
    def probe(name: str) -> bool:
        fn = getattr(torch.cpu, name, None)
        try:
            return bool(fn()) if fn is not None else False
        except RuntimeError:
            return False

    capability = torch.backends.cpu.get_cpu_capability()
    flags = set()
    if probe("_is_avx2_supported") or capability in ("AVX2", "AVX512"):
        flags |= {"avx", "avx2", "fma"}
    if probe("_is_avx512_supported") or capability == "AVX512":
        flags |= _AVX512
    if probe("_is_avx512_bf16_supported"):
        flags.add("avx512_bf16")
    if probe("_is_amx_tile_supported"):
        flags |= {"amx_tile", "amx_bf16"}
    if probe("_is_vnni_supported"):
        flags.add("avx512_vnni" if _AVX512 <= flags else "avx_vnni")
    return frozenset(flags)


@functools.lru_cache(maxsize=None)
def _read_cpu() -> Tuple[str, FrozenSet[str], str]:
    """``(model name, flags, where the flags came from)``, read once per process."""
    name, flags, source = None, frozenset(), "torch"
    try:
        with open(CPUINFO) as f:
            name, flags = parse_cpuinfo(f.read())
    except OSError:
        pass
    if flags:
        source = CPUINFO
    else:
        flags = _torch_flags()
    return name or platform.processor() or platform.machine() or "unknown CPU", flags, source


def cpu_flags() -> FrozenSet[str]:
    """This CPU's flags (kernel names: ``avx2``, ``avx512_bf16``, ``amx_tile``...), read once per process."""
    return _read_cpu()[1]


def cpu_name() -> str:
    """This CPU's model name (``/proc/cpuinfo``'s ``model name``, else what :mod:`platform` reports)."""
    return _read_cpu()[0]


def cpu_class() -> str:
    """This CPU's instruction-set class (:func:`isa_class` of :func:`cpu_flags`); touches no CUDA state."""
    return isa_class(cpu_flags())


def lacks_native_bf16(*, onednn: bool = True) -> str:
    """Why bf16 does not run natively on this CPU, as a clause for a message; ``""`` where it does.

    ``onednn``: also require PyTorch's oneDNN (what PyTorch's CPU bf16 convolutions run on; OpenVINO brings its
    own). Example: ``"this CPU (AMD EPYC, class avx2) has no native bf16 (no AVX-512 BF16, no AMX)"``.
    """
    isa = cpu_class()
    if isa not in BF16_CLASSES:
        what = ("AVX-512 without its BF16 extension, no AMX" if isa == "avx512" else "no AVX-512 BF16, no AMX")
        return f"this CPU ({cpu_name()}, class {isa}) has no native bf16 ({what})"
    if onednn and not torch.backends.mkldnn.is_available():
        return f"this PyTorch build has no oneDNN, so no native bf16 on this CPU ({cpu_name()}, class {isa})"
    return ""


def native_bf16(device: Union[str, torch.device] = "cpu") -> bool:
    """Whether PyTorch computes bf16 natively on ``device``: a CPU of a :data:`BF16_CLASSES` class with oneDNN,
    or a CUDA GPU of compute capability 8.0 or later (Ampere on). Elsewhere bf16 is emulated, slower than fp32.

    The CUDA capability is asked at each call (of ``device``'s GPU); the CPU's class is read once per process.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type == "cpu":
        return not lacks_native_bf16()
    return False


@dataclass(frozen=True)
class MachineInfo:
    """The machine a process runs on, as :func:`machine_info` found it.

    Attributes: ``cpu`` (model name), ``isa`` (the class, one of :data:`ISA_CLASSES`), ``vnni``, ``flags`` (the
    instruction-set flags that matter here, sorted), ``flags_source`` (``"/proc/cpuinfo"`` or ``"torch"``),
    ``cpus`` (logical CPUs), ``torch`` (its version), ``onednn`` (PyTorch built with oneDNN), and
    ``cuda_device`` / ``cuda_capability`` (the current CUDA device's name and ``(major, minor)`` compute
    capability; ``None`` without CUDA).
    """

    cpu: str
    isa: str
    vnni: bool
    flags: Tuple[str, ...]
    flags_source: str
    cpus: int
    torch: str
    onednn: bool
    cuda_device: Optional[str] = None
    cuda_capability: Optional[Tuple[int, int]] = None

    @property
    def bf16(self) -> bool:
        """Whether PyTorch computes bf16 natively on this CPU (the class has bf16 instructions, and oneDNN)."""
        return self.isa in BF16_CLASSES and self.onednn

    def isa_summary(self) -> str:
        """The class and what it has and lacks: ``"avx2: AVX2+FMA, no AVX-512, no bf16, no VNNI"``."""
        flags = set(self.flags)
        if self.isa == "baseline":
            have = ["AVX, no AVX2" if "avx" in flags else "no AVX2"]
        elif self.isa == "avx2":
            have = ["AVX2+FMA", "no AVX-512"]
        else:
            have = ["AVX-512"]
        if self.isa in BF16_CLASSES:
            have.append("AVX-512 BF16" + (" + AMX" if self.isa == "amx" else ""))
        else:
            have.append("no bf16")
        have.append(("AVX-512 VNNI" if "avx512_vnni" in flags else "AVX-VNNI") if self.vnni else "no VNNI")
        return f"{self.isa}: {', '.join(have)}"

    def describe(self) -> str:
        """One line: CPU, class, PyTorch's threads (as set now), torch version and the CUDA device, e.g.
        ``"AMD EPYC (avx2: AVX2+FMA, no AVX-512, no bf16, no VNNI), 2 threads, torch 2.14.1"``."""
        threads = torch.get_num_threads()
        text = f"{self.cpu} ({self.isa_summary()}), {threads} thread{'s' * (threads != 1)}, torch {self.torch}"
        if not self.onednn:
            text += " without oneDNN"
        if self.cuda_device is not None:
            major, minor = self.cuda_capability or (0, 0)
            text += f", CUDA {self.cuda_device} (compute capability {major}.{minor})"
        return text

    def to_dict(self) -> Dict[str, Any]:
        """The fields as plain JSON types, plus ``bf16``."""
        out = asdict(self)
        out["flags"] = list(self.flags)
        out["cuda_capability"] = list(self.cuda_capability) if self.cuda_capability else None
        out["bf16"] = self.bf16
        return out


@functools.lru_cache(maxsize=None)
def machine_info() -> MachineInfo:
    """This machine's :class:`MachineInfo`, found once per process (initializes CUDA where it is available)."""
    name, flags, source = _read_cpu()
    cuda_device = cuda_capability = None
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        cuda_device = torch.cuda.get_device_name(index)
        cuda_capability = tuple(torch.cuda.get_device_capability(index))
    return MachineInfo(cpu=name, isa=isa_class(flags), vnni=has_vnni(flags),
                       flags=tuple(f for f in _REPORTED if f in flags), flags_source=source,
                       cpus=os.cpu_count() or 1, torch=torch.__version__.split("+")[0],
                       onednn=torch.backends.mkldnn.is_available(), cuda_device=cuda_device,
                       cuda_capability=cuda_capability)
