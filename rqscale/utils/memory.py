"""Process-level allocator setting for CPU training.

glibc's malloc serves every allocation above 32 MB (its largest mmap threshold) with a fresh mmap and
unmaps it on free, so each such tensor is page-faulted in again every time it is made. On the 2-core
development machines a fresh 32 MB tensor costs ~8 ms of page faults before any arithmetic (measured:
`torch.zeros` of 16M bf16 elements, 8 ms; a bf16 -> fp32 copy of 8M elements, 10 ms against 0.8 ms for
the same copy into reused memory), and a stage-2 step makes dozens of them (MLP activations of the depth
stack, fp32 soft labels, ZeRO's flat fp32 partitions in the optimizer step).

`retain_freed_memory()` makes malloc serve large blocks from the heap and keep freed memory for reuse,
which is what jemalloc / tcmalloc (PyTorch's usual CPU advice) achieve by other means. The process's
resident memory then stays near its peak instead of shrinking between steps. It changes no arithmetic.
"""
from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def retain_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Serve large allocations from the heap (no per-tensor mmap) and return freed heap memory to the
    OS only beyond `trim_threshold` bytes. Returns False where this is not glibc (nothing changed).

    The same settings can be given before the process starts, e.g. for Ray workers through their
    environment: GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1073741824.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
