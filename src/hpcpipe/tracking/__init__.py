"""W&B tracking for stage executions: offline runs with stable ids, and ``hpcpipe sync``.

Importing this package imports neither wandb nor torch (the launcher imports
``RunContext`` on a login node); wandb is imported in the job when a run starts.
"""

from hpcpipe.tracking.context import RunContext
from hpcpipe.tracking.run import (
    SAMPLE_COUNT,
    log_confusion,
    log_epoch,
    log_samples,
    log_summary,
    start_run,
)

__all__ = [
    "SAMPLE_COUNT",
    "RunContext",
    "log_confusion",
    "log_epoch",
    "log_samples",
    "log_summary",
    "start_run",
]
