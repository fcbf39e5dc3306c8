"""Job side: what runs on the compute node (or in the local subprocess).

``run_stage`` is what the launcher hands to submitit. It is pickled by reference,
so the login node never imports the stage (and so never imports torch): the
import happens here, in the job.

Outputs are published all at once or not at all (``hpcpipe.launch.publish``): the
stage writes every output to a temporary sibling path; only when the stage function
returned are they put in place together, under a journal that the next run of the
stage rolls back first if a kill cut the publication short. A stage that raises, is
cancelled or is killed leaves the previous outputs untouched (and at worst ``.tmp-``
siblings, which the next run of the stage removes). A job that got SIGTERM (scancel,
the time limit, a preemption: ``hpcpipe.launch.termination``) runs on under submitit
until Slurm kills it, but never publishes.

With a ``RunContext`` (what the launcher resolved: fingerprint, profile, resources)
the stage runs inside its W&B run (``tracking.start_run``), so stage functions keep
their launch-agnostic signature and log through ``hpcpipe.tracking``.

Requeue (preemption, time limit): for a resumable stage (``StageSpec.resumable``:
train) the launcher submits ``run_resumable_stage``, a submitit *checkpointable*
callable. Slurm warns the job (``--signal USR2@N``, see ``profiles.signal_delay_s``);
submitit's handler calls its ``checkpoint``, which resubmits the same call,
requeues the job (``scontrol requeue``, same job id) and exits. Other stages go as
the plain ``run_stage``: submitit requeues them when preempted (they start over) but
fails them at their time limit (TIMEOUT), since a stage that cannot resume would
only spend the same hours again and hit the same limit. The state itself is
not saved from the signal handler: a resumable stage (train) already saves its
whole state after every epoch to a checkpoint file beside its job folder, named by
the stage fingerprint, so a requeue for any reason (also ``scontrol requeue`` by an
admin, which sends no warning) resumes after the last finished epoch, and a changed
input, param or code never resumes a stale one. The file is removed once the
stage's outputs are published.

Several tasks (a profile entry with ``nodes``, ``gpus`` per node or ``tasks_per_node``):
every task runs the same function, with torchrun's variables in its environment (see
``distributed``). Only rank 0's return counts: it alone rolls back a cut publication,
cleans old checkpoints, opens the W&B run, publishes the outputs and stamps the
completion, and only once every rank has recorded that its function returned (see
``ranks``); a rank that raised fails the job, named in rank 0's error. The other ranks
get their output roles as paths in a private temporary folder, removed afterwards, so
a function that writes on every rank never touches the published files; their result
is ignored.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hpcpipe.console import say
from hpcpipe.files import TEMP_MARK
from hpcpipe.launch import completion, distributed
from hpcpipe.launch.cpu_threads import size_math_threads
from hpcpipe.launch.host_memory import tune_host_allocator
from hpcpipe.launch.publish import Publisher, remove_path, remove_stale_staging, staging_path
from hpcpipe.launch.ranks import RankBoard, WarningHeard, worst
from hpcpipe.launch.spec import StageSpec
from hpcpipe.launch.termination import TerminationWatch
from hpcpipe.stage_function import import_target
from hpcpipe.tracking import RunContext, start_run

CHECKPOINT_DIR = Path(".hpcpipe") / "checkpoints"  # relative to the project, when not in a submitit job


def checkpoint_folder(workdir: str) -> Path:
    """Where a resumable stage keeps its checkpoint: its submitit job folder (on the
    shared filesystem, kept across requeues), else ``.hpcpipe/checkpoints`` in the project."""
    try:
        import submitit

        return Path(submitit.JobEnvironment().paths.folder)
    except RuntimeError:  # not inside a submitit job (inline executor, a direct call)
        return Path(workdir) / CHECKPOINT_DIR


class RankFailed(RuntimeError):
    """Another rank of a multi-task stage failed: rank 0 publishes nothing."""


def checkpoint_file(spec: StageSpec, workdir: str, fp: str, clean: bool = True) -> Path:
    """The stage's checkpoint for fingerprint ``fp``; checkpoints of other fingerprints are
    removed (``clean``; only rank 0 of a multi-task stage cleans)."""
    folder = checkpoint_folder(workdir)
    path = folder / f"checkpoint-{spec.name}-{fp}.pt"
    if not clean:
        return path
    for stale in folder.glob(f"checkpoint-{spec.name}-*.pt"):
        if stale != path:
            stale.unlink(missing_ok=True)
    # their set-aside unusable ones, and temp files of writers killed mid-save (this
    # fingerprint's own: ml.checkpoint.resume)
    leftovers = [
        *folder.glob(f"checkpoint-{spec.name}-*.pt.unusable"),
        *folder.glob(f".checkpoint-{spec.name}-*.pt{TEMP_MARK}*"),
    ]
    for stale in leftovers:
        if not stale.name.startswith((f"{path.name}.", f".{path.name}{TEMP_MARK}")):
            stale.unlink(missing_ok=True)
    return path


class ResumableStageRunner:
    """What the launcher submits for a resumable stage: checkpointable in submitit's sense.

    submitit pickles it by reference to this module; its ``checkpoint`` method is what
    makes submitit requeue the job at the time-limit or preemption signal instead of
    failing it.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return run_stage(*args, **kwargs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit's signal handler: run the same call again after the requeue.

        Nothing is saved here: the stage's own per-epoch checkpoint is what the next
        attempt resumes from (see the module docstring).
        """
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


run_resumable_stage = ResumableStageRunner()


def stage_callable(spec: StageSpec) -> Any:
    """``run_resumable_stage`` for a resumable stage, else ``run_stage``."""
    return run_resumable_stage if spec.resumable else run_stage


def run_stage(
    spec: StageSpec,
    params: Any,
    paths: Mapping[str, str],
    workdir: str,
    context: RunContext | None = None,
) -> dict[str, Any]:
    """Run one stage function with staged outputs, then publish them. What the launcher
    submits for a stage that cannot resume (see the module docstring).

    ``paths`` maps each role of ``spec`` to its path relative to ``workdir`` (the
    project root, where DVC runs the stage command). ``context``: see ``tracking``;
    without one (or with W&B disabled in params) nothing is tracked.
    """
    os.chdir(workdir)
    tune_host_allocator()  # before the stage imports torch, on every rank: see host_memory
    size_math_threads(os.environ)  # likewise: see cpu_threads
    place = distributed.placement(os.environ)
    if place is not None:
        os.environ.update(place.env())  # before the function imports torch.distributed
        board = RankBoard.for_job(place)
        if not place.leader:
            return _run_follower(spec, params, paths, workdir, context, board)
    with TerminationWatch(f"stage {spec.name}") as termination:
        return _run_and_publish(
            spec, params, paths, workdir, context, termination, board if place is not None else None
        )


def _run_follower(
    spec: StageSpec,
    params: Any,
    paths: Mapping[str, str],
    workdir: str,
    context: RunContext | None,
    board: RankBoard,
) -> dict[str, Any]:
    """A rank other than 0: run the function, record how it ended, publish nothing, and
    return normally whatever happened (rank 0 reports it; see ``ranks``)."""
    scratch = Path(tempfile.mkdtemp(prefix=f"hpcpipe-{spec.name}-rank{board.placement.rank}-"))
    warning = WarningHeard()
    try:
        func = import_target(spec.target, workdir)
        kwargs: dict[str, Any] = {
            role: scratch / Path(paths[role]).name if role in spec.outputs else Path(paths[role])
            for role in spec.roles
        }
        if spec.resumable:
            fp = context.fingerprint if context else "direct"
            kwargs["checkpoint"] = checkpoint_file(spec, workdir, fp, clean=False)
        with warning:
            metrics = func(params, **kwargs)
    except Exception as err:  # recorded for rank 0, which fails the job with it
        why = f"raised {type(err).__name__}: {err}".splitlines()[0]
        if warning.received:  # stopped at the warning as rank 0 did: the job is requeued
            board.record(1, f"ended at the warning ({why})", warned=True)
            return {}
        traceback.print_exc(file=sys.stderr)
        board.record(1, why)
        return {}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    board.record(0)
    return dict(metrics or {})


def _run_and_publish(
    spec: StageSpec,
    params: Any,
    paths: Mapping[str, str],
    workdir: str,
    context: RunContext | None,
    termination: TerminationWatch,
    board: RankBoard | None = None,
) -> dict[str, Any]:
    publisher = Publisher(Path.cwd(), spec.name)  # run_stage chdir-ed into the workdir
    publisher.recover()  # before anything else: a publication a kill cut short is rolled back
    func = import_target(spec.target, workdir)
    token = f"{os.getpid()}-{int(time.time())}"
    staged: dict[str, Path] = {}
    kwargs: dict[str, Path] = {}
    for role in spec.roles:
        final = Path(paths[role])
        if role in spec.outputs:
            final.parent.mkdir(parents=True, exist_ok=True)
            remove_stale_staging(final)
            staged[role] = staging_path(final, token)
            kwargs[role] = staged[role]
        else:
            kwargs[role] = final
    checkpoint: Path | None = None
    if spec.resumable:
        # the fingerprint fixed at submission: the same in every requeued attempt
        checkpoint = checkpoint_file(spec, workdir, context.fingerprint if context else "direct")
    try:
        try:
            with start_run(params, context if spec.tracked else None, spec.sections, workdir):
                metrics = func(params, **kwargs, **({"checkpoint": checkpoint} if checkpoint else {}))
        except Exception as err:
            if board is not None:
                board.record(1, f"raised {type(err).__name__}: {err}".splitlines()[0])
                first = board.failure_elsewhere()  # a peer's failure is often the cause of ours
                if first is not None:
                    say(f"{spec.name}: {first.describe(board.placement.world_size)}")
            raise
        if board is not None:
            _wait_for_ranks(board, termination)
        outputs = [(tmp, Path(paths[role])) for role, tmp in staged.items()]
        publisher.publish(outputs, token, check=termination.check)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)  # published: nothing left to resume
        if context is not None:  # for a launcher that adopts the finished job
            completion.stamp(workdir, spec.outs, context.fingerprint)
    finally:
        for tmp in staged.values():
            remove_path(tmp)
    return dict(metrics or {})


def _wait_for_ranks(board: RankBoard, termination: TerminationWatch) -> None:
    """Rank 0, its function returned: every rank must have returned too before anything is
    published; one that raised fails the job (``RankFailed``), named."""
    board.record(0)
    ends = board.wait_for_all(until=lambda: termination.received)
    termination.check()
    bad = worst(ends)
    if bad is not None:
        raise RankFailed(f"{bad.describe(board.placement.world_size)}: outputs not published")
