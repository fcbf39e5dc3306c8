"""``hpcpipe sweep``: check everything, make the points' workspaces, submit once; and ``resume``.

Order of work, all on the login node, all before anything is queued:

1. expand and validate every point (``grid``): a bad value fails in milliseconds;
   then claim the sweep's name (``record.claim``: one of two sweeps of one name goes on);
2. take the project's snapshot (``snapshot``: HEAD + uncommitted changes, a git tree);
3. plan the pipeline (``pipeline``): which stages the swept keys change; check out once
   what their points need and link one folder per point from it (``points``); check
   that the unchanged upstream stages are up to date (``freshness``); if not, bring
   them up to date once, in the project (``dvc repro prepare``, same cluster profile);
4. finish the workspaces (cache settings, the project's ``dvc.lock``) and write the
   sweep's record; a failure before this point removes the workspaces again;
5. submit and, unless ``--detach``, wait (``drive``). A refused submission (MaxArraySize,
   a submit limit) is one line, and removes the workspaces and the record.

``resume`` submits the points that failed, were cancelled or never started, as a new array.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from hpcpipe.config import Profile, load_profile, resolve_profile_name
from hpcpipe.console import say
from hpcpipe.launch.executors import backend
from hpcpipe.launch.submission import SubmitRefused, Unrecorded
from hpcpipe.stage_function import function_schemas
from hpcpipe.sweep import drive, freshness, record, snapshot, workspace
from hpcpipe.sweep.grid import expand_grid, random_subset, validate_points
from hpcpipe.sweep.pipeline import DvcProject, plan
from hpcpipe.sweep.points import index_path, make_workspaces, points_of, remove_unsubmitted
from hpcpipe.sweep.record import Point, Sweep
from hpcpipe.sweep.report import table
from hpcpipe.sweep.watch import DONE, NOT_STARTED, final, refresh
from hpcpipe.validation import ConfigError


@dataclass(frozen=True)
class SweepRequest:
    overrides: list[str]
    name: str | None = None
    cluster: str | None = None
    random: int | None = None
    seed: int = 0
    parallelism: int | None = None
    detach: bool = False


def start(root: Path, request: SweepRequest) -> int:
    """``hpcpipe sweep -S ...``: check everything, then submit once; wait unless detached."""
    name = record.check_name(request.name or record.default_name())
    if (record.sweep_dir(root, name) / record.RECORD_FILE).exists():  # said early; claimed below
        raise ConfigError(f"sweep {name!r} exists; pick another --name, or see: hpcpipe sweep status {name}")
    points = expand_grid(request.overrides)
    if request.random is not None:
        points = random_subset(points, request.random, request.seed)
    validate_points(root / "params.yaml", points)
    profile_name = resolve_profile_name(request.cluster)
    profile = load_profile(profile_name, root)
    _check_profile(profile, request.detach)
    parallelism = _parallelism(request.parallelism, profile, len(points))
    keys = [key for point in points[:1] for key in point]
    commit = workspace.base_commit(root)
    entries = points_of(name, points)
    record.claim(root, name)  # from here on, a failure removes what this sweep made
    with _unless_submitted(root, name, entries):
        index = index_path(root, name)
        tree = snapshot.snapshot(root, commit, index)
        with DvcProject(root) as project:
            nodes = project.nodes()
            sweep_plan = plan(nodes, keys)
            if not sweep_plan.affected:
                raise ConfigError(
                    f"sweep: no stage reads {', '.join(keys) or 'the swept keys'}; points would not differ"
                )
            affected = set(sweep_plan.affected)
            schemas = function_schemas((n.cmd for n in nodes if n.name in affected), root)
            if schemas:
                validate_points(root / "params.yaml", points, schemas)
            outputs = {out for node in nodes for out in node.outs}
            missing = [f for f in workspace.untracked_files(root) if not any(_inside(f, o) for o in outputs)]
            if missing:
                listed = ", ".join(missing[:5])
                say(f"not in the points' workspaces (untracked; git add them to include): {listed}")
            make_workspaces(root, name, entries, snapshot.tree_files(root, index), nodes, sweep_plan.affected)
            cache_dir = project.cache_dir()
            stale = freshness.stale(project, nodes, sweep_plan.reused)
        if stale:
            say(f"sweep {name}: bringing {', '.join(sweep_plan.upstream)} up to date once, for every point")
            from hpcpipe.launch.driver import repro_in_foreground

            code = repro_in_foreground(profile_name, list(sweep_plan.upstream), root)
            if code != 0:
                say(f"sweep {name}: dvc repro {' '.join(sweep_plan.upstream)} failed; nothing was submitted")
                remove_unsubmitted(root, name, entries)
                return code
        for point in entries:
            workspace.finish(root, root / point.workspace, cache_dir)  # dvc.lock as it is now
        sweep = Sweep(
            name=name,
            profile=profile_name,
            base_commit=commit,
            overrides=list(request.overrides),
            affected=list(sweep_plan.affected),
            checkout=list(sweep_plan.checkout),
            metrics=list(sweep_plan.metrics),
            parallelism=parallelism,
            points=entries,
            tree=tree,
            cached_outs=sorted({o for n in nodes for o in n.cached}),
        )
        record.save(root, sweep)
    try:
        return drive.run(root, sweep, profile, sweep.points, request.detach)
    except Unrecorded as err:
        if not err.cancelled:  # an array may still run in them: keep the workspaces and the record
            say(f"sweep {name}: {err}")
            return drive.EXIT_FAILED
        remove_unsubmitted(root, name, entries)
        said = "nothing was submitted" if isinstance(err, SubmitRefused) else "nothing is queued"
        say(f"sweep {name}: {err}; {said}, and its workspaces were removed")
        return drive.EXIT_FAILED


def resume(root: Path, name: str, parallelism: int | None, detach: bool) -> int:
    """Submit again the points that failed, were cancelled or never started, as a new array."""
    sweep = record.load(root, name)
    profile = load_profile(sweep.profile, root)
    _check_profile(profile, detach)
    refresh(root, sweep)
    todo = [p for p in sweep.points if p.state != DONE and (p.state in NOT_STARTED or final(p.state))]
    if parallelism is not None:
        sweep.parallelism = _parallelism(parallelism, profile, len(todo))
    record.save(root, sweep)
    if not todo:
        print(table(sweep))
        say(f"sweep {name}: nothing to resume: no point failed, was cancelled or is waiting to start")
        return 0
    say(f"sweep {name}: resubmitting {len(todo)} of {len(sweep.points)} points")
    for point in todo:
        point.state, point.error = "NEW", ""
    try:
        return drive.run(root, sweep, profile, todo, detach)
    except Unrecorded as err:  # the record on disk still has the points as they were
        said = "nothing was submitted" if isinstance(err, SubmitRefused) else "nothing is queued"
        say(f"sweep {name}: {err}" + (f"; {said}; the points stay as they were" if err.cancelled else ""))
        return drive.EXIT_FAILED


@contextlib.contextmanager
def _unless_submitted(root: Path, name: str, points: Sequence[Point]) -> Iterator[None]:
    """On any failure (or Ctrl-C) before the sweep's record is written, remove its workspaces:
    a later sweep of the same name must not find, and reuse, workspaces of other params."""
    try:
        yield
    except BaseException:
        if not (record.sweep_dir(root, name) / record.RECORD_FILE).exists():
            remove_unsubmitted(root, name, points)
        raise


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _check_profile(profile: Profile, detach: bool) -> None:
    from hpcpipe.launch.checks import account_problem

    arrays = backend(profile.executor).arrays
    if not arrays:
        raise ConfigError(
            f"sweep: profile {profile.name!r} runs stages in this process; "
            "submit sweeps from a login node with a slurm or local profile"
        )
    if detach and arrays != "queued":
        raise ConfigError(
            f"sweep --detach: profile {profile.name!r} runs local subprocesses, which this "
            "command starts as slots free up; drop --detach, or use a Slurm profile"
        )
    problem = account_problem(profile, os.environ)
    if problem:
        raise ConfigError(problem)


def _parallelism(requested: int | None, profile: Profile, points: int) -> int:
    if requested is not None:
        if requested < 1:
            raise ConfigError(f"sweep: --parallelism must be >= 1, got {requested}")
        return requested
    if backend(profile.executor).arrays == "queued":
        return max(1, points)  # the scheduler decides; the user can cap it
    return max(1, (os.cpu_count() or 2) // 2)
