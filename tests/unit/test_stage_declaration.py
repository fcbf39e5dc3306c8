"""Function stages: the declaration the launcher reads on the login node, before submitting."""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

import pytest

from hpcpipe.stage_function import (
    declaration,
    function_schemas,
    import_target,
    is_resumable,
    roles_of,
    stage_function,
    stage_params,
)
from hpcpipe.validation import ConfigError, positive


@dataclass(frozen=True)
class Lr:
    lr: float = positive()


@stage_function(schema={"train": Lr}, tracked=False)
def fit(params, *, data, model, checkpoint=None):
    return {}


def test_the_declaration_gives_schema_roles_resumability_and_tracking():
    decl = declaration(fit)
    assert decl.schema == {"train": Lr} and decl.tracked is False
    assert roles_of(fit) == ["data", "model"]
    assert is_resumable(fit) and not is_resumable(lambda params, *, out: None)
    assert declaration(lambda params: None).schema == {}


def test_params_are_checked_against_the_schema_and_other_sections_pass_as_they_are():
    params = stage_params({"train": {"lr": 0.1}, "data": {"n": 3}}, declaration(fit), "fit", "params.yaml")
    assert params.train == Lr(0.1) and params.data == {"n": 3}
    with pytest.raises(ConfigError, match=r"^params\.yaml: train\.lr: expected a number > 0, got -1$"):
        stage_params({"train": {"lr": -1}}, declaration(fit), "fit", "params.yaml")
    with pytest.raises(ConfigError, match="reads params section\\(s\\) train, which the stage does not list"):
        stage_params({"data": {}}, declaration(fit), "fit", "params.yaml")


def test_a_bad_target_is_one_line():
    with pytest.raises(ConfigError, match=r"expected package\.module:function"):
        import_target("hpcpipe.stages.train")
    with pytest.raises(ConfigError, match="cannot import no_such_module"):
        import_target("no_such_module:f")
    with pytest.raises(ConfigError, match=r"hpcpipe\.stages\.train has no 'nope'"):
        import_target("hpcpipe.stages.train:nope")


def test_a_stage_whose_module_needs_torch_names_the_extra(tmp_path, monkeypatch):
    """torch blocked in sys.modules stands in for a venv without it (`import torch` raises)."""
    (tmp_path / "torchy_stage.py").write_text("import torch\n\ndef f(params, *, out):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(
        ConfigError, match=r"needs torch, which is not installed; pip install 'hpcpipe\[cifar10\]'"
    ):
        import_target("torchy_stage:f")


def test_the_example_stages_import_without_torch_and_name_the_extra_they_require(monkeypatch):
    """The launcher imports a --fn module to read its declaration: the example keeps torch inside,
    and declares it (``requires``), so a venv without torch stops on the login node in one line."""
    for name in [m for m in sys.modules if m.startswith("hpcpipe.stages.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "torch", None)
    for target in ("prepare", "train", "evaluate"):
        module = importlib.import_module(f"hpcpipe.stages.{target}")
        assert declaration(getattr(module, target)).requires == ("torch", "torchvision")
        with pytest.raises(
            ConfigError,
            match=r"^--fn hpcpipe\.stages\.\w+:\w+: needs torch, which is not "
            r"installed; pip install 'hpcpipe\[cifar10\]' \(or module load pytorch\)$",
        ):
            import_target(f"hpcpipe.stages.{target}:{target}")


@stage_function(requires="no_such_mod")  # one name as a string: not its letters
def needs_a_missing_module(params, *, out):
    return {}


def test_a_required_module_that_is_missing_is_one_line_naming_it():
    with pytest.raises(
        ConfigError,
        match=r"^--fn tests\.unit\.test_stage_declaration:needs_a_missing_module: needs no_such_mod, "
        r"which is not installed; install no_such_mod in this environment$",
    ):
        import_target("tests.unit.test_stage_declaration:needs_a_missing_module")
    assert import_target("tests.unit.test_stage_declaration:fit").__name__ == "fit"  # nothing required


def test_function_schemas_come_from_the_function_stages_commands():
    commands = [
        "hpcpipe run train --fn hpcpipe.stages.train:train --prepared p --model m",
        "hpcpipe run report -- python report.py --fn x",  # a command stage's own --fn is not ours
        "python plain.py",
    ]
    assert set(function_schemas(commands)) == {"train"}
