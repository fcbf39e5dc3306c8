"""What hpcpipe shows on a terminal: its own one-line messages and its tables, one home each.

``say`` is every ``hpcpipe: ...`` line, on the login node and in a job's log alike. It
writes to stderr so a command's stdout (``hpcpipe status``'s table, ``dvc exp show``
piped on) stays data, flushes so the line is seen before a long wait, and never raises:
a launcher whose terminal went away (ssh dropped, ``| head`` closed the pipe) must still
cancel its job and set the ledger right, not die in a traceback about a message.

``render_table`` is every fixed-width table (``hpcpipe status``, a sweep's points): columns two
spaces apart, each as wide as its widest cell, no trailing blanks to trip a diff.

Only the standard library here: job processes and the sweep import this at start.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence

PREFIX = "hpcpipe: "
GAP = "  "


def say(message: str) -> None:
    """One hpcpipe line on stderr; a closed stderr must not turn into a traceback."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: print to a closed file
        print(f"{PREFIX}{message}", file=sys.stderr, flush=True)


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """``header`` and ``rows`` as aligned text, one line each, trailing spaces stripped."""
    lines = [tuple(header), *(tuple(row) for row in rows)]
    for row in lines:
        if len(row) != len(header):
            raise ValueError(f"render_table: a row of {len(row)} cells under {len(header)} columns: {row}")
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join(
        GAP.join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines
    )
