"""The job side's allocator tuning (hpcpipe.launch.host_memory), in fresh Python processes.

Each case runs in a subprocess: glibc's threshold and PyTorch's huge-page switch are
per process and are meant to be set before torch is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from hpcpipe.launch.host_memory import OPT_OUT, _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc's allocator only")

# A freed 8 MB tensor: glibc's first free of an mmapped block raises its threshold, so
# the next 8 MB tensor comes from the heap, where (with a small block after it) its
# free keeps the pages resident. With the fixed threshold each free gives them back.
RELEASED_AFTER_FREE = textwrap.dedent(
    """
    import os, sys
    from hpcpipe.launch.host_memory import tune_host_allocator
    print("SET", tune_host_allocator())
    import torch
    def rss_mb():
        return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    first = torch.ones(2 << 20)
    del first
    second = torch.ones(2 << 20)
    small = torch.ones(1000)
    before = rss_mb()
    del second
    print("RELEASED", before - rss_mb())
    print("THP", os.environ.get("THP_MEM_ALLOC_ENABLE"))
    """
)


def _run(env_changes: dict[str, str | None]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_MMAP_THRESHOLD_", "THP_MEM_ALLOC_ENABLE")}
    env.pop(OPT_OUT, None)
    for key, value in env_changes.items():
        if value is not None:
            env[key] = value
    done = subprocess.run(
        [sys.executable, "-c", RELEASED_AFTER_FREE], capture_output=True, text=True, env=env, check=True
    )
    return dict(line.split(" ", 1) for line in done.stdout.splitlines())


def test_tuned_process_gives_freed_activation_memory_back() -> None:
    out = _run({})
    assert float(out["RELEASED"]) >= 7.5  # the 8 MB tensor's pages went back to the OS
    assert out["THP"] == "1"
    assert "mmap threshold" in out["SET"]


def test_opting_out_keeps_glibc_defaults_and_its_resident_free_blocks() -> None:
    """The same pattern without tuning keeps the block resident: what the tuning is for."""
    out = _run({OPT_OUT: "default"})
    assert out["SET"] == "[]"
    assert float(out["RELEASED"]) < 1.0
    assert out["THP"] == "None"


def test_settings_the_user_exported_are_left_alone() -> None:
    out = _run({"THP_MEM_ALLOC_ENABLE": "0", "MALLOC_MMAP_THRESHOLD_": "67108864"})
    assert out["SET"] == "[]"
    assert out["THP"] == "0"
    assert float(out["RELEASED"]) < 1.0  # a 64 MB threshold: the 8 MB block stayed on the heap
