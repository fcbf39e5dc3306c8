"""``hpcpipe sweep``: submit a grid as one job array, watch it, bring points back as experiments.

Order of work, all on the login node, all before anything is queued:

1. expand and validate every point (``grid``): a bad value fails in milliseconds;
2. start making one worktree per point (``workspace``), in a background thread;
3. meanwhile plan the pipeline (``pipeline``): which stages the swept keys change,
   and check that the unchanged upstream stages are up to date (``freshness``);
   if not, bring them up to date once, in the project (``dvc repro prepare`` with
   the same cluster profile);
4. finish the worktrees (cache settings, the project's ``dvc.lock``) and write the
   sweep's record; a failure before this point removes the worktrees again;
5. submit: on Slurm ONE ``sbatch`` of a job array (``--array=0-N%P``); locally, at
   most P subprocesses at a time, started as others end.

Then, unless ``--detach``, it shows each point's state as it changes and saves
each finished point as a DVC experiment (``experiments``) as soon as it is done.
``status`` does the same once, for a detached sweep; ``resume`` submits the points
that failed, were cancelled or never started, as a new array.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpipe.config import Profile, load_profile, resolve_profile_name
from hpcpipe.launch import slurm_state
from hpcpipe.launch.executors import backend
from hpcpipe.launch.launcher import Interrupted, SignalsAsExceptions
from hpcpipe.launch.watch import outcome_from_result
from hpcpipe.stage_function import function_schemas
from hpcpipe.sweep import freshness, record, workspace
from hpcpipe.sweep.experiments import read_metrics, save_experiment
from hpcpipe.sweep.grid import describe, expand_grid, point_name, random_subset, validate_points
from hpcpipe.sweep.pipeline import DvcProject, plan
from hpcpipe.sweep.record import Attempt, Point, Sweep
from hpcpipe.validation import ConfigError

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
DONE = "COMPLETED"
NOT_STARTED = ("NEW", "WAITING")  # WAITING: a local point waiting for a free slot


@dataclass(frozen=True)
class SweepRequest:
    overrides: list[str]
    name: str | None = None
    cluster: str | None = None
    random: int | None = None
    seed: int = 0
    parallelism: int | None = None
    detach: bool = False


def say(message: str) -> None:
    print(f"hpcpipe: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- submitting
def start(root: Path, request: SweepRequest) -> int:
    """``hpcpipe sweep -S ...``: check everything, then submit once; wait unless detached."""
    name = record.check_name(request.name or record.default_name())
    if (record.sweep_dir(root, name) / record.RECORD_FILE).exists():
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
    entries = _points(name, points)
    # The worktrees are git's work, in subprocesses: they are made while this process
    # opens DVC's index, plans, and checks that the reused stages are up to date. On
    # any failure before the record is written they are removed again.
    with _unless_submitted(root, name, entries), ThreadPoolExecutor(max_workers=1) as background:
        making = background.submit(_make_workspaces, root, name, entries, commit)
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
            cache_dir = project.cache_dir()
            stale = freshness.stale(project, nodes, sweep_plan.reused)
        making.result()
        if stale:
            say(f"sweep {name}: bringing {', '.join(sweep_plan.upstream)} up to date once, for every point")
            from hpcpipe.launch.driver import repro_in_foreground

            code = repro_in_foreground(profile_name, list(sweep_plan.upstream), root)
            if code != 0:
                say(f"sweep {name}: dvc repro {' '.join(sweep_plan.upstream)} failed; nothing was submitted")
                _remove_unsubmitted(root, name, entries)
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
        )
        record.save(root, sweep)
    return _run(root, sweep, profile, sweep.points, request.detach)


def resume(root: Path, name: str, parallelism: int | None, detach: bool) -> int:
    """Submit again the points that failed, were cancelled or never started, as a new array."""
    sweep = record.load(root, name)
    profile = load_profile(sweep.profile, root)
    _check_profile(profile, detach)
    _refresh(root, sweep)
    todo = [p for p in sweep.points if p.state != DONE and (p.state in NOT_STARTED or _final(p.state))]
    if parallelism is not None:
        sweep.parallelism = _parallelism(parallelism, profile, len(todo))
    record.save(root, sweep)
    if not todo:
        print(_table(sweep))
        say(f"sweep {name}: nothing to resume: no point failed, was cancelled or is waiting to start")
        return 0
    say(f"sweep {name}: resubmitting {len(todo)} of {len(sweep.points)} points")
    for point in todo:
        point.state, point.error = "NEW", ""
    return _run(root, sweep, profile, todo, detach)


@contextlib.contextmanager
def _unless_submitted(root: Path, name: str, points: Sequence[Point]) -> Iterator[None]:
    """On any failure (or Ctrl-C) before the sweep's record is written, remove its worktrees:
    a later sweep of the same name must not find, and reuse, workspaces of other params."""
    try:
        yield
    except BaseException:
        if not (record.sweep_dir(root, name) / record.RECORD_FILE).exists():
            _remove_unsubmitted(root, name, points)
        raise


def _remove_unsubmitted(root: Path, name: str, points: Sequence[Point]) -> None:
    """The worktrees and folder of a sweep whose record was never written."""
    workspace.discard(root, [root / p.workspace for p in points])
    shutil.rmtree(record.sweep_dir(root, name), ignore_errors=True)


def _make_workspaces(root: Path, name: str, points: Sequence[Point], commit: str) -> None:
    """One worktree per point; a few at a time, since each is mostly waiting on git."""
    patch = workspace.uncommitted_patch(root)
    params = workspace.load_round_trip(root / "params.yaml")

    def make(point: Point) -> None:
        workspace.create(
            root,
            root / point.workspace,
            commit=commit,
            patch=patch,
            params=params,
            point=point.overrides,
            group=name,
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(make, points))  # list(): re-raise the first failure here


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _check_profile(profile: Profile, detach: bool) -> None:
    from hpcpipe.launch.checks import account_problem

    if profile.executor == "inline":
        raise ConfigError(
            f"sweep: profile {profile.name!r} runs stages in this process; "
            "submit sweeps from a login node with a slurm or local profile"
        )
    if detach and profile.executor != "slurm":
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
    if profile.executor == "slurm":
        return max(1, points)  # the scheduler decides; the user can cap it
    return max(1, (os.cpu_count() or 2) // 2)


def _points(name: str, grid: Sequence[dict[str, Any]]) -> list[Point]:
    names = [point_name(p) for p in grid]
    points = []
    for number, (overrides, short) in enumerate(zip(grid, names, strict=True), start=1):
        unique = short if names.count(short) == 1 else f"{short}-p{number}"
        folder = record.SWEEPS_DIR / name / "points" / f"{number:03d}-{unique}"
        points.append(Point(number=number, name=unique, overrides=overrides, workspace=str(folder)))
    return points


def _job_folder(root: Path, name: str) -> Path:
    return record.sweep_dir(root, name) / "jobs"


def _tuned(sweep: Sweep, profile: Profile) -> tuple[Profile, str]:
    """The profile with one more entry: what one point's task asks for (all its stages)."""
    from hpcpipe.launch.profiles import sweep_resources

    key = f"sweep-{sweep.name}"  # becomes the job name: hpcpipe-sweep-NAME
    resources = sweep_resources(profile, sweep.affected)
    return dataclasses.replace(profile, stages={**profile.stages, key: resources}), key


