"""Turn a YAML mapping into a frozen dataclass, or fail with one line a user can act on.

Why not pydantic or jsonschema: the sections are a handful of flat scalars, and the
one thing that matters is the error text. Every failure names the file, the dotted
key, the value found and what was expected, e.g.
``params.yaml: train.lr: expected a number > 0, got 'fast'``.

A field declares its rule with ``rule(...)`` in its dataclass metadata; the loader
checks unknown keys, missing keys, types and the rule, in that order. A misspelt key
is answered with the closest known one (``did you mean train.lr?``); ``.inf`` and
``.nan`` are never numbers here (a learning rate of ``.inf`` passes ``> 0``, then
ruins a run hours later).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is wrong; the message is the one line shown to the user."""


class UsageError(Exception):
    """Bad command-line input; the message is the one line shown (exit status 2)."""


def rule(check: Callable[[Any], bool], expected: str, **field_kwargs: Any) -> Any:
    """A dataclass field whose value must pass ``check``; ``expected`` completes 'expected ...'."""
    metadata = {"check": check, "expected": expected}
    return dataclasses.field(metadata=metadata, **field_kwargs)


def positive(**field_kwargs: Any) -> Any:
    return rule(lambda v: v > 0, "a number > 0", **field_kwargs)


def non_negative(**field_kwargs: Any) -> Any:
    return rule(lambda v: v >= 0, "a number >= 0", **field_kwargs)


def one_of(*choices: str, **field_kwargs: Any) -> Any:
    listed = ", ".join(repr(c) for c in choices)
    return rule(lambda v: v in choices, f"one of {listed}", **field_kwargs)


def did_you_mean(key: object, known: list[str], prefix: str = "") -> str:
    """``" did you mean train.lr?"`` when a known key is close to ``key``, else ``""``.

    ``prefix`` is the dotted section, so the suggestion is the whole key to write.
    """
    close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
    if not close:
        return ""
    return f" did you mean {prefix}.{close[0]}?" if prefix else f" did you mean {close[0]}?"


def _non_finite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _describe_type(tp: Any) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
    if tp in names:
        return names[tp]
    origin = typing.get_origin(tp)
    if origin is tuple:
        return f"a list of {_describe_type(typing.get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin in (typing.Union, types.UnionType):
        parts = [_describe_type(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + " (or null)"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, converted). Accepts ints for floats; never bools for numbers."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return True, None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            return False, value
        items = []
        for item in value:
            ok, converted = _coerce(item, item_type)
            if not ok:
                return False, value
            items.append(converted)
        return True, tuple(items)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or _non_finite(value):
            return False, value
        try:
            return True, float(value)
        except OverflowError:  # an integer literal past float's range
            return False, value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


def build(cls: type[T], raw: Any, *, source: str | Path, prefix: str) -> T:
    """Validate ``raw`` (a mapping from YAML) against dataclass ``cls``.

    ``source`` is the file named in errors, ``prefix`` the dotted path of this section.
    Nested dataclass fields are built recursively.
    """
    where = f"{source}: {prefix}" if prefix else str(source)
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    for key in raw:
        if key not in fields:
            key_path = f"{prefix}.{key}" if prefix else str(key)
            hint = did_you_mean(key, list(fields), prefix)
            raise ConfigError(
                f"{source}: {key_path}: unknown key;{hint} known keys are {', '.join(sorted(fields))}"
            )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key_path = f"{prefix}.{name}" if prefix else name
        if name not in raw:
            no_default = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
            if no_default:
                raise ConfigError(f"{source}: {key_path}: missing; expected {_describe_type(hints[name])}")
            continue
        value = raw[name]
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = build(tp, value, source=source, prefix=key_path)
            continue
        ok, converted = _coerce(value, tp)
        check = field.metadata.get("check")
        expected = field.metadata.get("expected") or _describe_type(tp)
        if tp is int:
            expected = expected.replace("a number", "an integer")
        if ok and check is not None and converted is not None:
            ok = bool(check(converted))
        if not ok and _non_finite(value) and _coerce(1.0, tp)[0]:  # a number field, given inf or nan
            raise ConfigError(f"{source}: {key_path}: {value!r} is not a finite number; expected {expected}")
        if not ok:
            raise ConfigError(f"{source}: {key_path}: expected {expected}, got {value!r}")
        values[name] = converted
    return cls(**values)
