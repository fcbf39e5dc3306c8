"""Cluster profiles: where and with what resources each stage runs.

A profile is looked up by name in two places and the two are merged:

- the shipped profiles, ``hpcpipe/profiles/NAME.yaml`` (package data): a site's
  executor, partition/QoS/constraint, ``setup:`` lines and defaults, and no stage
  of any project (only the reserved entries ``repro`` and ``sweep``);
- the project's own ``configs/cluster/NAME.yaml``: what the project adds, usually
  its stages' resources (``stages: train: {gpus: 1}``), or a whole new profile.
  ``extends: OTHER`` builds on profile OTHER instead of the one of the same name.

Merging, from the base up: top-level keys are replaced, ``defaults:`` and each
``stages:`` entry are merged key by key (a list such as ``setup:`` is replaced
whole), and every stage entry is then laid over the merged defaults. Each file
is validated on its own first, so an error names the file that holds the key.

No value or key may hold a control character (a newline, a carriage return, an
escape): profile values go into the sbatch script's ``#SBATCH`` lines and shell
setup lines, where a newline starts a new directive or command, and into the
terminal, where an escape sequence rewrites what the user reads.

DVC names the members of a ``foreach``/``matrix`` stage ``name@key``: such a stage
takes its own ``name@key`` entry, else the ``name`` entry, else the defaults.

``hpcpipe.config`` re-exports everything here; import from either.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpcpipe.validation import ConfigError, build, non_negative, one_of, positive, rule

PROFILE_DIR = Path("configs") / "cluster"
# Package data next to this module (setuptools installs it as plain files; hpcpipe is
# never imported from a zip, so a path is enough).
SHIPPED_DIR = Path(__file__).resolve().parent / "profiles"
EXECUTORS = ("local", "slurm", "inline")
COMMAND_SIGNALS = ("TERM", "INT", "HUP", "USR1", "USR2")
# Stage entries that name no dvc.yaml stage: the `hpcpipe repro --detach` driver job
# and one task of a sweep array.
RESERVED_STAGES = ("repro", "sweep")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Filled in by the loader, never read from a file.
_LOADER_FIELDS = ("sources", "stage_sources")


@dataclass(frozen=True)
class Resources:
    """What one stage asks of the scheduler. Unset (None) fields are left to the site.

    Counted as Slurm counts them: ``gpus`` per node (``--gpus-per-node``; the key may be
    spelt ``gpus_per_node``), ``cpus`` per task (``--cpus-per-task``, or ``cpus_per_task``),
    ``mem_gb`` per node (``--mem``). A stage runs as ``nodes`` x ``tasks`` tasks: one task
    per GPU (torch.distributed's one process per device), ``tasks_per_node`` on CPU nodes.
    """

    partition: str | None = None
    constraint: str | None = None
    qos: str | None = None
    account: str | None = None
    gpus: int = non_negative(default=0)
    cpus: int = positive(default=1)
    mem_gb: float | None = positive(default=None)
    time_min: int = positive(default=60)
    setup: tuple[str, ...] = ()
    nodes: int = positive(default=1)
    # None: one per GPU, else 1. Given with GPUs it must be 1 (one process drives them all)
    # or the GPU count (see resources_problem).
    tasks_per_node: int | None = positive(default=None)

    @property
    def tasks(self) -> int:
        """Tasks (processes) per node."""
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return self.gpus or 1

    @property
    def world_size(self) -> int:
        return self.nodes * self.tasks


# Slurm's spellings, accepted for the keys above (giving both is refused).
RESOURCE_ALIASES = {"gpus_per_node": "gpus", "cpus_per_task": "cpus"}


def resources_problem(res: Resources, executor: str) -> str | None:
    """What is wrong with a combination of resources (the key, then why and what to do), if
    anything. A GPU stage runs one task per GPU: 2 tasks on 4 GPUs would leave the binding of
    devices to ranks to chance."""
    if res.tasks_per_node is not None and res.gpus and res.tasks_per_node not in (1, res.gpus):
        return (
            f"tasks_per_node: {res.tasks_per_node} tasks with {res.gpus} GPU{'s' if res.gpus > 1 else ''} "
            "per node; a GPU stage "
            f"runs one task per GPU (leave tasks_per_node out), or 1 task that drives all {res.gpus}"
        )
    if executor != "slurm" and res.nodes > 1:
        return f"nodes: {res.nodes} nodes on the {executor} executor (one machine); give nodes: 1"
    if executor == "inline" and res.tasks > 1:
        return (
            f"tasks_per_node: {res.tasks} tasks on the inline executor, which runs the stage in its own "
            "process; run it through a Slurm profile"
        )
    return None


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
    # A command stage at Slurm's warning (time limit, preemption) gets this signal and this
    # long to save its state into $HPCPIPE_CHECKPOINT_DIR and exit, before the job is requeued
    # (capped a few seconds short of the warning's lead time).
    command_signal: str = one_of(*COMMAND_SIGNALS, default="TERM")
    command_grace_s: float = positive(default=30.0)
    # Variables named like secrets (*_API_KEY, *_TOKEN, *PASSWORD*...) that jobs may still
    # inherit from the login node; all others are withheld (see launch.job_environment).
    export_secrets: tuple[str, ...] = rule(
        lambda names: all(_ENV_NAME.fullmatch(n) for n in names), "a list of variable names", default=()
    )
    defaults: Resources = field(default_factory=Resources)
    stages: dict[str, Resources] = field(default_factory=dict)
    # The files merged into this profile, base first (empty for one built in code), and
    # for each stage entry the file that last set it: error messages name them.
    sources: tuple[str, ...] = ()
    stage_sources: dict[str, str] = field(default_factory=dict)

    def resources(self, stage: str) -> Resources:
        """The stage's resources (its entry, already merged over the defaults).

        A foreach/matrix member ``name@key`` takes its own entry, else ``name``'s.
        """
        for key in (stage, stage.split("@", 1)[0]):
            if key in self.stages:
                return self.stages[key]
        return self.defaults


@dataclass(frozen=True)
class _Layer:
    """One profile file, checked on its own."""

    source: str
    raw: dict[str, Any]

    @property
    def extends(self) -> str | None:
        return self.raw.get("extends")


def shipped_profiles() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def known_profiles(root: Path) -> list[str]:
    """Every profile name that loads from ``root``: the shipped ones and the project's."""
    project = {p.stem for p in (root / PROFILE_DIR).glob("*.yaml")}
    return sorted(project.union(shipped_profiles()))


def load_profile(name_or_path: str, root: Path = Path(".")) -> Profile:
    """The profile NAME (the project's file merged over the shipped one), or the file at
    an explicit ``path/to/x.yaml``, read as is but for its ``extends:``; validated."""
    candidate = Path(name_or_path)
    if candidate.suffix in (".yaml", ".yml"):
        top = _read_layer(candidate, str(candidate))
        seen = {str(candidate.resolve())}
        base = _chain(top.extends, root, seen, top.source) if top.extends else []
        layers, name = [*base, top], candidate.stem
    else:
        layers, name = _chain(name_or_path, root, set(), None), name_or_path
    return _merge(layers, name)


def stage_name_problem(profile: Profile, stage_names: Collection[str]) -> str | None:
    """One line if the profile sets resources for a stage dvc.yaml does not have.

    ``stage_names`` are dvc.yaml's stages, foreach/matrix members as ``name@key``; an
    entry ``name`` covers those members. ``repro`` and ``sweep`` are always allowed.
    A misspelt entry would otherwise leave its stage on the defaults without a word.
    """
    groups = {stage.split("@", 1)[0] for stage in stage_names}
    for entry in profile.stages:
        if entry in RESERVED_STAGES or entry in stage_names or entry in groups:
            continue
        source = profile.stage_sources.get(entry) or f"cluster profile {profile.name!r}"
        listed = sorted(stage_names)
        if len(listed) > 20:
            listed = [*listed[:20], f"... ({len(listed) - 20} more)"]
        known = f"its stages are: {', '.join(listed)}" if listed else "it has no stages"
        return f"{source}: stages.{entry}: no stage {entry!r} in dvc.yaml; {known}"
    return None


# --------------------------------------------------------------------------- lookup and merging
def _chain(name: str, root: Path | None, seen: set[str], asked_by: str | None) -> list[_Layer]:
    """The layers of profile ``name``, base first. ``root`` None: shipped profiles only
    (a shipped profile's ``extends:`` never reaches into a project)."""
    project = root / PROFILE_DIR / f"{name}.yaml" if root is not None else None
    shipped = SHIPPED_DIR / f"{name}.yaml"
    if project is not None and project.is_file():
        path = project
    elif shipped.is_file():
        path, root = shipped, None
    else:
        where = f"{asked_by}: extends: " if asked_by else ""
        if root is None:
            places, known = "the shipped profiles", shipped_profiles()
        else:
            places, known = f"{root / PROFILE_DIR} or the shipped profiles", known_profiles(root)
        raise ConfigError(f"{where}cluster profile {name!r} not found in {places}; known: {', '.join(known)}")
    if str(path.resolve()) in seen:
        raise ConfigError(f"{asked_by}: extends: {name!r} goes round in a loop (back to {path})")
    layer = _read_layer(path, str(path))
    seen = {*seen, str(path.resolve())}
    if layer.extends and layer.extends != name:
        return [*_chain(layer.extends, root, seen, layer.source), layer]
    if path == project and shipped.is_file():  # the project's file over the shipped one
        return [*_chain(name, None, seen, layer.source), layer]
    if layer.extends:
        raise ConfigError(f"{layer.source}: extends: no shipped cluster profile {name!r} to build on")
    return [layer]


def _read_layer(path: Path, source: str) -> _Layer:
    from hpcpipe.config import read_yaml  # here, not at the top: hpcpipe.config imports this module

    raw = read_yaml(path) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of keys, got {raw!r}")
    _refuse_control_characters(raw, source)
    for key in raw:
        if key in _LOADER_FIELDS:
            known = sorted({f.name for f in dataclasses.fields(Profile)} - {*_LOADER_FIELDS} | {"extends"})
            raise ConfigError(f"{source}: {key}: unknown key; known keys are {', '.join(known)}")
    extends = raw.get("extends")
    if extends is not None and not (isinstance(extends, str) and extends):
        raise ConfigError(f"{source}: extends: expected a profile name, got {extends!r}")
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict):
        raise ConfigError(f"{source}: stages: expected a mapping of stage names, got {stages!r}")
    stages = dict(stages)
    defaults = _unaliased(raw.get("defaults"), source, "defaults")
    build(Resources, defaults, source=source, prefix="defaults")
    for stage, entry in stages.items():
        if entry is not None and not isinstance(entry, dict):
            raise ConfigError(f"{source}: stages.{stage}: expected a mapping of resources, got {entry!r}")
        stages[stage] = _unaliased(entry, source, f"stages.{stage}")
        build(Resources, stages[stage], source=source, prefix=f"stages.{stage}")
    # Check the top-level keys this file sets; a base file may supply the executor.
    top = {k: v for k, v in raw.items() if k not in ("defaults", "stages", "extends")}
    build(Profile, {"name": path.stem, "executor": EXECUTORS[0], **top}, source=source, prefix="")
    return _Layer(source, {**raw, "defaults": defaults or {}, "stages": stages})


