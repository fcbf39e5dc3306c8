"""Slurm's warning signal as a flag the training loop reads, then handed on to submitit.

Slurm warns a job before its time limit or a preemption (``--signal USR2@N``); in a
submitit job, submitit's handler then requeues the job and exits at once, and the
next attempt resumes from the last per-epoch checkpoint. Inside ``fit`` that loses
the epoch under way, and with several tasks rank 0 would exit while the others
wait for it in a collective. ``WarningSignal`` takes the signal for the training
loop instead: ``requested`` turns true, the ranks agree on a step, rank 0 saves the
state there (``training.fit``, which raises ``Stopped``), and when the block ends
the signal goes to the handler that was there before (submitit's: checkpoint and
requeue on rank 0, nothing on the others). Where there was none (a direct call, a
test) nothing more happens: ``Stopped`` ends the stage.

Signal handlers can only be set from the main thread; elsewhere the watch is inert
(``hpcpipe.signal_watch``, which ``launch.termination``'s SIGTERM watch shares).
"""

from __future__ import annotations

import signal
from types import FrameType

from hpcpipe.signal_watch import SignalWatch

WARNING = signal.SIGUSR2  # what the profiles ask Slurm for (launch.profiles: --signal USR2@N)


class WarningSignal(SignalWatch):
    """A context manager that records the warning signal for the block (see the module docstring)."""

    def __init__(self, signum: int = WARNING) -> None:
        super().__init__(signum)
        self._frame: FrameType | None = None

    def requested(self) -> bool:
        return self.received

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received, self._frame = True, frame

    def __exit__(self, *exc: object) -> None:
        if self.restore() and self.received and callable(self.previous):
            self.previous(self.signum, self._frame)  # submitit's: requeue (rank 0) and exit


class EndSignal(SignalWatch):
    """SIGTERM as a stop request for the training loop, passed on at once.

    Slurm sends SIGTERM ``KillWait`` seconds (30 on many sites) before SIGKILL when it
    ends a job without a warning: ``scontrol requeue``, ``scancel``, a preemption or a
    time limit where no ``--signal`` was asked for. Without this the loop trains on
    until it is killed, and the next attempt resumes from the last epoch's checkpoint;
    with it the ranks stop at the next step they agree on and rank 0 saves there, as at
    the warning (``WarningSignal``). Unlike the warning, the signal also goes at once to
    the handler before (the job side's ``TerminationWatch``: nothing is published; in a
    plain process, the default: death), so an ended job is never mistaken for a live one.
    """

    def __init__(self) -> None:
        super().__init__(signal.SIGTERM)

    def requested(self) -> bool:
        return self.received

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        self.pass_on(signum, frame)
