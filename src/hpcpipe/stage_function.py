"""Declaring a Python function as an hpcpipe function stage, and checking its params.

    from hpcpipe.stage_function import stage_function

    @stage_function(schema={"train": TrainParams})
    def train(params, *, prepared, model, metrics, checkpoint=None): ...

and in dvc.yaml: ``cmd: hpcpipe run train --fn mypkg.stages:train --prepared data/p --model m.pt ...``.

The launcher imports the function's module on the login node to read this
declaration and check the params before anything is submitted, so a stage module
should keep heavy imports (torch) inside the function body. ``schema`` maps a params
section to a dataclass that ``hpcpipe.validation.build`` checks it against; sections
without one reach the function as plain values. ``requires`` names the modules the body
imports (``("torch",)``): one that is missing stops the stage on the login node, in one
line naming what to install, instead of failing in the job after it waited in the queue.
A ``checkpoint`` parameter makes the stage resumable (requeued at its time limit,
resuming from that file). ``tracked=False`` opens no W&B run for it.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import shlex
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

from hpcpipe.validation import ConfigError, build

F = TypeVar("F", bound=Callable[..., Any])
ATTRIBUTE = "__hpcpipe_stage__"
# What a stage module that cannot be imported most likely lacks, and the extra that brings it.
EXTRAS = {"torch": "cifar10", "torchvision": "cifar10"}


@dataclass(frozen=True)
class Declaration:
    schema: Mapping[str, type] = field(default_factory=dict)
    tracked: bool = True
    requires: tuple[str, ...] = ()


def stage_function(
    *, schema: Mapping[str, type] | None = None, tracked: bool = True, requires: Iterable[str] = ()
) -> Callable[[F], F]:
    modules = (requires,) if isinstance(requires, str) else tuple(requires)  # requires="torch" too

    def mark(func: F) -> F:
        setattr(func, ATTRIBUTE, Declaration(dict(schema or {}), tracked, modules))
        return func

    return mark


def missing_message(target: str, module: str) -> str:
    """The one line for a stage whose module ``module`` is not installed: the extra of
    hpcpipe that brings it where there is one (the example's torch), else the module."""
    if module in EXTRAS:
        how = f"pip install 'hpcpipe[{EXTRAS[module]}]' (or module load pytorch)"
    else:
        how = f"install {module} in this environment"
    return f"--fn {target}: needs {module}, which is not installed; {how}"


def is_installed(module: str) -> bool:
    """Whether ``import module`` can find it, without importing it (torch takes seconds)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package that fails, or a broken entry in sys.modules
        return False


def import_target(target: str, root: str | Path | None = None) -> Any:
    """Resolve ``"package.module:function"``; a bad target is one ConfigError line.

    ``root``, the project, goes first on the import path, as ``python -m`` would put it:
    a stage module of the project itself (not installed) imports from the `hpcpipe`
    console script on the login node and in the job alike.
    """
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--fn {target!r}: expected package.module:function")
    if root is not None and str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        missing = (err.name or "").partition(".")[0]
        if missing in EXTRAS:
            raise ConfigError(missing_message(target, missing)) from None
        raise ConfigError(f"--fn {target}: cannot import {module_name}: {err}") from None
    try:
        func = getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"--fn {target}: {module_name} has no {attr!r}") from None
    for required in declaration(func).requires:
        if not is_installed(required):
            raise ConfigError(missing_message(target, required))
    return func


def declaration(func: Callable[..., Any]) -> Declaration:
    return getattr(func, ATTRIBUTE, None) or Declaration()


def is_resumable(func: Callable[..., Any]) -> bool:
    return "checkpoint" in inspect.signature(func).parameters


def roles_of(func: Callable[..., Any]) -> list[str]:
    """The path arguments a function takes: its keyword parameters after ``params``."""
    names = list(inspect.signature(func).parameters)
    return [n for n in names[1:] if n != "checkpoint"]


def stage_params(
    values: Mapping[str, Any],
    decl: Declaration,
    stage: str,
    source: str = "params.yaml",
    extra: Mapping[str, Any] | None = None,
) -> SimpleNamespace:
    """The ``params`` a function stage receives: one attribute per declared section, each
    checked against the schema's dataclass where there is one. ``extra`` adds sections
    that are not stage inputs (the W&B settings)."""
    missing = [s for s in decl.schema if s not in values]
    if missing:
        raise ConfigError(
            f"stage {stage}: its function reads params section(s) {', '.join(missing)}, "
            "which the stage does not list under params: in dvc.yaml"
        )
    sections = {
        name: build(decl.schema[name], value, source=source, prefix=name) if name in decl.schema else value
        for name, value in values.items()
    }
    return SimpleNamespace(**sections, **(extra or {}))


def function_schemas(commands: Iterable[str], root: str | Path | None = None) -> dict[str, type]:
    """The params schemas of the function stages among ``commands`` (dvc.yaml cmds):
    ``hpcpipe run NAME --fn MOD:FUNC ...`` declares its sections' dataclasses."""
    schemas: dict[str, type] = {}
    for command in commands:
        words = shlex.split(command) if command else []
        words = words[: words.index("--")] if "--" in words else words  # after --: the command's own
        if "--fn" in words[:-1] and words[:2] == ["hpcpipe", "run"]:
            schemas.update(declaration(import_target(words[words.index("--fn") + 1], root)).schema)
    return schemas
