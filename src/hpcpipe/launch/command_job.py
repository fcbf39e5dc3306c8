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
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hpcpipe.launch import completion
from hpcpipe.launch.host_memory import tune_host_allocator
from hpcpipe.launch.termination import TerminationWatch
from hpcpipe.tracking.command_run import command_run
from hpcpipe.tracking.context import RunContext

EXIT_MARK = "command exited with status"
STOP_GRACE_S = 0.5  # a stopped job's command gets this long after SIGTERM (submitit's local
# executor kills the job process 1 s after its SIGINT)


class CommandFailed(RuntimeError):
    """The command exited non-zero; its status is in the message (the launcher reads it back)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"{EXIT_MARK} {code}")
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


def _stop(process: subprocess.Popen[bytes]) -> None:
    """End the command: SIGTERM, a moment to exit, then SIGKILL."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class CommandRunner:
    """Runs one command as the job; checkpointable (see the module docstring)."""

    def __init__(self) -> None:
        self._process: subprocess.Popen[bytes] | None = None

    def __call__(self, job: CommandJob) -> int:
        os.chdir(job.workdir)
        tune_host_allocator()
        Path(job.checkpoint_dir).mkdir(parents=True, exist_ok=True)
        env = {"HPCPIPE_STAGE": job.stage, "HPCPIPE_CHECKPOINT_DIR": job.checkpoint_dir}
        with contextlib.ExitStack() as stack:
            termination = stack.enter_context(TerminationWatch(f"stage {job.stage}"))
            if job.context is not None:
                env.update(stack.enter_context(command_run(job.wandb, job.context, job.workdir)))
            try:
                self._process = subprocess.Popen(
                    list(job.argv), env={**os.environ, **env}, preexec_fn=_ignore_slurm_warning
                )
            except (FileNotFoundError, PermissionError) as err:  # what a shell says as 127 / 126
                print(f"hpcpipe: {job.argv[0]}: {err.strerror}", file=sys.stderr, flush=True)
                raise CommandFailed(127 if isinstance(err, FileNotFoundError) else 126) from None
            try:
                code = self._process.wait()
            except BaseException:  # SIGINT, submitit's exit after a requeue: no orphan command
                _stop(self._process)
                raise
        if code < 0:  # killed by a signal: the shell's convention
            code = 128 - code
        if code != 0:
            raise CommandFailed(code)
        termination.check()  # exit 0 after SIGTERM: not done, and its checkpoint is kept
        if all(Path(job.workdir, out).exists() for out in job.outs):
            shutil.rmtree(job.checkpoint_dir, ignore_errors=True)
            if job.context is not None:  # for a launcher that adopts the finished job
                completion.stamp(job.workdir, job.outs, job.context.fingerprint)
        return code

    def checkpoint(self, job: CommandJob) -> Any:
        """submitit's warning-signal hook: let the command save its state, then requeue the call."""
        from submitit.helpers import DelayedSubmission

        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.Signals[f"SIG{job.forward}"])
            deadline = time.monotonic() + job.grace_s
            while process.poll() is None and time.monotonic() < deadline:
                time.sleep(0.2)
            if process.poll() is None:
                process.kill()
        if not any(Path(job.checkpoint_dir).iterdir()):
            print(
                f"hpcpipe: {job.stage}: not requeued: the command saved nothing in "
                "$HPCPIPE_CHECKPOINT_DIR, so a requeue would only repeat the same work",
                file=sys.stderr,
                flush=True,
            )
            return None  # submitit then ends the job as failed
        return DelayedSubmission(CommandRunner(), job)
