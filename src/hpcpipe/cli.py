"""The ``hpcpipe`` command. ``main(argv)`` returns the exit status, so tests call it directly.

    hpcpipe run STAGE --ROLE PATH ...   run one pipeline stage as a job (a dvc.yaml cmd)
    hpcpipe cluster [NAME]              print the resolved cluster profile
    hpcpipe fetch                       download the raw data named in params.yaml

Exit status 2 means bad input (params, profile, arguments): one line says what
and where, and nothing was submitted.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import yaml

from hpcpipe.config import load_params, load_profile, resolve_profile_name
from hpcpipe.stages import STAGES, StageSpec
from hpcpipe.validation import ConfigError

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input; the message is the one line shown."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpcpipe", description="Run DVC pipeline stages as Slurm jobs.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one stage through the cluster profile's executor")
    run.add_argument("stage", choices=sorted(STAGES))
    run.add_argument("--cluster", help="cluster profile (default: $HPCPIPE_CLUSTER, else detected)")
    run.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")

    cluster = sub.add_parser("cluster", help="print the resolved cluster profile")
    cluster.add_argument("name", nargs="?", help="profile name (default: $HPCPIPE_CLUSTER, else detected)")

    fetch = sub.add_parser("fetch", help="download the raw data that params.yaml names (data.source)")
    fetch.add_argument("--params", default="params.yaml")
    return parser


def parse_stage_paths(spec: StageSpec, extra: list[str]) -> dict[str, str]:
    """``--prepared data/prepared --model models/model.pt`` -> {role: path}.

    The roles are the stage's (see ``hpcpipe.stages``); every one is required, so a
    dvc.yaml that forgets an output fails here rather than after the job ran.
    """
    parser = argparse.ArgumentParser(prog=f"hpcpipe run {spec.name}", add_help=False, exit_on_error=False)
    for role in spec.roles:
        parser.add_argument(f"--{role}", dest=role, metavar="PATH")
    try:
        known, unknown = parser.parse_known_args(extra)
    except argparse.ArgumentError as err:
        raise UsageError(f"hpcpipe run {spec.name}: {err}") from None
    expected = " ".join(f"--{r} PATH" for r in spec.roles)
    if unknown:
        raise UsageError(f"hpcpipe run {spec.name}: unexpected {' '.join(unknown)}; expected {expected}")
    missing = [f"--{r}" for r in spec.roles if getattr(known, r) is None]
    if missing:
        raise UsageError(f"hpcpipe run {spec.name}: missing {', '.join(missing)}; expected {expected}")
    return {role: getattr(known, role) for role in spec.roles}


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from hpcpipe.launch.launcher import launch, relative_to_root

    root = Path.cwd()
    spec = STAGES[args.stage]
    paths = parse_stage_paths(spec, extra)
    params = load_params(root / args.params)
    profile = load_profile(resolve_profile_name(args.cluster), root)
    paths = {role: relative_to_root(path, root) for role, path in paths.items()}
    return launch(spec, params, paths, profile, root)


def cmd_cluster(args: argparse.Namespace) -> int:
    profile = load_profile(resolve_profile_name(args.name), Path.cwd())
    print(yaml.safe_dump(dataclasses.asdict(profile), sort_keys=False), end="")
    return 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download (cifar10) or check (imagefolder) the raw data on a machine with internet,
    typically a login node, so that jobs on offline compute nodes find it in place."""
    params = load_params(Path.cwd() / args.params)
    from hpcpipe.ml.data import DataSourceError, load_source

    try:
        data = load_source(params.data.source, params.data.path)
    except DataSourceError as err:
        print(f"hpcpipe: {err}", file=sys.stderr)
        return 1
    print(
        f"{params.data.path}: {len(data.train)} train and {len(data.test)} test images, "
        f"{len(data.classes)} classes ({params.data.source}); track it with: dvc add {params.data.path}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args, extra = _parser().parse_known_args(argv)
    try:
        if args.command == "run":
            return cmd_run(args, extra)
        if extra:
            raise UsageError(f"hpcpipe {args.command}: unexpected {' '.join(extra)}")
        if args.command == "cluster":
            return cmd_cluster(args)
        return cmd_fetch(args)
    except (ConfigError, UsageError) as err:
        print(f"hpcpipe: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
