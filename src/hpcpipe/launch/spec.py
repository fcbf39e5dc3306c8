"""What the job side needs to run a function stage, resolved on the login node.

A *function stage* is Python written for hpcpipe: ``f(params, **paths) -> metrics``,
named in dvc.yaml as ``hpcpipe run NAME --fn package.module:function --ROLE PATH ...``.
The roles are the function's own keyword names; which of them are outputs is not
declared here but asked of DVC (a path that is one of the stage's ``outs``), so the
job writes those to temporary siblings and publishes them all at once. The launcher
knows no stage, role or params section by name.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageSpec:
    name: str  # DVC's address of the stage
    target: str  # "package.module:function", imported on the job side
    sections: tuple[str, ...]  # the params sections the stage declares in dvc.yaml (W&B config)
    inputs: tuple[str, ...]  # path arguments read
    outputs: tuple[str, ...]  # path arguments written (DVC outs), published atomically
    tracked: bool = True  # opens a W&B run when W&B is on
    # takes a ``checkpoint`` path: saves its state there as it goes and resumes from it
    resumable: bool = False
    # every DVC out of the stage (relative to the project root): signed in the job's
    # completion stamp so a later launcher can adopt the finished job (see completion)
    outs: tuple[str, ...] = ()

    @property
    def roles(self) -> tuple[str, ...]:
        return self.inputs + self.outputs
