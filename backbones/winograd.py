"""Winograd F(4x4, 3x3) convolution for CPU inference (Lavin & Gray, "Fast Algorithms for Convolutional Neural
Networks", CVPR 2016).

A 3x3 stride-1 convolution computes each 4x4 output tile from a 6x6 input tile. Transformed into the Winograd
domain, that takes 36 multiply-adds per (input, output) channel pair instead of 4 * 4 * 9 = 144: a quarter of
the work of a direct convolution. Every step here is one large matrix product or one strided copy over a whole
chunk of tiles at once:

    tiles  D (36, T*C)   <- copy of the zero-padded input's overlapping 6x6 tiles     (T tiles, C channels)
    V = (B^T (x) B^T) D   (36x36 @ 36xT*C)      input transform
    M = V[a] @ U[a]       (36 batched Tx C @ C x K)   the channel mixing, 4x fewer multiply-adds
    Y = (A^T (x) A^T) M   (16x36 @ 36xT*K)      output transform, then bias and scatter to NHWC

It pays off where channels are wide (the transforms cost O(C + K) per pixel, the saving O(C * K)); its
transforms are memory-bound where the direct kernel is compute-bound, so the gain depends on free memory
bandwidth (measurements in ``docs/performance.md``). fp32 only: the transforms' constants (up to 8 and 1/24)
cost about one decimal digit, 1e-5 relative error in fp32 (bf16 would lose most of its 3 digits).

The intermediate buffers are reused from call to call (per thread, grown to the largest size seen, see
:func:`release_workspace`), since fresh ones would be zero-filled by the kernel, page by page, on every call.
They hold one chunk of tiles (whole images, or rows of tiles of one image): the zero-padded input rows it
reads, and two buffers of at most :data:`CHUNK_BYTES` each for the transformed tiles and products.
"""

from __future__ import annotations

import threading
from typing import Dict, Optional

import torch
from torch import nn

from .machine import ISA_CLASSES, cpu_class

__all__ = ["AVX512_MIN_CHANNELS", "AVX2_MIN_CHANNELS", "MIN_CHANNELS_BY_CLASS", "min_channels", "is_eligible",
           "release_workspace", "transform_weight", "winograd_conv3x3"]

# Below this many input or output channels the memory-bound transforms can cost more than the saved
# multiply-adds when memory bandwidth is contended (measured on AVX-512 CPUs, see docs/performance.md).
AVX512_MIN_CHANNELS = 256
# The floor for AVX2 CPUs (and those below): floors of 64 to 512 channels and Winograd off were timed side by side
# on an AVX2 CPU, and 256 was the fastest there too (docs/performance.md, "Winograd's floor on AVX2").
AVX2_MIN_CHANNELS = 256
# deploy()'s Winograd floor per CPU class (backbones.machine.cpu_class): where Winograd's saved multiply-adds
# outweigh its memory-bound transforms depends on the direct kernel's vector width and the memory bandwidth.
MIN_CHANNELS_BY_CLASS: Dict[str, int] = {
    "baseline": AVX2_MIN_CHANNELS, "avx2": AVX2_MIN_CHANNELS,
    "avx512": AVX512_MIN_CHANNELS, "avx512_bf16": AVX512_MIN_CHANNELS, "amx": AVX512_MIN_CHANNELS,
}

TILE = 4  # output tile side (m)
# Bytes of each of the two scratch buffers (tiles transformed at once: whole images, or whole rows of tiles of one
# image, at least one row). Much smaller chunks run many small matrix products; larger ones only cost memory.
CHUNK_BYTES = 8 * 2 ** 20
SPAN = TILE + 2  # input tile side (m + r - 1) for a 3x3 kernel

# Interpolation points 0, 1, -1, 2, -2 and infinity (Lavin & Gray), in float64 so the transformed weights are
# exact to fp32 rounding.
_BT = torch.tensor([[4, 0, -5, 0, 1, 0],
                    [0, -4, -4, 1, 1, 0],
                    [0, 4, -4, -1, 1, 0],
                    [0, -2, -1, 2, 1, 0],
                    [0, 2, -1, -2, 1, 0],
                    [0, 4, 0, -5, 0, 1]], dtype=torch.float64)
_G = torch.tensor([[1 / 4, 0, 0],
                   [-1 / 6, -1 / 6, -1 / 6],
                   [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6],
                   [1 / 24, -1 / 12, 1 / 6],
                   [0, 0, 1]], dtype=torch.float64)
