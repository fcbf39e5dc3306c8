"""Keep a job's host memory at what its tensors need: glibc's allocator, tuned once.

Why: on the CPU, a training step allocates and frees tens of activation tensors of
1-100 MB. glibc serves a block over its mmap threshold with its own ``mmap`` (given
back to the OS on free), but the threshold is *dynamic*: each freed mmapped block
raises it to that block's size, up to 32 MB. After the first step, every activation
under 32 MB comes from the heap instead, where blocks freed in the middle stay
resident and no longer fit the next step's sizes. Measured on the train stage
(full CIFAR-10, batch 1024, 2 cores): peak RSS 2103 MB with glibc's defaults,
1806 MB with a fixed 1 MB threshold (benchmarks/train_memory.py). A fixed threshold
makes each large tensor fresh pages; PyTorch's ``THP_MEM_ALLOC_ENABLE`` backs those
with 2 MB transparent huge pages, so the page faults that costs stay few: the epoch
took 0.96 of the default's time in the same run (without huge pages, 1.3x).

``tune_host_allocator`` runs at the start of every stage job, before the stage
imports torch (PyTorch reads ``THP_MEM_ALLOC_ENABLE`` at its first allocation).
Settings a user exported are kept: an exported ``MALLOC_MMAP_THRESHOLD_`` or
``THP_MEM_ALLOC_ENABLE`` wins, and ``HPCPIPE_HOST_ALLOCATOR=default`` turns all of it off.
Elsewhere than glibc (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD_BYTES = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's malloc.h
OPT_OUT = "HPCPIPE_HOST_ALLOCATOR"


def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 -- present in glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def tune_host_allocator() -> list[str]:
    """Fix glibc's mmap threshold and ask PyTorch for huge pages; return what was set.

    Idempotent. Huge pages are asked for only while torch is not imported yet (later
    it would be ignored); the threshold applies from the call on.
    """
    if os.environ.get(OPT_OUT) == "default":
        return []
    done: list[str] = []
    if "torch" not in sys.modules and "THP_MEM_ALLOC_ENABLE" not in os.environ:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "1"
        done.append("THP_MEM_ALLOC_ENABLE=1")
    libc = _glibc()
    keep_users = "MALLOC_MMAP_THRESHOLD_" in os.environ
    if libc is not None and not keep_users and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1:
        done.append(f"mmap threshold {MMAP_THRESHOLD_BYTES} bytes")
    return done
