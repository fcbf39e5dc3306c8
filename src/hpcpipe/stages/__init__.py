"""The pipeline's stages, described without importing them.

The launcher runs on a login node and must stay light (no torch): it reads this
table to know which function a stage is, which params sections it reads (its
slice of params.yaml) and which of its path arguments are outputs, which the job
writes to temporary paths and publishes only on success.

Each stage module has one function ``f(params, **paths) -> metrics`` that takes
paths in and returns a dict of metrics; it never knows how it was launched. A
resumable stage also takes ``checkpoint``: a path that survives a requeue.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    name: str
    target: str  # "package.module:function", imported on the job side only
    sections: tuple[str, ...]  # params.yaml sections the stage reads
    inputs: tuple[str, ...]  # path arguments read
    outputs: tuple[str, ...]  # path arguments written, published atomically
    tracked: bool = True  # opens a W&B run when W&B is on (prepare has nothing to chart)
    # takes a ``checkpoint`` path: saves its state there as it goes and resumes from it (train)
    resumable: bool = False

    @property
    def roles(self) -> tuple[str, ...]:
        return self.inputs + self.outputs


STAGES: dict[str, StageSpec] = {
    spec.name: spec
    for spec in (
        StageSpec(
            name="prepare",
            target="hpcpipe.stages.prepare:prepare",
            sections=("data", "prepare"),
            inputs=(),
            outputs=("prepared",),
            tracked=False,
        ),
        StageSpec(
            name="train",
            target="hpcpipe.stages.train:train",
            sections=("train",),
            inputs=("prepared",),
            outputs=("model", "metrics", "history"),
            resumable=True,
        ),
        StageSpec(
            name="evaluate",
            target="hpcpipe.stages.evaluate:evaluate",
            sections=("evaluate",),
            inputs=("prepared", "model"),
            outputs=("metrics", "confusion"),
        ),
    )
}
