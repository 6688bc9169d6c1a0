"""Large request buffers go back to the system when freed, not to a heap that keeps them.

glibc's malloc serves an allocation over its mmap threshold (128 KiB at
first) with its own mapping, unmapped on free; but each time such a block is
freed it raises the threshold to that block's size, up to 32 MiB. After one
large request, the next ones' bodies and arrays come from the heaps instead,
one per thread's arena, and a freed block in the middle of a heap stays
resident: an agent that served a 60 MB JSON body on a few connections held
some 60 MB more after each one. A fixed threshold keeps every block over it
mapped on its own, so freeing it returns it. At 4 MiB, the tensors of an
ordinary request (an image or two) still come from the heaps and are reused
without a page fault; a block that large costs a fresh mapping, which is small
beside the work of filling it.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["return_large_allocations"]

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
_THRESHOLD = 4 << 20


def return_large_allocations(threshold: int = _THRESHOLD) -> bool:
    """Fix malloc's mmap threshold at `threshold` bytes; False where that is not glibc's."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold))
