"""A second one-node Slurm cluster beside the shared test cluster, configured otherwise.

slurm/testcluster/start takes its folder, its port base and options from the environment
(``HPCPIPE_TESTCLUSTER_ACCOUNTING=0``: no slurmdbd, as on sites without accounting;
``HPCPIPE_TESTCLUSTER_JOB_REQUEUE=0``). Its slurmd has the shared one's node name on
other ports, which Slurm allows (see tests/integration/test_testcluster.py).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.slurm import SCRIPTS, exported_conf


def free_port_base(first: int = 16917) -> int:
    """Four free ports in a row (the shared cluster has 16817-16820)."""
    for base in range(first, first + 400, 10):
        try:
            for port in range(base, base + 4):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError(f"no four free ports from {first}")


@contextmanager
def second_cluster(state: Path, **options: str) -> Iterator[Path]:
    """Start a cluster in ``state`` with ``options`` (HPCPIPE_TESTCLUSTER_* without the
    prefix, e.g. ACCOUNTING="0"); yields its SLURM_CONF; stops it afterwards."""
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}
    env.update({f"HPCPIPE_TESTCLUSTER_{k}": v for k, v in options.items()})
    env.update(HPCPIPE_TESTCLUSTER_DIR=str(state), HPCPIPE_TESTCLUSTER_PORT=str(free_port_base()))
    proc = subprocess.run(["bash", SCRIPTS / "start"], env=env, capture_output=True, text=True, timeout=300)
    try:
        assert proc.returncode == 0, proc.stderr[-4000:]
        yield exported_conf(proc)
    finally:
        subprocess.run(["bash", SCRIPTS / "stop", state], env=env, capture_output=True, timeout=120)
