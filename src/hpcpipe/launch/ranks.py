"""Job side: how the tasks of a multi-task stage tell each other how they ended.

The launcher reads one result, task 0's (submitit's ``<job>_0_result.pkl``), and one
stderr, task 0's. So rank 0 speaks for the job: before it reports success (and before a
function stage publishes) it waits until every rank has recorded its end here, and it
fails the job when any rank failed, naming that rank and, for a command, giving its exit
status. The other ranks record their end and return normally: their own exit status
stays 0, so ``srun --kill-on-bad-exit`` (see ``profiles.slurm_parameters``) ends the step
only when a task dies without a word (killed, out of memory) or rank 0 itself fails.

As torchrun does, a rank that sees another rank fail on its own stops its command (see
``command_job``): a script blocked in a collective would otherwise wait for the dead peer
until the time limit.

The records are small JSON files in the submitit job folder (on the shared filesystem),
``<job id>_ranks/attempt-<N>/rank-<K>.json``, one folder per attempt of a requeued job
(``SLURM_RESTART_COUNT``), so a new attempt never reads the last one's ends.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType

from hpcpipe.files import write_json_atomically
from hpcpipe.launch.distributed import Placement
from hpcpipe.signal_watch import SignalWatch

# How often the folder is listed: while a rank waits for the others' ends, and while its
# command runs (another rank's failure). On Lustre every listing is a metadata request of
# every rank, so not faster than this; a command's own end is seen at once regardless.
POLL_S = 0.5
WATCH_S = 2.0


@dataclass(frozen=True)
class RankEnd:
    """How one rank ended: ``code`` 0 is success; ``stopped``: ended by us because another
    rank failed; ``warned``: ended at Slurm's warning (time limit, preemption), not a failure."""

    rank: int
    node: str
    code: int
    why: str = ""
    stopped: bool = False
    warned: bool = False

    @property
    def failed(self) -> bool:
        """Failed on its own: not stopped by us, not ended by the warning."""
        return self.code != 0 and not self.stopped and not self.warned

    def describe(self, world_size: int) -> str:
        where = f", on {self.node}" if self.node else ""
        what = self.why or f"exited with status {self.code}"
        return f"rank {self.rank} of {world_size}{where} {what}"


class RankBoard:
    """The ends of the ranks of one attempt of one job (see the module docstring)."""

    def __init__(self, folder: Path, placement: Placement) -> None:
        self.folder = folder
        self.placement = placement

    @classmethod
    def for_job(cls, placement: Placement) -> RankBoard:
        """The board of the submitit job this process runs in."""
        import submitit

        env = submitit.JobEnvironment()
        attempt = os.environ.get("SLURM_RESTART_COUNT", "0") or "0"
        folder = Path(env.paths.folder) / f"{env.job_id}_ranks" / f"attempt-{attempt}"
        return cls(folder, placement)

    def record(self, code: int, why: str = "", stopped: bool = False, warned: bool = False) -> None:
        end = RankEnd(self.placement.rank, self.placement.node, code, why, stopped, warned)
        self.folder.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.folder / f"rank-{self.placement.rank}.json", asdict(end))

    def ends(self) -> dict[int, RankEnd]:
        found: dict[int, RankEnd] = {}
        for path in self.folder.glob("rank-*.json"):
            try:
                end = RankEnd(**json.loads(path.read_text()))
            except (OSError, ValueError, TypeError):  # half-visible on a lagging filesystem: next poll
                continue
            found[end.rank] = end
        return found

    def failure_elsewhere(self) -> RankEnd | None:
        """Another rank that failed on its own, if any (the lowest)."""
        others = [end for rank, end in sorted(self.ends().items()) if rank != self.placement.rank]
        return next((end for end in others if end.failed), None)

    def wait_for_all(self, until: Callable[[], bool] = lambda: False) -> dict[int, RankEnd]:
        """Every rank's end, once all have recorded one; polls the folder. ``until``: stop
        waiting early (returns what is there) when it says so."""
        while True:
            ends = self.ends()
            if len(ends) >= self.placement.world_size or until():
                return ends
            time.sleep(POLL_S)


def worst(ends: dict[int, RankEnd]) -> RankEnd | None:
    """The rank whose failure is the job's: of those that failed on their own, the highest
    exit status (the lowest rank among equals); None when none failed."""
    failed = [end for end in ends.values() if end.failed]
    if not failed:
        return None
    return max(failed, key=lambda end: (end.code, -end.rank))


class WarningHeard(SignalWatch):
    """Whether Slurm's warning (submitit's USR2) came while a rank other than 0 ran its function.

    The training loop takes the warning for itself (``ml.stopping``), stops at a step
    the ranks agree on and raises; on rank 0 submitit then requeues the job, on the
    others the function's error would read as a failed rank on the attempt's board.
    Watched under the function's own handler, the warning is heard here when that
    handler hands it on, and the rank is recorded as ended at the warning. The signal
    then goes on to the handler before (submitit's, which on these ranks does nothing).
    """

    def __init__(self) -> None:
        super().__init__(signal.SIGUSR2)

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        self.pass_on(signum, frame)
