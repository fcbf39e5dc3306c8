"""The training state on disk: written whole after every epoch (or at a stop), resumed, or set aside.

What ``training.fit`` saves is everything the rest of the run depends on: weights,
optimiser (momentum buffers, each group's lr), the Lookahead average, RNG states, the
history so far (the loader's position: an epoch is a function of its number), and,
for a run stopped mid-epoch at the warning signal, the batch reached and each rank's
running sums of that epoch. On a CPU a resumed run ends bitwise where an
uninterrupted one ends (tests/unit/test_resume.py, tests/unit/test_ml_distributed.py).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hpcpipe.files import TEMP_MARK, write_atomically
from hpcpipe.ml.distributed import Ranks, barrier

if TYPE_CHECKING:
    from hpcpipe.ml.recipe import Plan
    from hpcpipe.ml.training import EpochStats


def save_checkpoint(
    path: Path,
    model: nn.Module,
    plan: Plan,
    history: list[EpochStats],
    *,
    epochs: int,
    steps_per_epoch: int,
    partial: dict[str, Any] | None = None,
) -> None:
    """Write the training state to ``path`` whole, and on disk before it replaces the
    previous one (``files.write_atomically``: temp file, fsync, rename): a kill or the
    loss of the node mid-write leaves the previous checkpoint."""
    state = {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "history": [dataclasses.asdict(s) for s in history],  # the loader's position: len(history) epochs
        "model": model.state_dict(),
        "optimizer": plan.optimizer.state_dict(),  # momentum buffers, and each group's lr and base_lr
        "lookahead": plan.lookahead.state_dict() if plan.lookahead is not None else None,
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        },
    }
    if partial is not None:  # stopped mid-epoch: batches done in the next epoch, each rank's sums
        state["partial"] = partial
    write_atomically(path, lambda f: torch.save(state, f))


def resume(
    path: Path, model: nn.Module, plan: Plan, *, epochs: int, steps_per_epoch: int
) -> list[EpochStats]:
    """Load ``path`` into ``model`` and ``plan`` if it exists; return the epochs it had done.

    A checkpoint that cannot be resumed (truncated, unreadable, or of another run shape or
    model: the caller keys checkpoints by the stage's fingerprint, so that is a safety
    net) is said in one line on stderr and set aside as ``NAME.unusable`` (the last one
    only: checkpoints can be large); training starts over instead of failing on every
    rerun. It is checked whole before anything is loaded, so a refused one changes
    nothing. Temp files of writers killed mid-save are removed first.
    """
    return load_state(path, model, plan, epochs, steps_per_epoch, Ranks())[0]


def load_state(
    path: Path, model: nn.Module, plan: Plan, epochs: int, steps_per_epoch: int, ranks: Ranks
) -> tuple[list[EpochStats], dict[str, Any] | None]:
    """``resume``, and the position inside the next epoch of a checkpoint saved mid-epoch.

    Every rank loads the same file; rank 0 alone removes temp files, sets an unusable
    one aside (after every rank has read it) and speaks.
    """
    if ranks.primary:
        for stale in path.parent.glob(f".{path.name}{TEMP_MARK}*"):
            stale.unlink(missing_ok=True)
    barrier(ranks)
    if not path.exists():
        return [], None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        problem = _mismatch(state, model, plan, epochs=epochs, steps_per_epoch=steps_per_epoch)
    except Exception as err:  # torch says a torn zip or pickle in many ways
        first_line = (str(err).strip().splitlines() or [""])[0]
        problem = f"unreadable ({type(err).__name__}: {first_line})"
    barrier(ranks)
    if problem:
        if ranks.primary:
            aside = path.with_name(f"{path.name}.unusable")
            os.replace(path, aside)
            print(f"checkpoint {path}: {problem}; set aside as {aside.name}, training starts over",
                  file=sys.stderr, flush=True)  # fmt: skip
        return [], None
    model.load_state_dict(state["model"])
    plan.optimizer.load_state_dict(state["optimizer"])
    if plan.lookahead is not None and state["lookahead"] is not None:
        plan.lookahead.load_state_dict(state["lookahead"])
    torch.set_rng_state(state["rng"]["torch"])
    if state["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    from hpcpipe.ml.training import EpochStats  # the module that imports this one

    history = [EpochStats(**row) for row in state["history"]]
    partial = state.get("partial")
    if ranks.primary:
        where = f", batch {partial['batches']} of epoch {len(history) + 1}" if partial else ""
        print(f"resuming from {path} after epoch {len(history)}{where}", flush=True)
    return history, partial


def _mismatch(state: Any, model: nn.Module, plan: Plan, *, epochs: int, steps_per_epoch: int) -> str:
    """Why ``state`` cannot be resumed into this run; "" if it can."""
    keys = {"epochs", "steps_per_epoch", "history", "model", "optimizer", "lookahead", "rng"}
    if not isinstance(state, dict) or not keys <= state.keys():
        return "not a training checkpoint of this recipe"
    shape = (state["epochs"], state["steps_per_epoch"])
    if shape != (epochs, steps_per_epoch) or len(state["history"]) > epochs:
        return (
            f"a checkpoint of {shape[0]} epochs x {shape[1]} steps, "
            f"not of this run ({epochs} x {steps_per_epoch})"
        )
    ours = model.state_dict()
    theirs = state["model"]
    if theirs.keys() != ours.keys() or any(theirs[k].shape != v.shape for k, v in ours.items()):
        return "a checkpoint of another model"
    groups = state["optimizer"].get("param_groups", [])
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in plan.optimizer.param_groups]:
        return "a checkpoint of another optimiser setup"
    if (state["lookahead"] is None) != (plan.lookahead is None):
        return "a checkpoint of another recipe (lookahead)"
    partial = state.get("partial")
    if partial is not None and not (
        len(state["history"]) < epochs and 0 < partial["batches"] < steps_per_epoch
    ):
        return "a mid-epoch checkpoint past the end of this run"
    return ""
