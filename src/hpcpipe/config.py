"""params.yaml and cluster profiles, loaded into frozen, validated dataclasses.

Two files, two jobs:

- ``params.yaml`` holds what changes results (data, subset sizes, model, learning
  rate...). DVC tracks each stage's sections, so a change reruns exactly the
  stages that read it.
- a cluster profile holds where and how a stage runs (executor, partition, GPUs,
  time limit, setup lines): the shipped ``hpcpipe/profiles/NAME.yaml`` with the
  project's own ``configs/cluster/NAME.yaml`` over it (``hpcpipe.cluster_profiles``).
  DVC never sees it, so moving from a laptop to Perlmutter reruns nothing.

Everything is validated before a job is submitted: a bad value exits with one
line naming file, key, value and what was expected (see ``validation``).
This module imports neither torch nor submitit: the launcher loads it on a login node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcpipe.cluster_profiles import (  # noqa: F401  (re-exported: callers import them from here)
    EXECUTORS,
    PROFILE_DIR,
    RESERVED_STAGES,
    SHIPPED_DIR,
    Profile,
    Resources,
    known_profiles,
    load_profile,
    stage_name_problem,
)
from hpcpipe.validation import ConfigError, build, non_negative, one_of, positive, rule

PARAMS_FILE = "params.yaml"
MODELS = ("tutorial", "resnet18", "fast")
SCHEDULES = ("cosine", "triangle")
DATA_SOURCES = ("cifar10", "imagefolder")
# Where Slurm clients find their configuration when $SLURM_CONF is unset (the
# Debian/RHEL packages, and configless clusters' cached copy).
SLURM_CONF_LOCATIONS = ("/etc/slurm/slurm.conf", "/etc/slurm-llnl/slurm.conf", "/run/slurm/conf/slurm.conf")


# --------------------------------------------------------------------------- params.yaml
@dataclass(frozen=True)
class DataParams:
    """Where the raw images are. ``cifar10``: torchvision's download of the official
    archive into ``path``; ``imagefolder``: ``path/train/<class>/*`` and ``path/test/<class>/*``."""

    source: str = one_of(*DATA_SOURCES)
    path: str = rule(bool, "a non-empty path")


@dataclass(frozen=True)
class PrepareParams:
    """A stratified, seeded subset of the raw data (0 keeps everything)."""

    train_size: int = non_negative()
    test_size: int = non_negative()
    seed: int = 0


@dataclass(frozen=True)
class TrainParams:
    """The training recipe. The keys after ``augment`` are the ``fast`` recipe's techniques
    (see ``hpcpipe.ml.recipe``); their defaults leave the plain recipe as it was."""

    model: str = one_of(*MODELS)
    epochs: int = positive()
    batch_size: int = positive()
    lr: float = positive()
    seed: int = 0
    momentum: float = rule(lambda v: 0 <= v < 1, "a number in [0, 1)", default=0.9)
    weight_decay: float = non_negative(default=5e-4)
    augment: bool = True
    translate: int = rule(lambda v: 0 <= v <= 8, "an integer in [0, 8]", default=4)  # crop padding
    alternating_flip: bool = False
    schedule: str = one_of(*SCHEDULES, default="cosine")
    bias_lr_scale: float = positive(default=1.0)
    label_smoothing: float = rule(lambda v: 0 <= v < 1, "a number in [0, 1)", default=0.0)
    lookahead: bool = False
    width: float = rule(lambda v: 0 < v <= 4, "a number in (0, 4]", default=1.0)  # fast's channel multiplier


@dataclass(frozen=True)
class EvaluateParams:
    batch_size: int = positive(default=1000)


@dataclass(frozen=True)
class WandbParams:
    """W&B tracking. Listed under no stage's ``params:`` in dvc.yaml and left out of the
    stage fingerprint: switching tracking on or off reruns nothing. Never holds the API
    key (that stays in the environment or ~/.netrc, never in a file the project writes)."""

    enabled: bool = False
    project: str = rule(bool, "a non-empty project name", default="hpcpipe")
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Params:
    """All of params.yaml. Stages read only their own sections (see ``stages.STAGES``)."""

    data: DataParams
    prepare: PrepareParams
    train: TrainParams
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    wandb: WandbParams = field(default_factory=WandbParams)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, turning the usual failures into one-line ConfigErrors.

    YAML 1.2, as DVC reads params files (ruamel): ``1e-5`` is the float 1e-05 here, in
    DVC and in the job alike (PyYAML's YAML 1.1 would read it as a string).
    """
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root (where dvc.yaml is)") from None
    try:
        return YAML(typ="safe", pure=True).load(text)
    except YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(err, 'problem', err)}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    return build(Params, read_yaml(path), source=path.name, prefix="")


# --------------------------------------------------------------------------- cluster profiles
# The profile code lives in hpcpipe.cluster_profiles; its names are re-exported here.


def resolve_profile_name(cli_choice: str | None, environ: dict[str, str] | None = None) -> str:
    """``--cluster`` beats ``$HPCPIPE_CLUSTER`` beats auto-detection.

    Auto: ``inline`` inside a Slurm allocation (no job inside the job), ``slurm``
    where ``sbatch`` is on PATH and has a configuration to read (installed
    client packages alone do not make a cluster), else ``local``.
    """
    env = os.environ if environ is None else environ
    if cli_choice:
        return cli_choice
    if env.get("HPCPIPE_CLUSTER"):
        return env["HPCPIPE_CLUSTER"]
    if env.get("SLURM_JOB_ID"):
        return "inline"
    from shutil import which

    configured = env.get("SLURM_CONF") or any(Path(p).exists() for p in SLURM_CONF_LOCATIONS)
    return "slurm" if which("sbatch", path=env.get("PATH")) and configured else "local"
