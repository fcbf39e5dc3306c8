"""Stages for launcher tests, declared in the temp project's dvc.yaml as a user declares them.

The launcher finds a stage in dvc.yaml (through DVC's parser) and takes its outs and
params from there, so a test adds its stage to the copied example project's dvc.yaml
and then runs it as a user would: ``main(args)`` (``hpcpipe run ...`` in-process),
the ``hpcpipe`` command, or ``dvc repro``. The stage's ``cmd`` is exactly that command.

- ``add_fake_stage(root, "fail_halfway")``: a function stage of tests/support/fake_stages.py
  (``hpcpipe run fake --fn fake_stages:fail_halfway --source source.txt --result
  out/result.txt --report out/report``), reading ``source.txt`` and the ``train``
  params, writing ``out/result.txt`` and ``out/report``;
- ``add_command_stage(root, "hello", ["python", "fake_stages.py", "hello", "out/hello.json"],
  outs=["out/hello.json"])``: a command stage (``hpcpipe run hello -- python ...``).

Both return the ``hpcpipe`` arguments of the stage's command. ``start(root, "sleep_then_write")``
declares a fake stage and starts the `hpcpipe` command for it as `dvc repro` does (the
``slurm_project`` fixture: the same project on the test cluster); ``start_logged`` does
the same with the launcher's stderr in a file a test reads while it runs; ``ledger_job``,
``quoted`` and ``files_containing`` read what a launch left.

For unit tests that call the job side directly, ``fake_spec`` and ``fake_params`` are what
the launcher hands a fake stage's job, and ``function_stage_work`` builds what ``hpcpipe
run --fn`` submits (``stage_work.function_work``) from a stage given by hand instead of by
DVC. ``MOVES`` and ``is_move`` name the renames of a fake stage's two-output publication.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from hpcpipe.launch.dvc_stage import in_directory
from tests.support import REPO

FAKE_PATHS = {"source": "source.txt", "result": "out/result.txt", "report": "out/report"}
FAKE_OUTS = ("out/result.txt", "out/report")
FAKE_SECTIONS = ("train",)  # what the fake stages' schema reads (see fake_stages.SCHEMA)
# The renames of a fake stage's two-output publication, in order: each output's previous
# one aside, then its new one in (result.txt, then report/).
MOVES = ("result aside", "result in", "report aside", "report in")


def role_args(paths: Mapping[str, str]) -> list[str]:
    """{"source": "source.txt"} -> ["--source", "source.txt"]."""
    return [arg for role, path in paths.items() for arg in (f"--{role}", path)]


def fake_stage_args(function: str, name: str = "fake") -> list[str]:
    """`hpcpipe` arguments that run ``fake_stages.FUNCTION`` as the function stage ``name``."""
    return ["run", name, "--fn", f"fake_stages:{function}", *role_args(FAKE_PATHS)]


def add_stage(root: Path, name: str, stage: Mapping[str, Any]) -> None:
    """Add (or replace) one stage of ``root``'s dvc.yaml."""
    path = root / "dvc.yaml"
    pipeline = yaml.safe_load(path.read_text())
    pipeline.setdefault("stages", {})[name] = dict(stage)
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))


def add_fake_stage(root: Path, function: str = "write_outputs", name: str = "fake") -> list[str]:
    """Declare ``fake_stages.FUNCTION`` as stage ``name`` in dvc.yaml; returns its `hpcpipe` args."""
    args = fake_stage_args(function, name)
    add_stage(
        root,
        name,
        {
            "cmd": shlex.join(["hpcpipe", *args]),
            "deps": [FAKE_PATHS["source"], "fake_stages.py"],
            "params": list(FAKE_SECTIONS),
            "outs": list(FAKE_OUTS),
        },
    )
    return args


def add_command_stage(
    root: Path, name: str, command: Sequence[str], outs: Sequence[str] = (), deps: Sequence[str] = ()
) -> list[str]:
    """Declare ``hpcpipe run NAME -- COMMAND`` as stage ``name``; returns its `hpcpipe` args."""
    args = ["run", name, "--", *command]
    stage: dict[str, Any] = {"cmd": shlex.join(["hpcpipe", *args])}
    if deps:
        stage["deps"] = list(deps)
    if outs:
        stage["outs"] = list(outs)
    add_stage(root, name, stage)
    return args


