"""A YAML params or ``vars`` file read exactly as DVC reads it, without importing DVC.

Importing DVC to read one value costs 0.05 s (its logger and progress bars); the
launcher's refresh of a remembered stage (``stage_memo``) needs only this file's
values. DVC parses params and vars files with ruamel's safe loader, YAML 1.2
(``dvc/utils/serialize/_yaml.py``: ``YAML(typ="safe").load(text) or {}``), so ``1e-5``
is the float 1e-05 and ``yes`` the string "yes"; this module makes the same call, and a
test holds it to DVC's answer. Key paths are DVC's too: ``train.lr`` walks mappings,
a number walks a list (``models.0``), as ``dpath.get(config, key, separator=".")``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

YAML_SUFFIXES = (".yaml", ".yml")
GLOB = set("*?[]")
_ABSENT = object()


def load_yaml(text: bytes) -> Any:
    """The file's data as DVC's ``parse_yaml`` returns it (an empty file is ``{}``)."""
    from ruamel.yaml import YAML

    return YAML(typ="safe").load(text) or {}


def canonical(value: Any) -> str | None:
    """A text that is equal for two values exactly when DVC would interpolate or
    compare them the same: JSON with sorted keys (so ``1``, ``1.0`` and ``true`` differ).
    None for a value JSON cannot hold faithfully (a date, NaN, a non-text key)."""
    try:
        text = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError):
        return None
    return text if json.loads(text) == value else None


def lookup(config: Any, key: str) -> Any:
    """The value at DVC key path ``key``, or ``_ABSENT``."""
    node = config
    for part in key.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return _ABSENT
    return node


def is_absent(value: Any) -> bool:
    return value is _ABSENT


def select(config: Any, keys: Iterable[str]) -> dict[str, Any] | None:
    """DVC's ``read_param_file(..., flatten=True)``: the value of each key present,
    keyed by its path; the whole file when ``keys`` is empty. None when a key is a glob
    (DVC's dpath would expand it; the caller asks DVC instead)."""
    keys = list(keys)
    if not keys:
        return config
    if any(GLOB & set(key) for key in keys):
        return None
    found = {key: lookup(config, key) for key in keys}
    return {key: value for key, value in found.items() if not is_absent(value)}


def shape(config: Any) -> str:
    """A digest of the file's key structure and value types, not its values: DVC merges
    ``vars`` files key by key, so a new, removed or retyped key may change how a stage
    resolves (or make DVC refuse it); a changed value of an untracked key cannot."""

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {str(k): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return type(node).__name__

    return hashlib.sha256(json.dumps(walk(config), sort_keys=True).encode()).hexdigest()[:16]
