"""Job side of a command stage: run the user's command in the project, as the job.

``CommandRunner`` is what the launcher submits for ``hpcpipe run NAME -- CMD ...``.
The command inherits the job's stdout and stderr (the launcher streams them), runs
in the project root with the environment the launcher prepared (``HPCPIPE_STAGE``,
``HPCPIPE_CHECKPOINT_DIR``, the W&B variables; see ``command_env``), and its exit
status is the job's: non-zero raises ``CommandFailed``, so submitit records the job
as failed and the launcher exits with the same status.

Time limits and preemption: the runner is checkpointable in submitit's sense. When
Slurm sends its warning signal before the time limit (or a preemption), submitit
calls ``checkpoint``: the runner forwards the profile's signal to the command, gives
it ``grace_s`` to save its state into ``HPCPIPE_CHECKPOINT_DIR`` and exit, and asks
submitit to requeue the same call. The next attempt reruns the same command, which
resumes if it finds its checkpoint. A command that saved nothing there is not
requeued: it would only spend the same hours again and hit the same limit. The
folder is keyed by the stage fingerprint and removed once the command succeeded and
the stage's outputs exist.

Several tasks (a profile entry with ``nodes``, ``gpus`` per node or ``tasks_per_node``):
every task runs the command once, with torchrun's variables (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``: see
``distributed``), so a script that calls ``init_process_group("env://")`` just works.
Rank 0 speaks for the job (``ranks``): it waits for every rank's end, and the job's exit
status is the worst rank's, named in its stderr (``rank 1 of 2, on nid001234 exited with
status 3``). A rank whose command fails makes the others stop theirs, as torchrun does.
Only rank 0 gets the W&B variables (the others ``WANDB_MODE=disabled``), removes the
checkpoint folder and stamps the completion. Slurm's warning reaches every task; each
forwards the profile's signal to its own command, rank 0 waits (within the grace) for
all of them to end, and requeues the whole allocation; the next attempt starts every rank
again with the same ``HPCPIPE_CHECKPOINT_DIR``.

A job that gets SIGTERM (scancel, the time limit, a preemption; Slurm sends it to the
command too) is never reported as done, even if the command then exits 0 (a script that
saves its state on SIGTERM and exits cleanly): it raises ``Terminated`` and keeps the
checkpoint folder (see ``hpcpipe.launch.termination``). When the job process itself is
stopped while the command runs (the local executor's cancel is SIGINT), the command is
stopped with it instead of running on as an orphan.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpipe.console import say
from hpcpipe.launch import completion, distributed
from hpcpipe.launch.cpu_threads import size_math_threads
from hpcpipe.launch.host_memory import tune_host_allocator
from hpcpipe.launch.ranks import WATCH_S, RankBoard, worst
from hpcpipe.launch.termination import TerminationWatch
from hpcpipe.tracking.command_run import command_run
from hpcpipe.tracking.context import RunContext

EXIT_MARK = "command exited with status"
STOP_GRACE_S = 0.5  # a stopped job's command gets this long after SIGTERM (submitit's local
# executor kills the job process 1 s after its SIGINT)


class CommandFailed(RuntimeError):
    """The command exited non-zero; its status is in the message (the launcher reads it back)."""

    def __init__(self, code: int, who: str = "") -> None:
        super().__init__(f"{EXIT_MARK} {code}" + (f" ({who})" if who else ""))
        self.code = code


def exit_status_from(reason: str) -> int | None:
    """The command's exit status from a failed job's last error line, if it was a CommandFailed."""
    if EXIT_MARK not in reason:
        return None
    try:
        return int(reason.rsplit(EXIT_MARK, 1)[1].split()[0])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class CommandJob:
    """Everything one command stage's job needs, pickled into the job."""

    argv: tuple[str, ...]
    workdir: str  # the project root
    stage: str
    checkpoint_dir: str  # absolute, on the shared filesystem
    outs: tuple[str, ...] = ()  # relative to workdir; the checkpoint goes once they all exist
    forward: str = "TERM"  # the signal the command gets at Slurm's warning
    grace_s: float = 30.0  # how long it has to save and exit before the requeue
    context: RunContext | None = None  # None: no W&B environment
    wandb: Any = None  # the params file's wandb: section, if any


def _ignore_slurm_warning() -> None:
    """In the command's process, before exec: Slurm sends its warning (submitit's USR2) to
    every process of the job, and a plain script would die of it before it could save.
    Ignored signals stay ignored through exec; the command gets the profile's signal from
    ``checkpoint`` instead, and may still install its own USR2 handler."""
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


