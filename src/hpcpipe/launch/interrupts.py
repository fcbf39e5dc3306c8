"""Ctrl-C and SIGTERM in the launcher, so that no job is ever left running untracked.

A launcher holds a job that costs GPU hours; a signal may come at any moment:
- while waiting: ``SignalsAsExceptions`` turns it into ``Interrupted``, which the launcher
  answers by cancelling the job;
- between sbatch and the job being in hand and in the ledger: ``signals_held`` keeps it
  until then (else the exception would leave a job nobody knows the id of). For Slurm the
  signals are blocked in the mask, which the sbatch child inherits, so a Ctrl-C sent to
  the whole terminal's process group cannot kill sbatch half-way either; for the local
  executor they are only noted (a blocked mask would be inherited by the local job itself,
  which is then impossible to cancel);
- while cancelling: ``signals_noted`` makes a second Ctrl-C say that the cancel is under way
  instead of breaking it off with a traceback.

``Interrupted`` is a BaseException, like KeyboardInterrupt, so that code which catches
Exception (a stage run inline, in this process) does not mistake it for a failure.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(BaseException):
    """SIGINT or SIGTERM reached the launcher."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """130 for Ctrl-C, 143 for SIGTERM: what a shell reports for a process they ended."""
        return 128 + self.signum


class SignalsAsExceptions:
    """Turn SIGINT/SIGTERM into ``Interrupted`` for the duration of a wait, so a
    Ctrl-C or a killed ``dvc repro`` cancels the job instead of orphaning it."""

    def __enter__(self) -> None:
        def raise_interrupted(signum: int, _frame: Any) -> None:
            raise Interrupted(signum)

        self._old = {s: signal.signal(s, raise_interrupted) for s in SIGNALS}

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self._old.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_noted(on_signal: Callable[[int], None]) -> Iterator[list[int]]:
    """SIGINT/SIGTERM only call ``on_signal`` (and are listed) inside the block."""
    got: list[int] = []

    def note(signum: int, _frame: Any) -> None:
        got.append(signum)
        on_signal(signum)

    old = {s: signal.signal(s, note) for s in SIGNALS}
    try:
        yield got
    finally:
        for signum, handler in old.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_held(block: bool) -> Iterator[None]:
    """A signal during the block is raised as ``Interrupted`` when the block has finished."""
    with signals_noted(lambda _signum: None) as got:
        if block:
            signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            yield
        finally:
            if block:  # what arrived meanwhile is delivered (to `note`) here
                signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
    if got:
        raise Interrupted(got[0])
