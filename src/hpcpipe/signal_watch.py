"""A signal handled by an object for the length of a ``with`` block, then given back.

The job side watches two signals this way: SIGTERM (``launch.termination``: an ended job
never publishes) and Slurm's warning signal (``ml.stopping``: the training loop stops at
a step it chooses). Both install their handler on entry and put the one before it back on
exit, and both must be inert outside the main thread, the only one Python lets set a
handler (a test's worker thread, a thread pool in a stage).

Standard library only: ``ml.stopping`` imports this inside a training job, and the
launcher must not pull in the job side's imports, nor the job side the launcher's.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import Any, TypeVar

_Watch = TypeVar("_Watch", bound="SignalWatch")


class SignalWatch:
    """While active, ``signum`` goes to ``on_signal`` (a subclass says what it does);
    ``previous`` is the handler it displaced, for ``on_signal`` to hand the signal on to."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.received = False
        self.previous: Any = None
        self._installed = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        raise NotImplementedError

    def __enter__(self: _Watch) -> _Watch:
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(self.signum, self.on_signal)
            self._installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def pass_on(self, signum: int, frame: FrameType | None) -> None:
        """Do what ``signum`` would have done without this watch: call the handler before it,
        or, where that was the default (or one not set from Python), take the default now."""
        if callable(self.previous):
            self.previous(signum, frame)
        elif self.previous in (signal.SIG_DFL, None):
            signal.signal(signum, signal.SIG_DFL)
            self._installed = False
            os.kill(os.getpid(), signum)

    def restore(self) -> bool:
        """Give the signal back to ``previous``; whether this watch had taken it."""
        if not self._installed:
            return False
        signal.signal(self.signum, self.previous)
        self._installed = False
        return True
