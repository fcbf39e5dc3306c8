"""Job side: notice that the job is being ended, so that an ended job never publishes.

Slurm ends a job with SIGTERM and, ``KillWait`` seconds later (30 s on many sites),
SIGKILL: at ``scancel``, at the time limit, at a preemption without a warning
signal, at ``scontrol requeue``. submitit's job process only logs SIGTERM ("Bypassing
signal SIGTERM") and runs on, so a stage that finishes inside those seconds would
publish outputs of a job that Slurm and the launcher already call CANCELLED (or
TIMEOUT), and a command stage would be reported as done.

``TerminationWatch`` sets a flag on SIGTERM, says so in one line on stderr, then does
whatever the handler before it did (submitit's log line; the launcher's interrupt
for the inline executor; the default, death, in a bare process). It does not end
the job itself: submitit's warning signal (USR2: checkpoint and requeue) may still
follow, as it does in submitit's own preemption sequence (SIGTERM, then USR2), and
its handler stays untouched. ``check`` raises ``Terminated`` once the flag is set:
the job side calls it before publishing and once more before the publication is
committed, and the job ends failed with its outputs as they were.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

from hpcpipe.signal_watch import SignalWatch

WHY = "cancelled, preempted or at its time limit"


class Terminated(RuntimeError):
    """The job got SIGTERM: its results are not published (the job ends failed)."""


class TerminationWatch(SignalWatch):
    """A context manager that records SIGTERM while it is active (see the module docstring).

    Inert outside the main thread (``SignalWatch``): there ``received`` stays False.
    """

    def __init__(self, what: str = "the job") -> None:
        super().__init__(signal.SIGTERM)
        self.what = what

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        first = not self.received
        self.received = True
        if first:
            # os.write, not console.say's print: a handler may run in the middle of another
            # write to stderr, where print would raise (reentrant call)
            line = f"hpcpipe: {self.what}: SIGTERM received ({WHY}): its outputs will not be published\n"
            os.write(2, line.encode())
        self.pass_on(signum, frame)  # what SIGTERM would have done without us

    def check(self) -> None:
        """Raise ``Terminated`` if SIGTERM came: what the job does instead of publishing."""
        if self.received:
            raise Terminated(f"{self.what} got SIGTERM ({WHY}): outputs not published, left as they were")
