"""hpcpipe.signal_watch, the handler both job-side watches share, through Slurm's warning
signal watch (``ml.stopping.WarningSignal``; SIGTERM's is tests/unit/test_termination.py).
Real signals, sent to this process."""

from __future__ import annotations

import os
import signal
import threading

from hpcpipe.ml.stopping import WarningSignal


def test_the_warning_is_recorded_in_the_block_and_handed_on_after_it() -> None:
    seen: list[int] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, _frame: seen.append(signum))
    try:
        with WarningSignal() as warning:
            assert not warning.requested()
            os.kill(os.getpid(), signal.SIGUSR2)
            assert warning.requested() and seen == []  # the loop's to act on, not yet submitit's
        assert seen == [signal.SIGUSR2]  # then the handler before it (submitit's requeue)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == [signal.SIGUSR2, signal.SIGUSR2]  # given back: no watch left behind
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_without_a_warning_nothing_is_handed_on() -> None:
    seen: list[int] = []
    before = signal.signal(signal.SIGUSR2, lambda signum, _frame: seen.append(signum))
    try:
        with WarningSignal():
            pass
        assert seen == []
    finally:
        signal.signal(signal.SIGUSR2, before)


def test_outside_the_main_thread_the_watch_is_inert() -> None:
    handler = signal.getsignal(signal.SIGUSR2)
    found: list[object] = []

    def body() -> None:
        with WarningSignal() as warning:
            found.append(signal.getsignal(signal.SIGUSR2))
            found.append(warning.requested())

    worker = threading.Thread(target=body)
    worker.start()
    worker.join()
    assert found == [handler, False]
    assert signal.getsignal(signal.SIGUSR2) is handler