def _stop(process: subprocess.Popen[bytes], grace_s: float = STOP_GRACE_S) -> None:
    """End the command: SIGTERM, a moment to exit, then SIGKILL."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class CommandRunner:
    """Runs one command as the job (or as one task of it); checkpointable (see the module docstring)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None
        self._board: RankBoard | None = None
        self._warned = False  # Slurm's warning came: ends from now on are not failures

    def __call__(self, job: CommandJob) -> int:
        os.chdir(job.workdir)
        tune_host_allocator()
        size_math_threads(os.environ)  # the command inherits it (see cpu_threads)
        Path(job.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        env = {"HPCPIPE_STAGE": job.stage, "HPCPIPE_CHECKPOINT_DIR": job.checkpoint_dir}
        place = distributed.placement(os.environ)
        leader = place is None or place.leader
        if place is not None:
            env.update(place.env())
            self._board = RankBoard.for_job(place)
            if not leader:
                self._forward_warning(job)
        stopped_for = None
        with contextlib.ExitStack() as stack:
            termination = stack.enter_context(TerminationWatch(f"stage {job.stage}"))
            if job.context is not None and leader:
                env.update(stack.enter_context(command_run(job.wandb, job.context, job.workdir)))
            elif job.context is not None:
                env["WANDB_MODE"] = "disabled"  # one W&B run per stage: rank 0's
            try:
                self._process = subprocess.Popen(
                    list(job.argv), env={**os.environ, **env}, preexec_fn=_ignore_slurm_warning
                )
            except (FileNotFoundError, PermissionError) as err:  # what a shell says as 127 / 126
                say(f"{job.argv[0]}: {err.strerror}")
                code = 127 if isinstance(err, FileNotFoundError) else 126
            else:
                try:
                    code, stopped_for = self._wait(job)
                except BaseException:  # SIGINT, submitit's exit after a requeue: no orphan command
                    _stop(self._process)
                    raise
        if code < 0:  # killed by a signal: the shell's convention
            code = 128 - code
        if self._board is not None:
            why = f"stopped: {stopped_for}" if stopped_for else ""
            self._board.record(code, why, stopped=bool(stopped_for), warned=self._warned)
            if not leader:
                return code  # rank 0 reports it (see ranks): this task's own status stays 0
            self._raise_for_worst(job)
        if code != 0:
            raise CommandFailed(code)
        termination.check()  # exit 0 after SIGTERM: not done, and its checkpoint is kept
        if all(Path(job.workdir, out).exists() for out in job.outs):
            shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
            if job.context is not None:  # for a launcher that adopts the finished job
                completion.stamp(job.workdir, job.outs, job.context.fingerprint)
        return code

    def _wait(self, job: CommandJob) -> tuple[int, str]:
        """The command's exit status; with several ranks, it is stopped once another rank
        failed (then the second item says which)."""
        process = self._process
        assert process is not None
        while True:
            try:
                return process.wait(timeout=WATCH_S if self._board is not None else None), ""
            except subprocess.TimeoutExpired:
                pass
            failed = self._board.failure_elsewhere() if self._board is not None and not self._warned else None
            if failed is not None:
                who = failed.describe(self._board.placement.world_size)  # type: ignore[union-attr]
                say(f"{job.stage}: {who}; stopping this rank's command")
                _stop(process, grace_s=min(job.grace_s, 10.0))
                return process.wait(), who

    def _raise_for_worst(self, job: CommandJob) -> None:
        """Rank 0, its own command done: wait for every rank's end; fail as the worst one."""
        board = self._board
        assert board is not None
        world = board.placement.world_size
        ends = board.wait_for_all()
        bad = worst(ends)
        for end in sorted(ends.values(), key=lambda e: e.rank):
            if end.failed:
                say(f"{job.stage}: {end.describe(world)}")
        if bad is not None:
            where = f", on {bad.node}" if bad.node else ""
            raise CommandFailed(bad.code, f"rank {bad.rank} of {world}{where}")

    def _forward_warning(self, job: CommandJob) -> None:
        """A rank other than 0: at Slurm's warning (USR2, which submitit's handler ignores on
        these ranks) send the profile's signal to this rank's command too, so every rank
        stops; rank 0 requeues the allocation (``checkpoint``)."""
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGUSR2)

        def forward(signum: int, frame: Any) -> None:
            self._warned = True
            process = self._process
            if process is not None and process.poll() is None:
                process.send_signal(signal.Signals[f"SIG{job.forward}"])
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGUSR2, forward)

    def checkpoint(self, job: CommandJob) -> Any:
        """submitit's warning-signal hook: let the command save its state, then requeue the call.

        With several ranks every one got the warning (see ``_forward_warning``); the others'
        commands are given the same grace to end before the allocation is requeued."""
        from submitit.helpers import DelayedSubmission

        self._warned = True
        process = self._process
        deadline = time.monotonic() + job.grace_s
        if process is not None and process.poll() is None:
            process.send_signal(signal.Signals[f"SIG{job.forward}"])
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if process.poll() is None:
                process.kill()
        if self._board is not None:  # this rank's end too, then the others' (within the grace)
            code = (process.poll() if process is not None else None) or 0
            self._board.record(128 - code if code < 0 else code, "ended at the warning", warned=True)
            self._board.wait_for_all(until=lambda: time.monotonic() >= deadline)
        if not any(Path(job.checkpoint_dir).iterdir()):
            say(
                f"{job.stage}: not requeued: the command saved nothing in "
                "$HPCPIPE_CHECKPOINT_DIR, so a requeue would only repeat the same work"
            )
            return None  # submitit then ends the job as failed
        return DelayedSubmission(CommandRunner(), job)
