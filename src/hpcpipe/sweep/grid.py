"""Sweep grids: DVC's ``-S`` overrides -> grid points -> validated params, before any submission.

Pure on purpose: expanding and checking a grid needs no Slurm, no DVC repo and no
network, so a typo in point 37 fails on the login node in milliseconds with one
line, instead of as one failed task in a job array. The submission code takes the
list this module returns and nothing else.

The grammar is DVC's ``dvc exp run --queue -S`` grammar, which is Hydra's override
grammar, parsed by Hydra's own ``OverridesParser`` (hydra-core comes with dvc)::

    -S train.lr=0.1,0.05                 comma: one axis, two values
    -S 'train.epochs=range(10,30,10)'    10, 20 (start, stop exclusive, step; floats allowed)
    -S 'train.model=choice(tutorial,resnet18)'
    -S train.augment=true,false          values are typed: int, float, bool, string
    -S train.seed=3                      one value: every point gets it

Each ``-S`` is one axis; the grid is their cartesian product, in the order given
(the last axis varies fastest). Grid only: ``interval()``, ``glob()`` and
``shuffle()`` are refused, as are ``+key``/``~key``/``key@package`` (a sweep
changes keys already in params.yaml; it adds and deletes none).
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import random
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hpcpipe.config import read_yaml
from hpcpipe.validation import ConfigError, build, did_you_mean

GRAMMAR = "KEY=VALUE[,VALUE...], KEY=choice(VALUE,...) or KEY=range(start,stop[,step])"
MAX_NAME = 40
# Hydra reads `range(5)` as range(0,5); the documented grammar asks for start and stop.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _plain(value: Any) -> Any:
    """Hydra hands quoted sweep values back as ``QuotedString``; params want plain str."""
    from hydra.core.override_parser.types import QuotedString

    if isinstance(value, QuotedString):
        return value.text
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _axis(override: str) -> tuple[str, list[Any]]:
    """One ``-S`` string -> (dotted key, its values), or a one-line ConfigError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType, ValueType

    where = f"-S '{override}'"
    key, eq, value = override.partition("=")
    if not eq or not key.strip() or not value.strip():
        raise ConfigError(f"{where}: expected {GRAMMAR}")
    try:
        (parsed,) = OverridesParser.create().parse_overrides([override])
    except Exception:  # hydra raises OverrideParseException, HydraException or ValueError (step 0)
        raise ConfigError(f"{where}: expected {GRAMMAR}") from None
    if parsed.type is not OverrideType.CHANGE or parsed.package is not None:
        raise ConfigError(f"{where}: only KEY=VALUE is supported (no +KEY, ~KEY or KEY@package)")
    if parsed.value_type is ValueType.INTERVAL_SWEEP:
        msg = "interval() is not supported; a sweep is a grid: list values or use range()"
        raise ConfigError(f"{where}: {msg}")
    if "shuffle(" in value.replace(" ", ""):
        raise ConfigError(f"{where}: shuffle() is not supported; grid order must be reproducible")
    if not parsed.is_sweep_override():
        return parsed.key_or_group, [_plain(parsed.value())]
    try:
        values = [_plain(v) for v in parsed.sweep_iterator()]
    except Exception:  # glob() needs a Hydra config loader, which a params file does not have
        raise ConfigError(f"{where}: expected {GRAMMAR}") from None
    if parsed.value_type is ValueType.RANGE_SWEEP:
        # Float ranges accumulate: range(0.1,0.5,0.1) gives 0.30000000000000004.
        values = [float(f"{v:.12g}") if isinstance(v, float) else v for v in values]
    if not values:
        raise ConfigError(f"{where}: gives no values; expected start < stop for a positive step")
    if len({_text(v) for v in values}) != len(values):
        raise ConfigError(f"{where}: a value is repeated; each grid point must differ")
    return parsed.key_or_group, values


