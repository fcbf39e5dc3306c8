"""Sweep grids: DVC's -S grammar expands to typed points in order; bad input fails in one line."""

from __future__ import annotations

import re

import pytest

from hpcpipe.config import load_params
from hpcpipe.sweep.grid import apply_point, expand_grid, point_name, random_subset, validate_points
from hpcpipe.validation import ConfigError
from tests.support import REPO

PARAMS = REPO / "params.yaml"


def test_the_issues_example_gives_four_typed_points_in_order():
    points = expand_grid(["train.lr=0.1,0.05", "train.epochs=range(10,30,10)"])
    assert points == [
        {"train.lr": 0.1, "train.epochs": 10},
        {"train.lr": 0.1, "train.epochs": 20},
        {"train.lr": 0.05, "train.epochs": 10},
        {"train.lr": 0.05, "train.epochs": 20},
    ]
    assert all(type(p["train.lr"]) is float and type(p["train.epochs"]) is int for p in points)


def test_choice_bools_strings_and_single_values():
    overrides = ["train.model=choice(tutorial,resnet18)", "train.augment=true,false", "train.seed=3"]
    points = expand_grid(overrides)
    assert [(p["train.model"], p["train.augment"], p["train.seed"]) for p in points] == [
        ("tutorial", True, 3),
        ("tutorial", False, 3),
        ("resnet18", True, 3),
        ("resnet18", False, 3),
    ]


def test_quoted_values_stay_plain_strings():
    points = expand_grid(["data.path='x y',\"0.1\""])
    assert [p["data.path"] for p in points] == ["x y", "0.1"]
    assert all(type(p["data.path"]) is str for p in points)


def test_float_ranges_give_clean_floats():
    points = expand_grid(["train.lr=range(0.1,0.5,0.1)"])
    assert [p["train.lr"] for p in points] == [0.1, 0.2, 0.3, 0.4]


def test_no_overrides_is_one_point_of_params_as_they_are():
    assert expand_grid([]) == [{}]


def test_random_subset_is_deterministic_for_a_seed_and_keeps_grid_order():
    grid = expand_grid(["train.lr=range(1,21)", "train.seed=0,1"])
    first = random_subset(grid, 7, seed=42)
    assert first == random_subset(grid, 7, seed=42)
    assert len(first) == 7
    assert [grid.index(p) for p in first] == sorted(grid.index(p) for p in first)
    assert random_subset(grid, 100, seed=0) == grid
    with pytest.raises(ConfigError, match=r"^--random: expected a whole number >= 1, got 0$"):
        random_subset(grid, 0, seed=0)


GRAMMAR = re.escape("expected KEY=VALUE[,VALUE...], KEY=choice(VALUE,...) or KEY=range(start,stop[,step])")


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr", rf"^-S 'train\.lr': {GRAMMAR}$"),
        ("=0.1", rf"^-S '=0\.1': {GRAMMAR}$"),
        ("train.lr=", rf"^-S 'train\.lr=': {GRAMMAR}$"),
        ("train.lr=range(1", rf"^-S 'train\.lr=range\(1': {GRAMMAR}$"),
        ("train.lr=choice(1,2", rf"^-S 'train\.lr=choice\(1,2': {GRAMMAR}$"),
        ("train.lr=range(1,2,0)", rf"^-S 'train\.lr=range\(1,2,0\)': {GRAMMAR}$"),
        ("train.epochs=range(30,10)", r"^-S 'train\.epochs=range\(30,10\)': gives no values; expected start"),
        ("train.lr=interval(0,1)", r"^-S 'train\.lr=interval\(0,1\)': interval\(\) is not supported"),
        ("train.seed=shuffle(1,2)", r"^-S 'train\.seed=shuffle\(1,2\)': shuffle\(\) is not supported"),
        ("train.seed=1,1", r"^-S 'train\.seed=1,1': a value is repeated"),
        ("+train.foo=1", r"^-S '\+train\.foo=1': only KEY=VALUE is supported"),
    ],
)
def test_a_bad_override_fails_with_one_line_naming_it(override, expected):
    with pytest.raises(ConfigError, match=expected) as err:
        expand_grid(["train.epochs=10", override])
    assert "\n" not in str(err.value)


def test_a_key_swept_twice_is_refused():
    with pytest.raises(ConfigError, match=r"^-S 'train\.lr=0\.2': train\.lr is already swept"):
        expand_grid(["train.lr=0.1", "train.lr=0.2"])


