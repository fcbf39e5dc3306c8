"""Job side: a stage's outputs are published all at once, or not at all.

A function stage writes each output to a hidden sibling of its path (``staging_path``);
when the function has returned, ``Publisher.publish`` puts the whole set in place.
POSIX filesystems (a local disk, Lustre, NFS) rename within a folder atomically but
have no transaction over several files, so the set is made atomic with a journal:

1. every staged output is fsynced (its bytes outlive the node before they are visible);
2. the journal, ``.hpcpipe/publish/<stage>.json`` in the project, is written (fsynced)
   with each output's final, staged and aside paths and whether a previous one existed;
3. for each output: the previous one is renamed aside (``.NAME.tmp-old-TOKEN``), the
   new one renamed into place;
4. the journal is removed: that removal is the commit. Then the asides are removed.

Any failure in 3 (an error, SIGINT, the ``check`` the caller passes refusing because
the job got SIGTERM) rolls the renames back at once and removes the journal. A kill
(SIGKILL after Slurm's KillWait, a node crash) leaves the journal: the next run of the
stage calls ``recover`` before anything else, which rolls back what the journal lists,
so the outputs are the previous set, whole. Rolling back (not forward) is what the
launcher saw: the job did not finish, so its outputs are not the ones DVC is handed.
Rollback is idempotent; a kill during it is finished by the next ``recover``.

Leftover staged and aside paths (a job killed before or after its publish) carry the
``.tmp-`` mark and are removed by ``remove_stale_staging`` once ``recover`` ran.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from hpcpipe.console import say
from hpcpipe.files import TEMP_MARK, fsync_dir, temp_sibling, write_json_atomically

JOURNAL_DIR = Path(".hpcpipe") / "publish"


def staging_path(final: Path, token: str) -> Path:
    """A hidden sibling of ``final``: same directory, so the rename is atomic."""
    return temp_sibling(final, token)


def remove_path(path: Path) -> None:
    """Remove a file, link or whole folder; nothing there is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()


def remove_stale_staging(final: Path) -> None:
    """Remove leftovers of earlier runs (staged or aside copies). Call ``recover`` first:
    an unfinished publication's asides are the previous outputs."""
    if final.parent.is_dir():
        for leftover in final.parent.glob(f".{final.name}{TEMP_MARK}*"):
            remove_path(leftover)


def sync_tree(path: Path) -> None:
    """fsync a file, or every file and folder of a tree, so a rename cannot outlive its bytes."""
    if path.is_file() and not path.is_symlink():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
        return
    if not path.is_dir() or path.is_symlink():
        return
    for folder, _, files in os.walk(path):
        for name in files:
            file = Path(folder, name)
            if file.is_file() and not file.is_symlink():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
        fsync_dir(Path(folder))


def _move(source: Path, target: Path) -> None:
    """One rename (the seam the fault tests cut between two outputs)."""
    os.replace(source, target)


@dataclass(frozen=True)
class Move:
    """One output's part of a publication, as the journal records it (paths as given:
    relative ones are relative to the project root)."""

    final: str
    staged: str
    aside: str
    had_previous: bool


def _safe_name(stage: str) -> str:
    """A stage name as a file name (``fold@2`` stays; a ``/`` or odd character does not)."""
    return re.sub(r"[^A-Za-z0-9_.@+-]", "_", stage) or "_"


class Publisher:
    """Publishes, and recovers, the outputs of one stage of the project at ``root``."""

    def __init__(self, root: Path, stage: str) -> None:
        self.root = Path(root)
        self.stage = stage
        self.journal = self.root / JOURNAL_DIR / f"{_safe_name(stage)}.json"

    def _at(self, path: str) -> Path:
        return self.root / path  # an absolute path stays itself

    def publish(
        self, outputs: Sequence[tuple[Path, Path]], token: str, check: Callable[[], None] = lambda: None
    ) -> None:
        """Put each ``(staged, final)`` in place, all or none (see the module docstring).

        ``check`` raises to refuse: it is called before anything moves and again when
        everything is in place, before the commit (then the publication is rolled back).
        """
        for staged, final in outputs:
            if not os.path.lexists(self._at(str(staged))):
                raise FileNotFoundError(f"stage finished but did not write its output {final}")
        check()
        for staged, _ in outputs:
            sync_tree(self._at(str(staged)))
        moves = [
            Move(
                final=str(final),
                staged=str(staged),
                aside=str(staging_path(Path(final), f"old-{token}")),
                had_previous=os.path.lexists(self._at(str(final))),
            )
            for staged, final in outputs
        ]
        write_json_atomically(
            self.journal,
            {"stage": self.stage, "host": os.uname().nodename, "pid": os.getpid(), "time": time.time(),
             "moves": [asdict(m) for m in moves]},
        )  # fmt: skip
        try:
            for move in moves:
                if move.had_previous:
                    _move(self._at(move.final), self._at(move.aside))
                _move(self._at(move.staged), self._at(move.final))
            for folder in {self._at(m.final).parent for m in moves}:
                fsync_dir(folder)
            check()
        except BaseException:
            self._roll_back(moves)
            raise
        self._forget()  # the commit
        for move in moves:
            remove_path(self._at(move.aside))

    def recover(self) -> bool:
        """Roll back a publication a killed job left unfinished; True if there was one.

        Call it before anything else touches the stage's outputs or their leftovers.
        """
        if self.journal.parent.is_dir():  # a journal whose writer was killed before its rename
            for leftover in self.journal.parent.glob(f".{self.journal.name}{TEMP_MARK}*"):
                leftover.unlink(missing_ok=True)
        if not self.journal.exists():
            return False
        try:
            record = json.loads(self.journal.read_text())
            moves = [Move(**m) for m in record["moves"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            aside = self.journal.with_name(self.journal.name + ".unreadable")
            os.replace(self.journal, aside)
            say(
                f"{self.stage}: publication journal {self.journal} is unreadable ({err}); "
                f"set aside as {aside.name}, outputs left as they are"
            )
            return False
        self._roll_back(moves)
        say(
            f"{self.stage}: an earlier job was killed while publishing its outputs; "
            f"rolled back to the previous ones ({', '.join(m.final for m in moves)})"
        )
        return True

    def _roll_back(self, moves: Sequence[Move]) -> None:
        """Undo ``moves`` whatever part of them happened; the journal goes only once done."""
        for move in reversed(moves):
            final, staged, aside = self._at(move.final), self._at(move.staged), self._at(move.aside)
            if move.had_previous and not os.path.lexists(aside):
                continue  # the previous output was never moved: it is still in place
            if os.path.lexists(final):  # the new output: back to its staging name, removed later
                remove_path(staged)
                _move(final, staged)
            if move.had_previous:
                _move(aside, final)
        for folder in {self._at(m.final).parent for m in moves}:
            fsync_dir(folder)
        self._forget()

    def _forget(self) -> None:
        self.journal.unlink(missing_ok=True)
        fsync_dir(self.journal.parent)