def launch(project: Path, args: Sequence[str], env: Mapping[str, str] | None = None, **popen: Any) -> Any:
    """The `hpcpipe` command with ``args`` in ``project``, as `dvc repro` starts a stage's cmd,
    in its own session (a test signals it alone) with its output piped; a ``subprocess.Popen``."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen(
        ["hpcpipe", *args], cwd=project, env={**os.environ, **(env or {})}, text=True,
        start_new_session=True, **popen,
    )  # fmt: skip


def start(
    project: Path,
    function: str,
    profile: str | None = None,
    shims: Path | None = None,
    declare: bool = True,
    **popen: Any,
) -> Any:
    """``launch`` the fake function stage ``fake_stages.FUNCTION`` (declared in dvc.yaml first,
    unless ``declare`` is False), under cluster ``profile`` when given (else $HPCPIPE_CLUSTER),
    with the folder ``shims`` first on PATH when given."""
    env = {"HPCPIPE_CLUSTER": profile} if profile else {}
    if shims is not None:
        env["PATH"] = f"{shims}{os.pathsep}{os.environ['PATH']}"
    args = add_fake_stage(project, function) if declare else fake_stage_args(function)
    return launch(project, args, env, **popen)


def start_logged(project: Path, function: str, log: Path, **kwargs: Any) -> Any:
    """``start``, with the launcher's stderr written to ``log``: a test waits for a line
    ("reattached to job ...") before it lets the job go on, and reads all of it at the end."""
    with log.open("w") as sink:
        return start(project, function, stderr=sink, **kwargs)


def let_go(project: Path) -> None:
    """Lets ``fake_stages.wait_for_go`` finish: creates the file it waits for."""
    (project / "go").touch()


@pytest.fixture
def slurm_project(fake_stage_project: Path, slurm_cluster: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake-stage project on the test cluster, plus `testcluster-1min`: the same
    profile with a one-minute time limit."""
    monkeypatch.setenv("HPCPIPE_CLUSTER", "testcluster")
    short = {"extends": "testcluster", "defaults": {"time_min": 1}}
    (fake_stage_project / "configs" / "cluster" / "testcluster-1min.yaml").write_text(yaml.safe_dump(short))
    return fake_stage_project


def ledger_job(project: Path, stage: str = "fake") -> str | None:
    """The job id the project's ledger holds for ``stage`` (None: no entry)."""
    from hpcpipe.launch.ledger import Ledger

    entry = Ledger(project / ".hpcpipe" / "jobs" / "ledger").get(stage)
    return entry.job_id if entry else None


def quoted(err: str) -> list[str]:
    """The stderr tail the launcher quotes after a failure (`  | ` lines), without the prefix."""
    tail = err[err.index("last ") :].splitlines()
    return [line[4:] for line in tail if line.startswith("  | ")]


def files_containing(folder: Path, secret: str) -> list[Path]:
    """The files under ``folder`` whose bytes hold ``secret``."""
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def fake_spec(function: str) -> Any:
    """The ``StageSpec`` of ``fake_stages.FUNCTION`` as stage ``fake`` (what its job runs)."""
    from hpcpipe.launch.spec import StageSpec

    return StageSpec(
        name="fake",
        target=f"tests.support.fake_stages:{function}",
        sections=FAKE_SECTIONS,
        inputs=("source",),
        outputs=("result", "report"),
    )


def is_move(target: Path, which: str) -> bool:
    """Whether a rename to ``target`` is the move named ``which`` (one of ``MOVES``)."""
    output, direction = which.split()
    name = "result.txt" if output == "result" else "report"
    if direction == "in":
        return target.name == name
    return target.name.startswith(f".{name}.tmp-old-")


def fake_params(params_file: Path) -> SimpleNamespace:
    """The ``params`` a fake function stage receives, from a params file: its ``train``
    section checked against the fake stages' schema, and no W&B settings."""
    from hpcpipe.stage_function import declaration, stage_params
    from tests.support.fake_stages import write_outputs

    raw = yaml.safe_load(params_file.read_text())
    values = {section: raw[section] for section in FAKE_SECTIONS}
    return stage_params(values, declaration(write_outputs), "fake", str(params_file), {"wandb": None})


def function_stage_work(
    root: Path,
    name: str,
    target: str,
    paths: Mapping[str, str],
    outs: Sequence[str],
    params: Mapping[str, Any],
    fingerprint: str = "0123456789abcdef",
) -> Any:
    """What ``hpcpipe run NAME --fn TARGET --ROLE PATH...`` submits (a ``launcher.Work``) for a
    stage whose DVC outs are ``outs`` and whose declared params are ``params`` (section ->
    values), run in project ``root`` under the shipped ``local`` profile. Built by
    ``stage_work.function_work`` itself: the spec's roles, outputs, resumability and
    tracking come from the function's declaration and the outs, as in a real launch.
    ``work.args`` is ``(spec, params, paths, workdir, context)`` for ``job.run_stage``."""
    from hpcpipe.config import load_profile
    from hpcpipe.launch.dvc_stage import StageDef
    from hpcpipe.launch.stage_work import function_work

    argv = ["hpcpipe", "run", name, "--fn", target, *role_args(paths)]
    stage = StageDef(
        name=name,
        cmd=shlex.join(argv),
        deps=(),
        outs=tuple(outs),
        params=dict(params),
        params_files=("params.yaml",),
        fingerprint=fingerprint,
        project_stages=(name,),
    )
    profile = load_profile("local", root)
    with in_directory(root):  # `hpcpipe run` resolves role paths against the cwd: the project root
        return function_work(stage, target, role_args(paths), profile, root, "params.yaml")


def example_stage_work(
    root: Path, name: str, paths: Mapping[str, str], outs: Sequence[str], params: Any
) -> Any:
    """``function_stage_work`` for the example's stage ``name``: its ``--fn`` target and its
    params sections as the repository's dvc.yaml declares them, their values from
    ``params`` (a ``hpcpipe.config.Params``)."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]
    argv = shlex.split(stage["cmd"])
    target = argv[argv.index("--fn") + 1]
    values = {section: dataclasses.asdict(getattr(params, section)) for section in stage["params"]}
    return function_stage_work(root, name, target, paths, outs, values)
