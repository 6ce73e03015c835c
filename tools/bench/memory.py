"""Process-wide allocator settings for inference and benchmark processes."""

import ctypes
import ctypes.util

__all__ = ["reuse_freed_memory"]


def reuse_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse instead of returning large blocks to the OS (process-wide).

    By default glibc serves large blocks with a fresh ``mmap`` and unmaps them on free, so each large activation
    of each forward is zero-filled again by the kernel. This sets ``M_MMAP_MAX=0`` and a 2 GiB
    ``M_TRIM_THRESHOLD``; the cost is that the process keeps its peak memory resident. Call it once, early; it
    affects every allocation. See ``docs/performance.md`` for what it saves and the alternatives.

    Returns:
        ``True`` if applied, ``False`` where the C library is not glibc (nothing is changed then).
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # glibc only: other C libraries' mallopt take other parameter numbers
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))
