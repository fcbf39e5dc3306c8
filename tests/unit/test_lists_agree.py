"""Lists that live in two places and must agree (issue 15): the params schema in
``hpcpipe.config`` is read without torch (the toolkit installs without it), so it cannot
import the names from ``hpcpipe.ml``; this test is what keeps the two copies equal."""

from __future__ import annotations

import pytest

from hpcpipe import config

pytest.importorskip("torch")


def test_the_schemas_models_are_the_models_the_example_builds():
    from hpcpipe.ml.models import MODEL_NAMES, build_model

    assert tuple(config.MODELS) == tuple(MODEL_NAMES)
    for name in config.MODELS:
        assert build_model(name, num_classes=10) is not None


def test_the_schemas_schedules_are_the_schedules_the_recipe_knows():
    from hpcpipe.ml.recipe import SCHEDULES

    assert set(config.SCHEDULES) == set(SCHEDULES)
