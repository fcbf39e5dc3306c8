"""Math libraries sized to the job's CPUs, not to the node's.

OpenMP (and so torch's intra-op pool, MKL, OpenBLAS) starts one thread per core it
sees. A job that Slurm does not bind to its cores (``TaskPlugin=task/none``, or cgroups
without a cpuset, as on the test cluster and on some sites) sees the whole node: a
1-CPU stage then runs a thread per core of the node, and each of its steps waits for
threads that lost their core to a neighbour (on the test cluster one busy loop beside a
1-CPU train made its epochs about 20 times slower; with one thread, 1.7 times). So every
stage job sets ``OMP_NUM_THREADS`` to its allocation's CPUs per task before anything
imports torch, unless the user or the site set it already (theirs wins), and a command
stage's command inherits it.
"""

from __future__ import annotations

from collections.abc import MutableMapping

VARIABLE = "OMP_NUM_THREADS"


def size_math_threads(environ: MutableMapping[str, str], fallback: str | None = None) -> str | None:
    """Set ``OMP_NUM_THREADS`` in ``environ`` to ``SLURM_CPUS_PER_TASK`` (else ``fallback``)
    where it is unset; return the value it has now (None: unset, the libraries choose)."""
    cpus = environ.get("SLURM_CPUS_PER_TASK") or fallback
    if cpus and cpus.isdigit() and int(cpus) > 0:
        environ.setdefault(VARIABLE, cpus)
    return environ.get(VARIABLE)
