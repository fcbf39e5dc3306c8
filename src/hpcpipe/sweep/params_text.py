"""Each point's params.yaml: the user's file with the point's values, comments and layout kept.

Round-trip YAML (ruamel), as ``dvc exp run -S`` writes it, so ``dvc exp apply`` brings
back the user's file with only the swept values changed. Why a template: a ruamel
dump costs ~10 ms, 10 s of a 1,000-point submission. So the document is dumped once
with a placeholder where each swept key's value goes, and each point's file is that
text with the placeholders replaced by the values as ruamel writes them (each value
rendered once). Where that cannot give ruamel's own text (a value that takes more
than one line, a placeholder not found exactly once), every point is dumped in full.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any


def _yaml() -> Any:
    from ruamel.yaml import YAML

    return YAML()


def _set(doc: Any, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for part in parents:
        node = node[part]
    node[leaf] = value


def _dump(doc: Any) -> str:
    out = io.StringIO()
    _yaml().dump(doc, out)
    return out.getvalue()


def full_text(base: Any, point: Mapping[str, Any], group: str | None) -> str:
    """The point's params.yaml by a full ruamel dump (what ``PointParams`` must equal)."""
    doc = copy.deepcopy(base)
    for dotted, value in point.items():
        _set(doc, dotted, value)
    if group is not None and isinstance(doc.get("wandb"), dict) and "group" in doc["wandb"]:
        doc["wandb"]["group"] = group
    return _dump(doc)


class PointParams:
    """Renders the params.yaml of any point over ``keys`` of ``base`` (``load_round_trip``'s
    document), with ``wandb.group`` set to ``group`` where the file has that key."""

    def __init__(self, base: Any, keys: Sequence[str], group: str | None) -> None:
        self.base, self.keys, self.group = base, list(keys), group
        self.marks = [f"hpcpipe-sweep-value-{i}" for i in range(len(self.keys))]
        self.template = full_text(base, dict(zip(self.keys, self.marks, strict=True)), group)
        self.usable = all(self.template.count(mark) == 1 for mark in self.marks)
        self.rendered: dict[tuple[type, Any], str | None] = {}
        # A comment after a value keeps its column where the value leaves room (ruamel's rule)
        self.lines: list[tuple[str, str, str, int | None]] = []  # line, before, comment, column
        for mark, key in zip(self.marks, self.keys, strict=True):
            found = re.search(rf"(?m)^(.*){re.escape(mark)}( *)(#.*)?$", self.template)
            if not found:
                self.usable = False
                break
            before, comment = found.group(1), found.group(3) or ""
            self.lines.append((found.group(0), before, comment, _comment_column(base, key)))
            self.usable = self.usable and (not comment or self.lines[-1][3] is not None)

    def _scalar(self, value: Any) -> str | None:
        key = (type(value), value if not isinstance(value, (list, dict)) else repr(value))
        if key not in self.rendered:
            text = _dump({"k": value})
            one = text.startswith("k: ") and text.count("\n") == 1
            self.rendered[key] = text[3:-1] if one else None
        return self.rendered[key]

    def text(self, point: Mapping[str, Any]) -> str:
        if not self.usable or list(point) != self.keys:
            return full_text(self.base, point, self.group)
        text = self.template
        for (line, before, comment, column), key in zip(self.lines, self.keys, strict=True):
            scalar = self._scalar(point[key])
            if scalar is None:
                return full_text(self.base, point, self.group)
            new = before + scalar
            if comment:
                new += " " * max(1, (column or 0) - len(new)) + comment
            text = text.replace(line, new, 1)
        return text


def _comment_column(base: Any, dotted: str) -> int | None:
    """The column of the comment after ``dotted``'s value in the user's file, if any."""
    *parents, leaf = dotted.split(".")
    node = base
    for part in parents:
        node = node[part]
    items = getattr(getattr(node, "ca", None), "items", {}).get(leaf)
    token = items[2] if items and len(items) > 2 else None
    return getattr(token, "column", None)