_AT = torch.tensor([[1, 1, 1, 1, 1, 0],
                    [0, 1, -1, 2, -2, 0],
                    [0, 1, 1, 4, 4, 0],
                    [0, 1, -1, 8, -8, 1]], dtype=torch.float64)
# 2-D transforms of a flattened tile: kron(B^T, B^T) @ vec(d) == vec(B^T d B).
_INPUT_T = torch.kron(_BT, _BT).float()  # (36, 36)
_OUTPUT_T = torch.kron(_AT, _AT).float()  # (16, 36)


def min_channels(isa: Optional[str] = None) -> int:
    """The fewest input and output channels at which :func:`backbones.deploy` runs a 3x3 convolution as
    Winograd on a CPU of class ``isa`` (one of :data:`backbones.machine.ISA_CLASSES`; default: this CPU's)."""
    isa = cpu_class() if isa is None else isa
    if isa not in MIN_CHANNELS_BY_CLASS:
        raise ValueError(f"isa must be one of {', '.join(ISA_CLASSES)}, got {isa!r}")
    return MIN_CHANNELS_BY_CLASS[isa]


def is_eligible(conv: nn.Module, *, isa: Optional[str] = None) -> bool:
    """Whether :func:`winograd_conv3x3` computes ``conv`` and pays off on a CPU of class ``isa`` (default: this
    CPU's): a size-preserving 3x3, stride 1, undilated, ungrouped ``nn.Conv2d`` with zero padding and at least
    :func:`min_channels` input and output channels."""
    return (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1)
            and conv.dilation == (1, 1) and conv.padding == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros" and min(conv.in_channels, conv.out_channels) >= min_channels(isa))


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """``(K, C, 3, 3)`` convolution weight -> ``(36, C, K)`` Winograd-domain weight ``G g G^T`` (fp32)."""
    if weight.dim() != 4 or weight.shape[2:] != (3, 3):
        raise ValueError(f"expected a (K, C, 3, 3) weight, got shape {tuple(weight.shape)}")
    g = _G.to(weight.device)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(SPAN * SPAN, weight.shape[1], weight.shape[0]).float().contiguous()


class _Workspace(threading.local):
    """Per-thread flat buffers, one per role, grown to the largest request and reused."""

    def __init__(self) -> None:
        self.buffers: Dict[tuple, torch.Tensor] = {}

    def get(self, role: str, numel: int, like: torch.Tensor) -> torch.Tensor:
        key = (role, like.device, like.dtype)
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < numel:
            self.buffers.pop(key, None)  # free the smaller one first: peak memory is the new one only
            # An ordinary tensor even under torch.inference_mode(): an inference tensor could not be written
            # in place by a later call made outside it (under torch.no_grad(), say).
            with torch.inference_mode(False):
                buf = self.buffers[key] = torch.empty(numel, dtype=like.dtype, device=like.device)
        return buf[:numel]


_WORKSPACE = _Workspace()


