"""Which DVC stages a sweep changes, and which it reuses: a plan made before submitting.

A train-only grid must not rerun ``prepare`` once per point. The plan splits the
pipeline in two: the *affected* stages (those that read a swept key, and every
stage downstream of them) run in each point's workspace; the rest are brought up
to date once, in the project, before the array is submitted, and each point's
workspace links the outputs it needs from the shared DVC cache.

``DvcProject`` asks DVC's own index (so ``${...}`` templating, ``foreach`` and
``.dvc`` files are resolved as DVC resolves them); ``plan`` is pure.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class StageNode:
    """One entry of DVC's index: a dvc.yaml stage, or a ``.dvc`` file (``source=True``)."""

    name: str  # what `dvc repro`/`dvc checkout` accept: "train", "data/raw.dvc"
    deps: tuple[str, ...]  # paths relative to the project root
    outs: tuple[str, ...]
    params: tuple[str, ...] | None = ()  # keys read from params.yaml; None: the whole file
    metrics: tuple[str, ...] = ()  # the outs that are metrics files
    source: bool = False
    param_files: tuple[str, ...] = ()  # every params file it reads (params.yaml included)
    cmd: str = ""  # as DVC resolved it
    cached: tuple[str, ...] = ()  # the outs kept in DVC's cache (not in git)


@dataclass(frozen=True)
class SweepPlan:
    affected: tuple[str, ...]  # run in every point, in pipeline order
    upstream: tuple[str, ...]  # reproduced once in the project before submission
    reused: tuple[str, ...]  # every stage above the affected ones: checked for changes first
    checkout: tuple[str, ...]  # linked into each workspace from the cache (stages and .dvc files)
    metrics: tuple[str, ...]  # metrics files the affected stages write


def _overlaps(a: str, b: str) -> bool:
    """Same path, or one inside the other (a stage that reads a whole output folder, or a file in it)."""
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _reads_key(node: StageNode, key: str) -> bool:
    if node.params is None:
        return True
    return any(key == p or key.startswith(p + ".") or p.startswith(key + ".") for p in node.params)


def producers(nodes: Sequence[StageNode], node: StageNode) -> list[StageNode]:
    """The nodes whose outputs ``node`` reads."""
    return [other for other in nodes if any(_overlaps(d, o) for d in node.deps for o in other.outs)]


def plan(nodes: Sequence[StageNode], keys: Iterable[str]) -> SweepPlan:
    """Split ``nodes`` (in DVC's order) for a sweep over the dotted ``keys`` of params.yaml."""
    keys = list(keys)
    affected: list[StageNode] = [n for n in nodes if not n.source and any(_reads_key(n, k) for k in keys)]
    changed = True
    while changed:  # close downstream: whatever reads an affected stage's output is affected too
        changed = False
        for node in nodes:
            if node not in affected and any(p in affected for p in producers(nodes, node)):
                affected.append(node)
                changed = True
    affected = [n for n in nodes if n in affected]  # pipeline order, whatever order they were found in
    feeding = [p for n in affected for p in producers(nodes, n) if p not in affected]
    feeding = list(dict.fromkeys(feeding))
    above: list[StageNode] = []
    todo = list(feeding)
    while todo:
        node = todo.pop()
        if node not in above:
            above.append(node)
            todo.extend(producers(nodes, node))
    return SweepPlan(
        affected=tuple(n.name for n in _topological(affected)),
        upstream=tuple(n.name for n in feeding if not n.source),
        reused=tuple(n.name for n in nodes if n in above and not n.source),
        checkout=tuple(n.name for n in feeding) + tuple(n.name for n in affected),
        metrics=tuple(m for n in affected for m in n.metrics),
    )


def _topological(nodes: list[StageNode]) -> list[StageNode]:
    """Producers before consumers (DVC's index order is not guaranteed to be one)."""
    done: list[StageNode] = []
    pending = list(nodes)
    while pending:
        ready = [n for n in pending if all(p in done or p not in nodes for p in producers(nodes, n))]
        if not ready:  # a cycle: DVC refuses those itself; keep the given order
            return done + pending
        done.extend(ready)
        pending = [n for n in pending if n not in ready]
    return done


class DvcProject:
    """The project as DVC's index resolves it, opened once per sweep command.

    One open repo answers every question the login node has (stages, cache folder,
    whether the reused stages are up to date): each fresh ``dvc`` process would cost
    a second or more of start-up and index building before the sweep is queued.
    """

    def __init__(self, root: Path) -> None:
        from dvc.repo import Repo

        self.root = root
        self.repo = Repo(str(root))

    def __enter__(self) -> DvcProject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.repo.close()

    def _rel(self, path: str) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    def nodes(self) -> list[StageNode]:
        from dvc.dependency.param import ParamsDependency

        nodes = []
        for stage in self.repo.index.stages:
            params: tuple[str, ...] | None = ()
            deps, param_files = [], []
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    param_files.append(self._rel(dep.fs_path))
                    if param_files[-1] == PARAMS_FILE:
                        params = tuple(dep.params) if dep.params else None
                else:
                    deps.append(self._rel(dep.fs_path))
            nodes.append(
                StageNode(
                    name=stage.addressing,
                    deps=tuple(deps),
                    outs=tuple(self._rel(o.fs_path) for o in stage.outs),
                    params=params,
                    metrics=tuple(self._rel(o.fs_path) for o in stage.outs if o.metric),
                    source=stage.is_data_source,
                    param_files=tuple(param_files),
                    cmd=stage.cmd if isinstance(getattr(stage, "cmd", None), str) else "",
                    cached=tuple(self._rel(o.fs_path) for o in stage.outs if o.use_cache),
                )
            )
        return nodes

    def cache_dir(self) -> Path:
        return Path(self.repo.cache.local_cache_dir).resolve()

    def changed(self, stages: Sequence[str]) -> bool:
        """Whether any of ``stages`` is out of date (``dvc status``, in-process).

        Each stage alone (``with_deps=False``): the caller lists every stage it reuses,
        and DVC's with_deps walk would hash a large raw-data folder once per route to it.
        """
        return any(self.repo.status(targets=[stage], with_deps=False) for stage in stages)
