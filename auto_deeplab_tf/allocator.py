"""Host memory: how many malloc arenas the process may use.

TensorFlow's runtime holds most of a search's host memory in small heap blocks: the
supernet's traced graph, and the kernels and executor state made when the runtime first
instantiates it (for the paper's supernet, well over a GB at any crop size). glibc's malloc
gives each thread that contends for the heap an arena of its own, up to 8 per core, and
memory freed into one arena is reused only by the threads on it. TensorFlow's thread pools
then leave the instantiation's freed blocks stranded across many arenas while new ones
grow. Capping the arenas makes that memory reusable: on the 2-core CI machine the search
step's peak RSS at 64x64 drops by about 0.7 GB (README, Performance). The heap is not on the
hot path: tensors come from TensorFlow's own allocator, so the step time is unchanged
within noise.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# mallopt's parameter number for the arena cap (glibc's malloc.h).
_M_ARENA_MAX = -8
DEFAULT_MAX_ARENAS = 1


def limit_malloc_arenas(max_arenas: int = DEFAULT_MAX_ARENAS) -> bool:
    """Caps glibc's malloc arenas at `max_arenas` for threads that start using the heap
    from now on; call it first thing in a script, before TensorFlow starts its threads.

    Does nothing when MALLOC_ARENA_MAX is set (the user's choice wins) or the C library
    is not glibc. Returns whether the cap was set.
    """
    if max_arenas < 1:
        raise ValueError(f"max_arenas must be >= 1, got {max_arenas}")
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to cap
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, int(max_arenas)))