def expand_grid(overrides: Sequence[str]) -> list[dict[str, Any]]:
    """The cartesian product of the ``-S`` overrides, in the order given.

    No overrides give one empty point (the params as they are).
    """
    axes: dict[str, list[Any]] = {}
    for override in overrides:
        key, values = _axis(override)
        if key in axes:
            raise ConfigError(f"-S '{override}': {key} is already swept by an earlier -S; give it once")
        axes[key] = values
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def random_subset(points: Sequence[dict[str, Any]], k: int, seed: int = 0) -> list[dict[str, Any]]:
    """``--random K``: K points chosen by ``seed``, kept in grid order. K >= len keeps all."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"--random: expected a whole number >= 1, got {k!r}")
    if k >= len(points):
        return list(points)
    chosen = sorted(random.Random(seed).sample(range(len(points)), k))
    return [points[i] for i in chosen]


def apply_point(params: Mapping[str, Any], point: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``params`` (params.yaml's content) with the point's dotted keys set.

    Keys must already be in params.yaml, as ``dvc exp run -S`` requires.
    """
    result = copy.deepcopy(dict(params))
    for dotted, value in point.items():
        parts = dotted.split(".")
        node: Any = result
        for depth, part in enumerate(parts):
            walked = ".".join(parts[:depth])
            if not isinstance(node, dict):
                raise ConfigError(f"-S {dotted}: {walked} is a value, not a section")
            if part not in node:
                kind, inside = ("key", f" in {walked}") if depth else ("section", "")
                known = ", ".join(sorted(map(str, node))) or "none"
                hint = did_you_mean(part, list(map(str, node)), walked)
                raise ConfigError(f"-S {dotted}: unknown {kind} {part!r}{inside};{hint} known: {known}")
            if depth < len(parts) - 1:
                node = node[part]
        leaf = parts[-1]
        if isinstance(node[leaf], dict):
            raise ConfigError(f"-S {dotted}: {dotted} is a section; set its keys instead")
        node[leaf] = value
    return result


def _text(value: Any) -> str:
    """A value as it would be written after ``-S key=`` (YAML spelling for bool and null)."""
    if isinstance(value, bool) or value is None or isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def describe(point: Mapping[str, Any]) -> str:
    """``train.lr=0.1, train.epochs=10``: a point as the user typed it."""
    return ", ".join(f"{key}={_text(value)}" for key, value in point.items()) or "params.yaml as is"


def _same_kind(current: Any, value: Any) -> bool:
    """A swept value keeps the type of the value it replaces (an int is a number too)."""
    if current is None or value is None:
        return True
    if isinstance(current, bool) or isinstance(value, bool):
        return isinstance(current, bool) and isinstance(value, bool)
    if isinstance(current, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(current))


def _kind(value: Any) -> str:
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(type(value), type(value).__name__)


def validate_points(
    params_path: Path, points: Sequence[Mapping[str, Any]], schemas: Mapping[str, type] | None = None
) -> list[dict[str, Any]]:
    """Every point applied to the params file; 1-based point numbers in errors.

    Any project (no schema): each key must exist (DVC's rule) and keep the type of its
    current value. Sections that a function stage declares a schema for are checked
    against it as well.
    """
    params_path = Path(params_path)
    raw = read_yaml(params_path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{params_path.name}: expected a mapping of sections, got {raw!r}")
    checked = []
    for number, point in enumerate(points, start=1):
        try:
            applied = apply_point(raw, point)
            for key, value in point.items():
                current = _lookup(raw, key)
                if not _same_kind(current, value):
                    raise ConfigError(
                        f"{params_path.name}: {key}: expected {_kind(current)} like its value "
                        f"{current!r}, got {value!r}"
                    )
            for section, schema in (schemas or {}).items():
                if section in applied:
                    build(schema, applied[section], source=params_path.name, prefix=section)
        except ConfigError as err:
            raise ConfigError(f"point {number} ({describe(point)}): {err}") from None
        checked.append(applied)
    return checked


def _lookup(params: Mapping[str, Any], dotted: str) -> Any:
    node: Any = params
    for part in dotted.split("."):
        node = node[part]
    return node


def point_name(point: Mapping[str, Any]) -> str:
    """``lr-0.1-epochs-10``: short, stable, safe as a file name and a DVC experiment (git ref) name.

    Built from each key's last part; names longer than MAX_NAME, or that had to be
    altered to be safe, end in a hash of the whole point, so distinct points never share one.
    """
    if not point:
        return "base"
    plain = "-".join(f"{key.rsplit('.', 1)[-1]}-{_text(value)}" for key, value in point.items())
    safe = _UNSAFE.sub("_", plain).replace("..", "_")
    if safe == plain and len(safe) <= MAX_NAME and not safe.endswith(".lock"):
        return safe
    digest = hashlib.sha1(json.dumps(point, sort_keys=True).encode()).hexdigest()[:8]
    return f"{safe[: MAX_NAME - 9].rstrip('.-_')}-{digest}"