def _submit_array(root: Path, sweep: Sweep, profile: Profile, points: Sequence[Point]) -> None:
    """ONE sbatch: a job array of the points, at most ``parallelism`` running at once."""
    from hpcpipe.launch.launcher import submit_array
    from hpcpipe.sweep.task import run_point

    tuned, key = _tuned(sweep, profile)
    n = len(points)
    args = [[str(root / p.workspace) for p in points], [sweep.checkout] * n, [sweep.affected] * n]
    jobs = submit_array(
        root, tuned, key, run_point, args, _job_folder(root, sweep.name), min(sweep.parallelism, n)
    )
    now = time.time()
    for point, job in zip(points, jobs, strict=True):
        point.attempts.append(Attempt(str(job.job_id), "slurm", str(Path(job.paths.folder).resolve()), now))
        point.state = "PENDING"
    first = str(jobs[0].job_id)
    what = (
        f"job array {first.split('_')[0]}" if "_" in first else f"job {first}"
    )  # submitit: 1 task, no array
    say(f"sweep {sweep.name}: {n} point(s) submitted as {what} (at most {sweep.parallelism} at once)")


class LocalPool:
    """Local points as submitit subprocesses, at most ``parallelism`` at a time."""

    def __init__(self, root: Path, sweep: Sweep, profile: Profile) -> None:
        from hpcpipe.launch.launcher import prepared_executor, private_folder

        self.root, self.sweep = root, sweep
        tuned, key = _tuned(sweep, profile)
        self.executor = prepared_executor(tuned, key, private_folder(_job_folder(root, sweep.name), root))
        self.jobs: dict[int, Any] = {}  # point number -> LocalJob, reaped when done

    def fill(self, points: Sequence[Point]) -> None:
        from hpcpipe.sweep.task import run_point

        for job in self.jobs.values():
            job.done()  # reap ended subprocesses
        running = sum(1 for p in points if p.state == "RUNNING")
        threads = max(1, (os.cpu_count() or 1) // self.sweep.parallelism)
        os.environ["HPCPIPE_POINT_THREADS"] = str(threads)  # the subprocess inherits it
        for point in points:
            if running >= self.sweep.parallelism:
                break
            if point.state in NOT_STARTED:
                job = self.executor.submit(
                    run_point, str(self.root / point.workspace), self.sweep.checkout, self.sweep.affected
                )
                self.jobs[point.number] = job
                folder = str(Path(job.paths.folder).resolve())
                point.attempts.append(Attempt(str(job.job_id), "local", folder, time.time()))
                point.state = "RUNNING"
                running += 1
        for point in points:
            if point.state == "NEW":
                point.state = "WAITING"

    def cancel(self) -> None:
        for job in self.jobs.values():
            if not job.done():
                job.cancel()


def _run(root: Path, sweep: Sweep, profile: Profile, points: list[Point], detach: bool) -> int:
    pool = None
    with SignalsAsExceptions():
        try:
            if profile.executor == "slurm":
                _submit_array(root, sweep, profile, points)
            else:
                pool = LocalPool(root, sweep, profile)
                pool.fill(points)
            record.save(root, sweep)
            if detach:
                say(f"sweep {sweep.name}: detached; see it with: hpcpipe sweep status {sweep.name}")
                return 0
            _wait(root, sweep, profile, points, pool)
        except Interrupted as stop:
            _cancel(sweep, points, pool)
            record.save(root, sweep)
            say(
                f"sweep {sweep.name}: {stop} received; cancelled its queued and running points; "
                f"finished ones are kept. Go on with: hpcpipe sweep resume {sweep.name}"
            )
            return EXIT_INTERRUPTED if stop.signum == signal.SIGINT else 128 + stop.signum
    print(_table(sweep))
    return _summary(sweep, points)


def _wait(root: Path, sweep: Sweep, profile: Profile, points: list[Point], pool: LocalPool | None) -> None:
    while True:
        _refresh(root, sweep, points)
        if pool is not None:
            pool.fill(points)
        record.save(root, sweep)
        if all(_final(p.state) for p in points):
            return
        time.sleep(profile.poll_s)


def _cancel(sweep: Sweep, points: Sequence[Point], pool: LocalPool | None) -> None:
    """Ctrl-C while waiting: cancel what is queued or running, as the stage launcher does."""
    if pool is not None:
        pool.cancel()
    live = [p for p in points if p.attempts and not _final(p.state) and p.state not in NOT_STARTED]
    for kind in {p.attempts[-1].executor for p in live}:
        try:
            backend(kind).cancel([p.attempts[-1].job_id for p in live if p.attempts[-1].executor == kind])
        except (OSError, subprocess.SubprocessError) as err:
            say(f"sweep {sweep.name}: cancelling its {kind} jobs failed: {err}")
    for point in live:
        point.state = "CANCELLED"


# --------------------------------------------------------------------------- watching
def _final(state: str) -> bool:
    return state in slurm_state.FINAL_STATES


def _label(sweep: Sweep, point: Point) -> str:
    return f"{point.number}/{len(sweep.points)} {point.name}"


def _refresh(root: Path, sweep: Sweep, points: Sequence[Point] | None = None) -> None:
    """Ask where each unfinished point stands; save finished ones as experiments."""
    points = sweep.points if points is None else points
    unfinished = [p for p in points if p.attempts and not _final(p.state)]
    states: dict[str, slurm_state.JobState] = {}
    for kind in {p.attempts[-1].executor for p in unfinished}:
        of_kind = [p.attempts[-1] for p in unfinished if p.attempts[-1].executor == kind]
        states.update(backend(kind).states((a.job_id, Path(a.folder)) for a in of_kind))
    unanswered = 0
    for point in points:
        if point.attempts and not _final(point.state):
            state = states[point.attempts[-1].job_id]
            if state.state == "UNKNOWN":
                unanswered += 1
                continue
            if state.describe() != point.detail and not _final(state.state):
                say(f"sweep {sweep.name}: point {_label(sweep, point)}: {state.describe()}")
            point.detail = state.describe()
            if _final(state.state):
                _finish(root, sweep, point, state.state)
            else:
                point.state = state.state
        if point.state == DONE and not point.experiment:
            _import(root, sweep, point)
    if unanswered:
        say(
            f"sweep {sweep.name}: Slurm has no record of {unanswered} point(s) (squeue/sacct failed, "
            "or SLURM_CONF is not this cluster's); their states are the last seen"
        )


def _finish(root: Path, sweep: Sweep, point: Point, state: str) -> None:
    from submitit.core.utils import JobPaths

    attempt = point.attempts[-1]
    paths = JobPaths(attempt.folder, job_id=attempt.job_id, task_id=0)
    outcome = outcome_from_result(Path(paths.result_pickle), state)
    if state == DONE and outcome is not None and not outcome.ok:
        state = outcome.state
    point.state = state
    point.error = "" if state == DONE else ((outcome.reason if outcome else "") or f"Slurm state {state}")
    tail = f": {point.error}; log: {paths.stderr}" if point.error else ""
    say(f"sweep {sweep.name}: point {_label(sweep, point)}: {state}{tail}")


def _import(root: Path, sweep: Sweep, point: Point) -> None:
    where = root / point.workspace
    point.metrics = read_metrics(where, sweep.metrics)
    name = sweep.experiment_name(point)
    why = save_experiment(where, name, sweep.affected)
    if why:
        point.error = why
        say(
            f"sweep {sweep.name}: point {_label(sweep, point)}: finished, "
            f"but not saved as an experiment: {why}"
        )
    else:
        point.experiment, point.error = name, ""
        say(f"sweep {sweep.name}: point {_label(sweep, point)}: saved as experiment {name}")


# --------------------------------------------------------------------------- reporting
def status(root: Path, name: str) -> int:
    """``hpcpipe sweep status NAME``: each point now; finished ones are saved as experiments."""
    sweep = record.load(root, name)
    _refresh(root, sweep)
    record.save(root, sweep)
    print(_table(sweep))
    return 0


def _table(sweep: Sweep) -> str:
    header = ("point", "job", "state", "params", "metrics", "experiment")
    rows = [header]
    # the last stage's metrics (evaluate's test accuracy...); all of them: dvc exp show
    last = f"{Path(sweep.metrics[-1]).stem}." if sweep.metrics else ""
    for p in sweep.points:
        shown = {k.removeprefix(last): v for k, v in p.metrics.items() if k.startswith(last)}
        metrics = " ".join(f"{k}={v:.4g}" for k, v in shown.items())
        job = p.attempts[-1].job_id if p.attempts else "-"
        rows.append((str(p.number), job, p.state, describe(p.overrides), metrics or "-", p.experiment or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows
    )


def _summary(sweep: Sweep, points: Sequence[Point]) -> int:
    done = [p for p in points if p.state == DONE and p.experiment]
    failed = [p for p in points if p not in done]
    say(
        f"sweep {sweep.name}: {len(done)} of {len(points)} points saved as experiments"
        + (f", {len(failed)} not ({', '.join(str(p.number) for p in failed)})" if failed else "")
        + "; compare them with: dvc exp show"
    )
    if failed:
        say(f"sweep {sweep.name}: rerun only those with: hpcpipe sweep resume {sweep.name}")
        return EXIT_FAILED
    return 0
