"""How a sweep's points are cut into job arrays under the site's MaxArraySize (pure)."""

from __future__ import annotations

from hpcpipe.launch.checks import parse_slurm_config
from hpcpipe.sweep.record import Point
from hpcpipe.sweep.submit import chunks


def points(n: int) -> list[Point]:
    return [Point(number=i + 1, name=f"p{i + 1}", overrides={}, workspace=f"w{i + 1}") for i in range(n)]


def test_points_fill_arrays_of_at_most_max_array_size_in_order():
    parts = chunks(points(2500), 1001)
    assert [len(p) for p in parts] == [1001, 1001, 498]
    assert [p.number for part in parts for p in part] == list(range(1, 2501))


def test_without_a_limit_or_under_it_there_is_one_array():
    assert [len(p) for p in chunks(points(5), None)] == [5]
    assert [len(p) for p in chunks(points(1001), 1001)] == [1001]


def test_max_array_size_as_scontrol_prints_it():
    text = (
        "Configuration data as of 2026-12-02T05:00:00\nMaxArraySize            = 1001\nMaxJobCount = 10000\n"
    )
    assert parse_slurm_config(text)["MaxArraySize"] == "1001"
