"""params.yaml and cluster profiles, loaded into frozen, validated dataclasses.

Two files, two jobs:

- ``params.yaml`` holds what changes results (data, subset sizes, model, learning
  rate...). DVC tracks each stage's sections, so a change reruns exactly the
  stages that read it.
- ``configs/cluster/NAME.yaml`` holds where and how a stage runs (executor,
  partition, GPUs, time limit, setup lines). DVC never sees it, so moving from a
  laptop to Perlmutter reruns nothing.

Everything is validated before a job is submitted: a bad value exits with one
line naming file, key, value and what was expected (see ``validation``).
This module imports neither torch nor submitit: the launcher loads it on a login node.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hpcpipe.validation import ConfigError, build, non_negative, one_of, positive, rule

PARAMS_FILE = "params.yaml"
PROFILE_DIR = Path("configs") / "cluster"
MODELS = ("tutorial", "resnet18", "fast")
SCHEDULES = ("cosine", "triangle")
DATA_SOURCES = ("cifar10", "imagefolder")
EXECUTORS = ("local", "slurm", "inline")
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
    (see ``hpcpipe.ml.fast``); their defaults leave the plain recipe as it was."""

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
    """Parse a YAML file, turning the usual failures into one-line ConfigErrors."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; run from the project root (where dvc.yaml is)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{line}: {getattr(err, 'problem', err)}") from None


def load_params(path: str | Path = PARAMS_FILE) -> Params:
    path = Path(path)
    return build(Params, read_yaml(path), source=path.name, prefix="")


# --------------------------------------------------------------------------- cluster profiles
@dataclass(frozen=True)
class Resources:
    """What one stage asks of the scheduler. Unset (None) fields are left to the site."""

    partition: str | None = None
    constraint: str | None = None
    qos: str | None = None
    account: str | None = None
    gpus: int = non_negative(default=0)
    cpus: int = positive(default=1)
    mem_gb: float | None = positive(default=None)
    time_min: int = positive(default=60)
    setup: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """One site: how jobs are launched there and what each stage asks for."""

    name: str
    executor: str = one_of(*EXECUTORS)
    job_dir: str = rule(bool, "a non-empty path", default=".hpcpipe/jobs")
    poll_s: float = positive(default=0.5)
    description: str = ""
    # Sites that charge an allocation refuse jobs without one: checked before submitting.
    # The account comes from the resources or from sbatch's own $SBATCH_ACCOUNT.
    require_account: bool = False
    # W&B in jobs is offline (no compute node waits on the network) unless the site's
    # nodes can reach the W&B server; then runs stream live and `hpcpipe sync` is not needed.
    wandb_online: bool = False
    # How often a job cut by its time limit is requeued to resume from its checkpoint
    # (submitit's max_num_timeout; preemptions do not count). A run of N time limits needs N - 1.
    max_timeouts: int = non_negative(default=10)
    defaults: Resources = field(default_factory=Resources)
    stages: dict[str, Resources] = field(default_factory=dict)

    def resources(self, stage: str) -> Resources:
        """The stage's resources: its own entries over the profile's defaults."""
        return self.stages.get(stage, self.defaults)


def load_profile(name_or_path: str, root: Path = Path(".")) -> Profile:
    """Load ``configs/cluster/NAME.yaml`` (or an explicit path) and validate it.

    Per-stage entries are merged over ``defaults`` key by key, so a profile only
    writes what differs for a stage.
    """
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        path = candidate
    else:
        path = root / PROFILE_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in (root / PROFILE_DIR).glob("*.yaml"))
            raise ConfigError(
                f"cluster profile {name_or_path!r} not found in {root / PROFILE_DIR}; "
                f"known: {', '.join(known) or 'none'}"
            )
    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {raw!r}")
    raw_stages = raw.get("stages") or {}
    if not isinstance(raw_stages, dict):
        raise ConfigError(f"{path}: stages: expected a mapping of stage names, got {raw_stages!r}")
    top = {k: v for k, v in raw.items() if k != "stages"}
    top.setdefault("name", path.stem)
    profile = build(Profile, top, source=path, prefix="")
    defaults_raw = raw.get("defaults") or {}
    stages: dict[str, Resources] = {}
    for stage, overrides in raw_stages.items():
        if overrides is not None and not isinstance(overrides, dict):
            raise ConfigError(f"{path}: stages.{stage}: expected a mapping of resources, got {overrides!r}")
        merged = {**defaults_raw, **(overrides or {})}
        stages[stage] = build(Resources, merged, source=path, prefix=f"stages.{stage}")
    return dataclasses.replace(profile, stages=stages)


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