def _unaliased(entry: Any, source: str, prefix: str) -> Any:
    """A resources mapping with Slurm's spellings (``gpus_per_node``) under the keys used here."""
    if not isinstance(entry, dict):
        return entry
    out = dict(entry)
    for alias, key in RESOURCE_ALIASES.items():
        if alias in out:
            if key in out:
                raise ConfigError(f"{source}: {prefix}.{alias}: the same key as {prefix}.{key}; give one")
            out[key] = out.pop(alias)
    return out


def _refuse_control_characters(raw: dict[str, Any], source: str) -> None:
    """One line naming the key whose value (or name) holds a control character."""
    for key_path, text in _texts(raw, ""):
        bad = next((c for c in text if unicodedata.category(c) == "Cc"), None)
        if bad is not None:
            raise ConfigError(
                f"{source}: {key_path}: control character {bad!r} in {text!r}; profile values are "
                "single lines of plain text (give setup: one list item per line)"
            )


def _texts(node: Any, key_path: str) -> Iterator[tuple[str, str]]:
    """Every string in a YAML tree, keys included, with the dotted path that holds it."""
    if isinstance(node, str):
        yield key_path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            here = f"{key_path}.{key}" if key_path else str(key)
            if isinstance(key, str):
                yield (key_path or "(top level)"), key
            yield from _texts(value, here)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _texts(item, f"{key_path}[{index}]")


