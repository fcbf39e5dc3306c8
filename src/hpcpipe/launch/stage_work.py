"""From ``hpcpipe run NAME ...`` to the job to submit, for both kinds of stage.

- command stage: ``hpcpipe run NAME -- CMD ARGS...``; the job runs CMD (``command_job``).
- function stage: ``hpcpipe run NAME --fn package.module:function --ROLE PATH ...``; the
  job calls the function with the stage's params and those paths (``job.run_stage``).

Both start from the stage as DVC resolved it (``dvc_stage.StageDef``): its outs are what
must exist for success, its params are what a function receives, its fingerprint
keys reattach, checkpoints and the W&B run. Everything is checked here, before
anything is submitted.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hpcpipe.config import Profile, WandbParams, read_yaml
from hpcpipe.launch import job as job_side
from hpcpipe.launch.command_job import CommandJob, CommandRunner
from hpcpipe.launch.dvc_stage import StageDef
from hpcpipe.launch.launcher import Work, run_context
from hpcpipe.launch.ledger import file_safe
from hpcpipe.launch.profiles import signal_delay_s
from hpcpipe.launch.spec import StageSpec
from hpcpipe.stage_function import declaration, import_target, is_resumable, roles_of, stage_params
from hpcpipe.validation import UsageError, build


def wandb_settings(root: Path, params_file: str) -> WandbParams | None:
    """The params file's ``wandb:`` section, checked; None when the file or section is absent."""
    path = root / params_file
    if not path.exists():
        return None
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict) or "wandb" not in raw:
        return None
    return build(WandbParams, raw["wandb"], source=params_file, prefix="wandb")


def checkpoint_dir(root: Path, profile: Profile, stage: StageDef) -> Path:
    """Beside the stage's job folder (shared filesystem), keyed by the fingerprint: a changed
    stage never resumes another's state, a changed profile keeps it."""
    return (root / profile.job_dir / file_safe(stage.name) / f"checkpoint-{stage.fingerprint}").resolve()


def command_work(
    stage: StageDef, argv: Sequence[str], profile: Profile, root: Path, params_file: str
) -> Work:
    res = profile.resources(stage.name)
    job = CommandJob(
        argv=tuple(argv),
        workdir=str(root),
        stage=stage.name,
        checkpoint_dir=str(checkpoint_dir(root, profile, stage)),
        outs=stage.outs,
        forward=profile.command_signal,
        # the warning comes signal_delay_s before the limit: leave submitit time to requeue
        grace_s=max(1.0, min(profile.command_grace_s, signal_delay_s(res.time_min) - 5)),
        context=run_context(stage.name, profile, stage.fingerprint),
        wandb=wandb_settings(root, params_file),
    )
    return Work(stage.name, stage.fingerprint, CommandRunner(), (job,), stage.outs)


def _role_paths(target: str, func: Any, extra: Sequence[str]) -> dict[str, str]:
    """``--prepared data/prepared --model m.pt`` -> {role: path}; the roles are the function's."""
    roles = roles_of(func)
    parser = argparse.ArgumentParser(prog="hpcpipe run", add_help=False, exit_on_error=False)
    for role in roles:
        parser.add_argument(f"--{role}", dest=role, metavar="PATH")
    expected = " ".join(f"--{r} PATH" for r in roles)
    try:
        known, unknown = parser.parse_known_args(list(extra))
    except argparse.ArgumentError as err:
        raise UsageError(f"--fn {target}: {err}") from None
    if unknown:
        raise UsageError(f"--fn {target}: unexpected {' '.join(unknown)}; expected {expected}")
    missing = [f"--{r}" for r in roles if getattr(known, r) is None]
    if missing:
        raise UsageError(f"--fn {target}: missing {', '.join(missing)}; expected {expected}")
    return {role: getattr(known, role) for role in roles}


def relative_to_root(path: str, root: Path) -> str:
    """Paths are passed to the job relative to the project root (shared filesystem)."""
    absolute = Path(os.path.abspath(path))
    try:
        return str(absolute.relative_to(root.resolve()))
    except ValueError:
        return str(absolute)


def function_work(
    stage: StageDef, target: str, extra: Sequence[str], profile: Profile, root: Path, params_file: str
) -> Work:
    func = import_target(target, root)
    decl = declaration(func)
    paths = {role: relative_to_root(p, root) for role, p in _role_paths(target, func, extra).items()}
    outs = set(stage.outs)
    outputs = tuple(role for role, path in paths.items() if path in outs)
    source = stage.params_files[0] if len(stage.params_files) == 1 else "params"
    params = stage_params(
        stage.params, decl, stage.name, source, {"wandb": wandb_settings(root, params_file)}
    )
    spec = StageSpec(
        name=stage.name,
        target=target,
        sections=tuple(stage.params),
        inputs=tuple(role for role in paths if role not in outputs),
        outputs=outputs,
        tracked=decl.tracked,
        resumable=is_resumable(func),
        outs=stage.outs,
    )
    context = run_context(stage.name, profile, stage.fingerprint)
    function = job_side.stage_callable(spec)
    return Work(
        stage.name, stage.fingerprint, function, (spec, params, paths, str(root), context), stage.outs
    )
