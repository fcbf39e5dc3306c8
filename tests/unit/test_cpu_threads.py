"""Math libraries get the job's CPUs, not the node's (``hpcpipe.launch.cpu_threads``).

The end-to-end check is the Slurm resume tests (tests/integration/test_slurm_resume.py):
their 1-CPU training jobs, on a test cluster that binds no cores, stay fast beside other
load only because the job side sets ``OMP_NUM_THREADS`` from ``SLURM_CPUS_PER_TASK``.
"""

from __future__ import annotations

import os

import pytest

from hpcpipe.launch.cpu_threads import size_math_threads
from hpcpipe.launch.job import run_stage
from tests.support import REPO
from tests.support.launch_project import FAKE_PATHS, fake_params, fake_spec


@pytest.mark.parametrize(
    ("environ", "fallback", "expected"),
    [
        ({"SLURM_CPUS_PER_TASK": "4"}, None, "4"),  # the allocation
        ({"SLURM_CPUS_PER_TASK": "4", "OMP_NUM_THREADS": "2"}, None, "2"),  # the user's or site's wins
        ({}, "3", "3"),  # no Slurm allocation: what the caller gives (a local sweep point)
        ({}, None, None),  # neither: left to the libraries
        ({"SLURM_CPUS_PER_TASK": "0"}, None, None),  # nonsense is not passed on
        ({"SLURM_CPUS_PER_TASK": "2(x3)"}, None, None),
    ],
)
def test_omp_threads_follow_the_allocation_unless_already_set(environ, fallback, expected):
    environ = dict(environ)
    assert size_math_threads(environ, fallback) == expected
    assert environ.get("OMP_NUM_THREADS") == expected


def test_a_function_stage_runs_with_its_allocations_thread_count(tmp_path, monkeypatch):
    """run_stage, as a Slurm job runs it: the function sees OMP_NUM_THREADS set."""
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    (tmp_path / "source.txt").write_text("abc")
    run_stage(fake_spec("write_outputs"), fake_params(REPO / "params.yaml"), FAKE_PATHS, str(tmp_path))
    assert os.environ["OMP_NUM_THREADS"] == "3"
