"""Whether a process still runs: one answer for the claims, ``hpcpipe sync`` and local jobs.

A pid alone is a weak name for a process: once it ends, the system hands the pid to the
next process started. So a record that names a process (a claim, a run's live marker)
also says when it was written, and a live process counts as the one named only if it
had started by then. Another user's process is alive (``kill(pid, 0)`` would answer
"not permitted", which says the process exists); an ended one not yet reaped (a zombie)
is not.
"""

from __future__ import annotations

import psutil

# a process's start time, as the kernel gives it back, is counted from a boot time in whole
# seconds: it can read up to a second off, either way the record's clock rounds
CLOCK_SLACK_S = 2.0


def _process(pid: object) -> psutil.Process | None:
    """The live, non-zombie process ``pid``; None when there is none."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return None
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.NoSuchProcess:  # ZombieProcess included
        return None
    return process


def pid_alive(pid: object, started_by: object = None) -> bool:
    """Whether process ``pid`` runs on this host (and, when ``started_by`` is a wall-clock
    time, had started by then: a later one only reuses the pid; anything else there, such
    as a record's missing field, is no limit)."""
    try:
        process = _process(pid)
        if process is None:
            return False
        if not isinstance(started_by, (int, float)) or isinstance(started_by, bool):
            return True
        return process.create_time() <= started_by + CLOCK_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # exists, and is not ours to inspect
        return True


def running_command(pid: object) -> str | None:
    """The command line of live process ``pid``, its words joined by spaces; None when it
    is gone, a zombie, or not ours to read."""
    try:
        process = _process(pid)
        return None if process is None else " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