def _merge(layers: list[_Layer], name: str) -> Profile:
    """Lay the files over each other, base first (each already validated on its own)."""
    top: dict[str, Any] = {}
    defaults: dict[str, Any] = {}
    entries: dict[str, dict[str, Any]] = {}
    stage_sources: dict[str, str] = {}
    for layer in layers:
        top.update({k: v for k, v in layer.raw.items() if k not in ("defaults", "stages", "extends")})
        defaults.update(layer.raw["defaults"])
        for stage, entry in layer.raw["stages"].items():
            entries.setdefault(stage, {}).update(entry or {})
            stage_sources[stage] = layer.source
    own = layers[-1]
    top["name"] = own.raw.get("name", name)  # a base's name is not this profile's
    profile = build(Profile, {**top, "defaults": defaults}, source=own.source, prefix="")
    stages = {
        stage: build(Resources, {**defaults, **entry}, source=stage_sources[stage], prefix=f"stages.{stage}")
        for stage, entry in entries.items()
    }
    checked = [("defaults", own.source, profile.defaults)]
    checked += [(f"stages.{stage}", stage_sources[stage], res) for stage, res in stages.items()]
    for prefix, source, res in checked:
        problem = resources_problem(res, profile.executor)
        if problem:
            raise ConfigError(f"{source}: {prefix}.{problem}")
    sources = tuple(layer.source for layer in layers)
    return dataclasses.replace(profile, stages=stages, sources=sources, stage_sources=stage_sources)