def release_workspace() -> None:
    """Free this thread's Winograd buffers (they are otherwise kept for the next call)."""
    _WORKSPACE.buffers.clear()


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor], *,
                     residual: Optional[torch.Tensor] = None, relu: bool = False) -> torch.Tensor:
    """3x3 convolution, stride 1, padding 1, of ``x`` with the weight ``u = transform_weight(w)``, plus
    ``residual`` if given, then a ReLU if ``relu`` (both applied per chunk, while it is in cache).

    Shape: ``x (N, C, H, W)`` fp32, any memory format; ``residual (N, K, H, W)`` -> ``(N, K, H, W)``
    channels_last, equal to ``F.conv2d(x, w, bias, padding=1)`` to about 1e-5 relative error. Inference only
    (no autograd).
    """
    n, c, h, w = x.shape
    k = u.shape[2]
    if u.shape[:2] != (SPAN * SPAN, c):
        raise ValueError(f"weight of shape {tuple(u.shape)} does not take {c} input channels")
    th, tw = -(-h // TILE), -(-w // TILE)  # tiles per column / row; the last ones may overhang

    if residual is not None and residual.shape != (n, k, h, w):
        raise ValueError(f"residual of shape {tuple(residual.shape)} does not match the output {(n, k, h, w)}")
    out = torch.empty((n, k, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    out_nhwc, x_nhwc = out.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1)
    res_nhwc = None if residual is None else residual.permute(0, 2, 3, 1)
    # Tiles are processed in chunks of at most CHUNK_BYTES of scratch, whatever the input size: several whole
    # images where they fit (small images in a batch would otherwise make many small matrix products), else rows
    # of tiles of one image. Each chunk gets its own zero-padded NHWC copy of the input rows it reads (4 per tile
    # row plus 2 shared with neighbours).
    chunk_tiles = CHUNK_BYTES // (SPAN * SPAN * max(c, k) * x.element_size())
    if th * tw <= chunk_tiles:
        images, rows = min(n, chunk_tiles // (th * tw)), th
    else:
        images, rows = 1, max(1, chunk_tiles // tw)
    wp = TILE * tw + 2
    for i0 in range(0, n, images):
        i1 = min(n, i0 + images)
        for r0 in range(0, th, rows):
            r1 = min(th, r0 + rows)
            lo, hi = TILE * r0 - 1, TILE * r1 + 1  # input rows [lo, hi) of this chunk, -1 and >= h are padding
            padded = _WORKSPACE.get("padded", (i1 - i0) * (hi - lo) * wp * c, x).view(i1 - i0, hi - lo, wp, c)
            top, bottom = max(lo, 0), min(hi, h)  # the rows that exist
            padded[:, :top - lo].zero_()
            padded[:, bottom - lo:].zero_()
            padded[:, :, 0].zero_()
            padded[:, :, w + 1:].zero_()
            padded[:, top - lo:bottom - lo, 1:w + 1].copy_(x_nhwc[i0:i1, top:bottom])
            dst = out_nhwc[i0:i1, TILE * r0:TILE * r1]
            _tile_rows(padded, dst, u, bias)
            if res_nhwc is not None:
                dst.add_(res_nhwc[i0:i1, TILE * r0:TILE * r1])
            if relu:
                dst.clamp_min_(0)
    return out


def _tile_rows(padded: torch.Tensor, out: torch.Tensor, u: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
    """Convolve the tile rows of ``padded (G, 4 * rows + 2, 4 * tw + 2, C)`` into ``out (G, <= 4 * rows, W, K)``."""
    g, rows, tw = padded.shape[0], (padded.shape[1] - 2) // TILE, (padded.shape[2] - 2) // TILE
    c, k = padded.shape[3], u.shape[2]
    tiles = g * rows * tw
    # Overlapping 6x6 tiles at stride 4, laid out (36, T*C) so that one matrix product transforms them all.
    # Two scratch buffers serve twice each: tiles then products, transformed tiles then outputs.
    sn, sh, sw, _ = padded.stride()
    windows = padded.as_strided((SPAN, SPAN, g, rows, tw, c), (sh, sw, sn, TILE * sh, TILE * sw, 1))
    first = _WORKSPACE.get("first", SPAN * SPAN * tiles * max(c, k), padded)
    second = _WORKSPACE.get("second", SPAN * SPAN * tiles * max(c, k), padded)
    d = first[:SPAN * SPAN * tiles * c].view(SPAN, SPAN, g, rows, tw, c)
    d.copy_(windows)
    v = second[:SPAN * SPAN * tiles * c].view(SPAN * SPAN, tiles * c)
    torch.mm(_INPUT_T.to(padded.device), d.view(SPAN * SPAN, tiles * c), out=v)
    m = first[:SPAN * SPAN * tiles * k].view(SPAN * SPAN, tiles, k)
    torch.bmm(v.view(SPAN * SPAN, tiles, c), u, out=m)
    y = second[:TILE * TILE * tiles * k].view(TILE * TILE, tiles * k)
    torch.mm(_OUTPUT_T.to(padded.device), m.view(SPAN * SPAN, tiles * k), out=y)

    # y[p, q] holds output pixel (4i + p, 4j + q) of tile (i, j): scatter the 16 offsets, adding the bias; in
    # one operator where every tile is whole (each operator costs a thread synchronisation).
    h, w = out.shape[1:3]
    y = y.view(TILE, TILE, g, rows, tw, k)
    if h == TILE * rows and w == TILE * tw:
        dst = out.view(g, rows, TILE, tw, TILE, k)
        src = y.permute(2, 3, 0, 4, 1, 5)
        if bias is None:
            dst.copy_(src)
        else:
            torch.add(src, bias, out=dst)
        return
    for p in range(TILE):
        for q in range(TILE):
            src = y[p, q, :, :(h - p + TILE - 1) // TILE, :(w - q + TILE - 1) // TILE]
            dst = out[:, p::TILE, q::TILE]
            if bias is None:
                dst.copy_(src)
            else:
                torch.add(src, bias, out=dst)