def test_apply_point_sets_dotted_keys_on_a_deep_copy():
    raw = {"train": {"lr": 0.05, "epochs": 40}, "data": {"path": "x"}}
    applied = apply_point(raw, {"train.lr": 0.1})
    assert applied == {"train": {"lr": 0.1, "epochs": 40}, "data": {"path": "x"}}
    assert raw["train"]["lr"] == 0.05


@pytest.mark.parametrize(
    ("point", "expected"),
    [
        (
            {"trian.lr": 1},
            r"^-S trian\.lr: unknown section 'trian'; did you mean train\? known: data, train$",
        ),
        (
            {"train.lrr": 1},
            r"^-S train\.lrr: unknown key 'lrr' in train; did you mean train\.lr\? known: epochs, lr$",
        ),
        ({"train.lr.x": 1}, r"^-S train\.lr\.x: train\.lr is a value, not a section$"),
        ({"train": 1}, r"^-S train: train is a section; set its keys instead$"),
    ],
)
def test_apply_point_names_an_unknown_section_or_key(point, expected):
    with pytest.raises(ConfigError, match=expected):
        apply_point({"train": {"lr": 0.05, "epochs": 40}, "data": {}}, point)


def test_validate_points_applies_each_point_to_the_params_file():
    points = expand_grid(["train.lr=0.1,0.05", "train.epochs=range(10,30,10)"])
    checked = validate_points(PARAMS, points)
    base = load_params(PARAMS)
    assert [(p["train"]["lr"], p["train"]["epochs"]) for p in checked] == [
        (0.1, 10),
        (0.1, 20),
        (0.05, 10),
        (0.05, 20),
    ]
    assert all(
        p["data"]["path"] == base.data.path and p["train"]["model"] == base.train.model for p in checked
    )


def test_without_a_schema_a_value_must_keep_its_type():
    """Any project: no hpcpipe schema, DVC's rule (the key exists) plus the value's type."""
    points = expand_grid(["train.lr=0.1,0.05,fast"])
    expected = (
        "point 3 (train.lr=fast): params.yaml: train.lr: expected a number like its value 1.5, got 'fast'"
    )
    with pytest.raises(ConfigError) as err:
        validate_points(PARAMS, points)
    assert str(err.value) == expected
    validate_points(PARAMS, expand_grid(["train.lr=1,2"]))  # an int where a float was: still a number
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer like its value 10, got 1\.5"):
        validate_points(PARAMS, expand_grid(["train.epochs=1.5"]))


def test_a_function_stages_schema_is_checked_too():
    from hpcpipe.config import TrainParams

    points = expand_grid(["train.lr=0.1,-1"])
    validate_points(PARAMS, points)  # types alone let -1 through
    with pytest.raises(
        ConfigError, match=r"^point 2 \(train\.lr=-1\): params\.yaml: train\.lr: expected a number > 0"
    ):
        validate_points(PARAMS, points, {"train": TrainParams})


def test_1e_5_is_a_float_as_dvc_reads_it(tmp_path):
    """YAML 1.2 (DVC's ruamel): `1e-5` in a params file and in a grid is the float 1e-05."""
    params = tmp_path / "params.yaml"
    params.write_text("train:\n  lr: 1e-5\n")
    (point,) = validate_points(params, expand_grid(["train.lr=1e-5"]))
    assert point["train"]["lr"] == 1e-05 and isinstance(point["train"]["lr"], float)


def test_validation_failure_from_an_unknown_key_names_the_point():
    with pytest.raises(ConfigError, match=r"^point 1 \(train\.lrr=0\.1\): -S train\.lrr: unknown key 'lrr'"):
        validate_points(PARAMS, expand_grid(["train.lrr=0.1"]))


def test_point_names_are_short_stable_unique_and_safe():
    points = expand_grid(["train.lr=0.1,0.05", "train.epochs=range(10,30,10)"])
    names = [point_name(p) for p in points]
    assert names == ["lr-0.1-epochs-10", "lr-0.1-epochs-20", "lr-0.05-epochs-10", "lr-0.05-epochs-20"]
    assert names == [point_name(dict(p)) for p in points]

    odd = expand_grid(["data.path=a/b,a_b,'x y',../up", "train.model=choice(tutorial,resnet18)"])
    long = expand_grid(["train.weight_decay=0.000123456789,0.000123456788", "train.momentum=0.9"])
    names = [point_name(p) for p in odd + long]
    assert len(set(names)) == len(names)
    for name in names:
        assert len(name) <= 40
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and ".." not in name
    assert point_name({}) == "base"


def test_a_one_argument_range_counts_from_zero_as_in_dvc():
    assert expand_grid(["train.seed=range(3)"]) == [{"train.seed": 0}, {"train.seed": 1}, {"train.seed": 2}]
