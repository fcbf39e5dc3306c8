"""The ``hpcpipe`` command. ``main(argv)`` returns the exit status, so tests call it directly.

    hpcpipe init [--stages a,b] [--undo] wrap this project's dvc.yaml commands in `hpcpipe run`
    hpcpipe run NAME -- CMD ARGS...     run one dvc.yaml stage's command as a job (its cmd)
    hpcpipe run NAME --fn MOD:FUNC --ROLE PATH ...   run a Python function stage as a job
    hpcpipe status [--sweep NAME]       the last job of each stage (or point): state, log, what it used
    hpcpipe logs STAGE [-f]             print or follow a stage's job log
    hpcpipe cancel STAGE | --all        cancel queued or running stage jobs
    hpcpipe cluster [NAME]              the resolved profile, each stage's resources, checks
    hpcpipe fetch                       download the raw data named in params.yaml
    hpcpipe sync [--dry-run] [--jobs N] [--watch]   upload finished offline W&B runs, once
    hpcpipe sweep -S KEY=VALUES ...     a grid as one job array; points come back as DVC experiments
    hpcpipe sweep status|resume|clean NAME   a sweep's points; resubmit its failed ones; remove its folders

Exit status 2 means bad input (params, profile, arguments): one line says what
and where, and nothing was submitted.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from hpcpipe.config import load_params, load_profile, resolve_profile_name
from hpcpipe.console import render_table, say
from hpcpipe.validation import ConfigError, UsageError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcpipe", description="Run DVC pipeline stages as Slurm jobs.")
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="wrap each dvc.yaml stage command as `hpcpipe run NAME -- CMD`")
    init.add_argument("--stages", help="comma-separated stage names (default: every stage)")
    init.add_argument("--undo", action="store_true", help="give the stages back their plain commands")

    run = sub.add_parser(
        "run", help="run one dvc.yaml stage as a job: NAME -- CMD ..., or NAME --fn MOD:FUNC --ROLE PATH ..."
    )
    run.add_argument("stage", help="the stage's name in dvc.yaml (name@key for foreach/matrix members)")
    run.add_argument("--fn", metavar="MOD:FUNC", help="a function stage: package.module:function")
    run.add_argument("--cluster", help="cluster profile (default: $HPCPIPE_CLUSTER, else detected)")
    run.add_argument(
        "--params", default="params.yaml", help="params file with the wandb: section (default: params.yaml)"
    )
    run.add_argument(
        "-v", "--verbose", action="store_true", help="also submitit's own log lines (or HPCPIPE_VERBOSE=1)"
    )

    cluster = sub.add_parser("cluster", help="print the resolved cluster profile")
    cluster.add_argument("name", nargs="?", help="profile name (default: $HPCPIPE_CLUSTER, else detected)")

    repro = sub.add_parser("repro", help="dvc repro with this cluster profile; --detach: as a driver job")
    repro.add_argument("--detach", action="store_true", help="submit dvc repro as a small CPU job and return")
    repro.add_argument("--cluster")

    status = sub.add_parser(
        "status", help="the last job of each stage: state, node, elapsed, log; what each job used"
    )
    status.add_argument("--cluster")
    status.add_argument("--sweep", metavar="NAME", help="a sweep's points instead (as hpcpipe sweep status)")

    logs = sub.add_parser("logs", help="print (or follow) the log of a stage's last job")
    logs.add_argument("stage", help="a stage name, or repro for the --detach driver")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the job is over")
    logs.add_argument("--cluster")

    cancel = sub.add_parser("cancel", help="cancel a stage's job, or every stage's")
    cancel.add_argument("stage", nargs="?")
    cancel.add_argument("--all", action="store_true")
    cancel.add_argument("--cluster")

    fetch = sub.add_parser("fetch", help="download the raw data that params.yaml names (data.source)")
    fetch.add_argument("--params", default="params.yaml")

    sync = sub.add_parser("sync", help="upload the project's finished offline W&B runs, each once")
    sync.add_argument("--dry-run", action="store_true", help="list what would be uploaded; upload nothing")
    sync.add_argument("--jobs", type=int, default=4, metavar="N", help="uploads at a time (default 4)")
    sync.add_argument("--watch", action="store_true", help="keep syncing as jobs finish, until Ctrl-C")
    sync.add_argument("--poll", type=float, default=12.0, metavar="S", help="seconds between --watch passes")

    sweep = sub.add_parser(
        "sweep", help="a hyperparameter grid as one job array -> DVC experiments", add_help=False
    )
    sweep.add_argument("rest", nargs=argparse.REMAINDER)
    return parser


def _sweep_parsers() -> dict[str, argparse.ArgumentParser]:
    start = argparse.ArgumentParser(
        prog="hpcpipe sweep",
        description="Run a grid of params as ONE job array; each point comes back as a DVC experiment. "
        "Also: hpcpipe sweep status NAME, hpcpipe sweep resume NAME, hpcpipe sweep clean NAME.",
        exit_on_error=False,
    )
    start.add_argument(
        "-S", "--set-param", dest="overrides", action="append", default=[], metavar="KEY=VALUES",
        help="one axis of the grid, DVC's grammar: train.lr=0.1,0.05 or 'train.epochs=range(10,30,10)'",
    )  # fmt: skip
    start.add_argument("--name", help="the sweep's name: W&B group, experiment prefix (default: dated)")
    start.add_argument("--random", type=int, metavar="K", help="run K points of the grid, chosen by --seed")
    start.add_argument("--seed", type=int, default=0, help="seed for --random (default 0)")
    start.add_argument("--parallelism", type=int, metavar="N", help="points running at once (array %%N)")
    start.add_argument("--detach", action="store_true", help="return once submitted (Slurm profiles)")
    start.add_argument("--cluster", help="cluster profile (default: $HPCPIPE_CLUSTER, else detected)")
    status = argparse.ArgumentParser(prog="hpcpipe sweep status", exit_on_error=False)
    status.add_argument("name")
    resume = argparse.ArgumentParser(prog="hpcpipe sweep resume", exit_on_error=False)
    resume.add_argument("name")
    resume.add_argument("--parallelism", type=int, metavar="N")
    resume.add_argument("--detach", action="store_true")
    clean = argparse.ArgumentParser(prog="hpcpipe sweep clean", exit_on_error=False)
    clean.add_argument("name")
    return {"start": start, "status": status, "resume": resume, "clean": clean}


def cmd_sweep(rest: list[str]) -> int:
    from hpcpipe.sweep import report, start

    action = rest[0] if rest and rest[0] in ("status", "resume", "clean") else "start"
    parser = _sweep_parsers()[action]
    try:
        args = parser.parse_args(rest[1:] if action != "start" else rest)
    except argparse.ArgumentError as err:
        raise UsageError(f"{parser.prog}: {err}") from None
    root = Path.cwd()
    if action == "status":
        return report.status(root, args.name)
    if action == "resume":
        return start.resume(root, args.name, args.parallelism, args.detach)
    if action == "clean":
        from hpcpipe.sweep.clean import clean

        return clean(root, args.name)
    if not args.overrides:
        raise UsageError("hpcpipe sweep: give at least one -S KEY=VALUES (e.g. -S train.lr=0.1,0.05)")
    request = start.SweepRequest(
        overrides=args.overrides,
        name=args.name,
        cluster=args.cluster,
        random=args.random,
        seed=args.seed,
        parallelism=args.parallelism,
        detach=args.detach,
    )
    return start.start(root, request)


def cmd_run(args: argparse.Namespace, extra: list[str], command: list[str] | None) -> int:
    """``hpcpipe run NAME -- CMD`` (a command stage) or ``--fn`` (a function stage)."""
    from hpcpipe.config import stage_name_problem
    from hpcpipe.launch.checks import write_access_problem
    from hpcpipe.launch.dvc_stage import load_stage
    from hpcpipe.launch.launcher import launch
    from hpcpipe.launch.stage_work import command_work, function_work

    root = Path.cwd()
    if command is not None and args.fn:
        raise UsageError(f"hpcpipe run {args.stage}: give --fn MOD:FUNC or a command after --, not both")
    if command is not None and extra:
        raise UsageError(f"hpcpipe run {args.stage}: unexpected {' '.join(extra)} before --")
    if command is None and not args.fn:
        raise UsageError(
            f"hpcpipe run {args.stage}: give the stage's command after -- "
            f"(hpcpipe run {args.stage} -- python src/{args.stage}.py) or --fn package.module:function"
        )
    if command is not None and not command:
        raise UsageError(f"hpcpipe run {args.stage}: nothing after --; give the command to run")
    profile = load_profile(resolve_profile_name(args.cluster), root)
    problem = write_access_problem(root, profile)  # another user's code would run as you
    if problem:
        raise ConfigError(problem)
    stage = load_stage(root, args.stage)
    problem = stage_name_problem(profile, stage.project_stages)
    if problem:
        raise ConfigError(problem)
    if command is not None:
        work = command_work(stage, command, profile, root, args.params)
    else:
        work = function_work(stage, args.fn, extra, profile, root, args.params)
    return launch(work, profile, root, verbose=args.verbose or os.environ.get("HPCPIPE_VERBOSE") == "1")


def cmd_init(args: argparse.Namespace) -> int:
    from hpcpipe.init_stages import init

    stages = [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None
    return init(Path.cwd(), stages, args.undo)


def cmd_cluster(args: argparse.Namespace) -> int:
    from hpcpipe.config import stage_name_problem
    from hpcpipe.launch.checks import Check, run_checks
    from hpcpipe.launch.dvc_stage import project_stage_names

    root = Path.cwd()
    profile = load_profile(resolve_profile_name(args.name), root)
    print(yaml.safe_dump(dataclasses.asdict(profile), sort_keys=False), end="")
    checks = run_checks(profile, root)
    if (root / "dvc.yaml").exists():
        names = project_stage_names(root)
        print("resources of this project's stages:")
        for name in names:
            res = dataclasses.asdict(profile.resources(name))
            shown = " ".join(f"{k}={v}" for k, v in res.items() if v not in (None, (), "") and k != "setup")
            print(f"  {name}: {shown}")
        problem = stage_name_problem(profile, names)
        checks.append(Check("stage names", problem is None, problem or "every profile stage is in dvc.yaml"))
    print("checks:")
    for check in checks:
        print(f"  {check.line()}")
    return 0 if all(check.ok for check in checks) else 1


def _ledger(cluster: str | None):
    from hpcpipe.launch.submission import ledger_for

    root = Path.cwd()
    return ledger_for(root, load_profile(resolve_profile_name(cluster), root))


def cmd_repro(args: argparse.Namespace, dvc_args: list[str]) -> int:
    """Without --detach: ``dvc repro`` here. With it: a driver job runs it (Slurm profiles only)."""
    from hpcpipe.launch.driver import DRIVER, repro_in_foreground, run_repro

    root = Path.cwd()
    name = resolve_profile_name(args.cluster)
    profile = load_profile(name, root)
    if not args.detach:
        return repro_in_foreground(name, dvc_args, root)
    if profile.executor != "slurm":
        raise UsageError(
            f"hpcpipe repro --detach: profile {name!r} runs {profile.executor} jobs; it needs Slurm"
        )
    from hpcpipe.launch.launcher import submit

    job = submit(root, profile, DRIVER, run_repro, (str(root), name, dvc_args), "")
    print(f"submitted dvc repro as job {job.job_id}; follow it with: hpcpipe logs repro -f")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from hpcpipe.launch.control import COLUMNS, status_rows, usage_lines
    from hpcpipe.launch.submission import ledger_for

    root = Path.cwd()
    if args.sweep:
        from hpcpipe.sweep import report

        return report.status(root, args.sweep)
    profile = load_profile(resolve_profile_name(args.cluster), root)
    ledger = ledger_for(root, profile)
    rows = status_rows(ledger)
    if not rows:
        print("no jobs recorded yet (hpcpipe run or dvc repro submits them)")
        return 0
    print(render_table(COLUMNS, rows))
    for line in usage_lines(list(ledger.entries()), profile):
        print(line)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from hpcpipe.launch.control import show_logs

    entry = _ledger(args.cluster).get(args.stage)
    if entry is None or not entry.stdout:
        raise UsageError(f"no job with a log recorded for stage {args.stage!r}; see hpcpipe status")
    show_logs(entry, args.follow, poll_s=1.0)
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from hpcpipe.launch.control import cancel

    if bool(args.stage) == bool(args.all):
        raise UsageError("hpcpipe cancel: name one STAGE, or --all")
    ledger = _ledger(args.cluster)
    entries = list(ledger.entries()) if args.all else [e for e in [ledger.get(args.stage)] if e]
    cancelled = [e for e in entries if cancel(e)]
    for entry in cancelled:
        print(f"cancelled {entry.stage}: job {entry.job_id}")
    if not cancelled:
        print("nothing to cancel: no queued or running job")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download (cifar10) or check (imagefolder) the raw data on a machine with internet,
    typically a login node, so that jobs on offline compute nodes find it in place."""
    params = load_params(Path.cwd() / args.params)
    from hpcpipe.stage_function import EXTRAS, is_installed

    missing = [module for module in EXTRAS if not is_installed(module)]
    if missing:  # the example's data code needs torch (hpcpipe.ml)
        raise ConfigError(
            f"hpcpipe fetch: needs {missing[0]}, which is not installed; "
            f"pip install 'hpcpipe[{EXTRAS[missing[0]]}]' (or module load pytorch)"
        )
    from hpcpipe.ml.data import DataSourceError, load_source

    try:
        data = load_source(params.data.source, params.data.path)
    except DataSourceError as err:
        say(str(err))
        return 1
    print(
        f"{params.data.path}: {len(data.train)} train and {len(data.test)} test images, "
        f"{len(data.classes)} classes ({params.data.source}); track it with: dvc add {params.data.path}"
    )
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    """Upload offline runs from ./wandb (where jobs write them; see hpcpipe.tracking) and from
    each sweep point's workspace (.hpcpipe/sweeps/NAME/points/*/wandb)."""
    from hpcpipe.sweep.record import SWEEPS_DIR
    from hpcpipe.tracking.run import runs_root
    from hpcpipe.tracking.sync import sync

    if args.jobs < 1:
        raise UsageError(f"hpcpipe sync: --jobs must be >= 1, got {args.jobs}")
    roots = [runs_root(Path.cwd()), *sorted(Path.cwd().glob(f"{SWEEPS_DIR}/*/points/*/wandb"))]
    return sync(
        roots, jobs=args.jobs, dry_run=args.dry_run, watch=args.watch, poll_s=args.poll, project=Path.cwd()
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["sweep"]:  # its own grammar (-S may repeat, status/resume NAME): its own parser
        return _guarded(lambda: cmd_sweep(argv[1:]))
    command = None
    if argv[:1] == ["run"] and "--" in argv:  # everything after -- is the stage's own command
        cut = argv.index("--")
        argv, command = argv[:cut], argv[cut + 1 :]
    args, extra = _parser().parse_known_args(argv)
    if args.command == "run":
        return _guarded(lambda: cmd_run(args, extra, command))
    return _guarded(lambda: _dispatch(args, extra))


def _guarded(command: Callable[[], int]) -> int:
    """Bad input is one line on stderr and exit status 2, whatever the command."""
    try:
        return command()
    except (ConfigError, UsageError) as err:
        say(str(err))
        return EXIT_USAGE


def _dispatch(args: argparse.Namespace, extra: list[str]) -> int:
    if args.command == "repro":
        return cmd_repro(args, extra)
    if extra:
        raise UsageError(f"hpcpipe {args.command}: unexpected {' '.join(extra)}")
    handlers = {
        "init": cmd_init,
        "cluster": cmd_cluster,
        "status": cmd_status,
        "logs": cmd_logs,
        "cancel": cmd_cancel,
        "fetch": cmd_fetch,
        "sync": cmd_sync,
    }
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
