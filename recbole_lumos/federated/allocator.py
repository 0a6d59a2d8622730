"""Keep freed memory in the process instead of handing it back to the OS after each cohort.

A full-softmax round (``local_loss: ce``) builds each cohort's per-client item-table
gradients in one ``[clients, items, d]`` buffer (50 MB for 32 clients on amazon-beauty)
and frees it once the cohort is aggregated. glibc serves blocks this large with
``mmap`` and unmaps them on ``free``, so every cohort page-faults 50 MB of fresh
zeroed pages again. Raising glibc's mmap and trim thresholds keeps those blocks in
the heap for the next cohort: measured 1.4x faster rounds on amazon-beauty (2.6 s
against 3.9 s per round of 512 clients, same busy machine). The resident size stays
near its peak, which the next cohort would reach again anyway.

Kept across rounds, though, the freed blocks fragment: a LUMOS run on ml-1m grew from 2.2 to
2.9 GB in 16 rounds (against 1.8-2.1 GB with glibc's defaults). So the engine hands the
free memory back once a round, after aggregation and after each validation
(:func:`release_freed_memory`, glibc's ``malloc_trim``): the cohorts of a round still
reuse each other's blocks, and the resident size no longer drifts.

Only glibc (Linux) is touched; elsewhere this does nothing. Set
``RECBOLE_LUMOS_MALLOC=default`` to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_THRESHOLD = 1 << 30  # glibc caps the mmap threshold at 32 MB on 64-bit unless it is set explicitly

_applied = False
_libc = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; True when they are set."""
    global _applied, _libc
    if _applied:
        return True
    if os.environ.get("RECBOLE_LUMOS_MALLOC", "").lower() == "default":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _THRESHOLD))
    _libc = libc if _applied else None
    if _applied:
        logging.getLogger(__name__).debug("glibc mmap/trim thresholds raised to %d bytes", _THRESHOLD)
    return _applied


def release_freed_memory() -> bool:
    """Give the heap's free memory back to the OS (glibc ``malloc_trim``) when the thresholds were
    raised; True when it did. Called at round boundaries, where nothing large is alive."""
    if _libc is None:
        return False
    return bool(_libc.malloc_trim(0))
