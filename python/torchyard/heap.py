"""How a worker's C heap (glibc malloc, which PyTorch's CPU tensors use) treats freed memory:
kept while the worker is busy, given back once it has been idle for a second.

glibc's defaults give large blocks back to the system as soon as they are freed (a block above
the mmap threshold is unmapped; free space at the heap's top above the trim threshold is
trimmed), so a model whose activations run to tens of MB takes them as fresh, zero-filled pages
at every batch: ResNet-18 at batch 8 took 32-39 thousand page faults per CPU-second, a few
percent of its throughput (docs/performance.md). A worker instead keeps what it freed while it
serves, and a thread gives it back with `malloc_trim` once the process used no CPU for
`IDLE_S`. Left as glibc has it where the user chose: `GLIBC_TUNABLES` naming `glibc.malloc`,
glibc's `MALLOC_*_` variables, an allocator in `LD_PRELOAD`, or no glibc at all."""

import ctypes
import ctypes.util
import os
import threading
import time
from typing import Optional

#: `mallopt`'s parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks up to this size come from the heap, not a mapping of their own: glibc's own ceiling
#: for its sliding threshold (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit).
MMAP_THRESHOLD = 32 << 20
#: Free space the heap's top may hold before `free` trims it: the idle thread trims instead.
TRIM_THRESHOLD = 1 << 30
#: A worker that used less than `IDLE_CPU_S` of CPU over `IDLE_S` seconds is idle.
IDLE_S = 1.0
IDLE_CPU_S = 0.01
#: Environment variables by which a user sets the allocator up themselves.
USER_MALLOC_VARS = ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TOP_PAD_",
                    "MALLOC_MMAP_MAX_", "MALLOC_ARENA_MAX")


def user_chose_allocator() -> bool:
    """Whether the environment already sets the allocator up (then it is left alone)."""
    env = os.environ
    return ("glibc.malloc" in env.get("GLIBC_TUNABLES", "")
            or any(name in env for name in USER_MALLOC_VARS)
            or "malloc" in env.get("LD_PRELOAD", ""))


def _glibc() -> Optional[ctypes.CDLL]:
    """The process's C library when it is glibc (it has `malloc_trim`), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


def keep_while_busy() -> bool:
    """Sets this process's heap to keep freed memory and starts the thread that gives it back
    when idle; False (nothing changed) where the user set the allocator up or it is not glibc."""
    if user_chose_allocator():
        return False
    libc = _glibc()
    if libc is None or not (libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                            and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return False
    threading.Thread(target=_trim_when_idle, args=(libc,), name="torchyard-heap",
                     daemon=True).start()
    return True


def _trim_when_idle(libc: ctypes.CDLL) -> None:
    """Gives the heap's free memory back once per idle spell: after a second in which the
    process used (almost) no CPU, and not again until it has been busy."""
    last = time.process_time()
    trimmed = True  # nothing to give back before the first work
    while True:
        time.sleep(IDLE_S)
        now = time.process_time()
        if now - last >= IDLE_CPU_S:
            trimmed = False
        elif not trimmed:
            libc.malloc_trim(0)
            trimmed = True
            # The trim's own CPU time is not work.
            now = time.process_time()
        last = now
