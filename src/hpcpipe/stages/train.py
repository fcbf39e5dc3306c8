"""Stage ``train``: prepared tensors -> a trained model, its metrics and history.

    hpcpipe run train          # reads params.yaml: train.*

The training images are moved to the device once and batched there (see
``hpcpipe.ml.loader``); on a GPU the model runs channels_last under bf16 autocast.
Prints one line per epoch (and logs it to the stage's W&B run when there is one).
``tutorial`` on the 10k-image sample, 2 CPU cores, batch 128: about 7,000 images/s, ~1.4 s an epoch;
40 epochs reach ~64% test accuracy. ``fast``: see ``hpcpipe.ml.recipe``, which builds the run.

With ``checkpoint`` (the job side passes one, keyed by the stage's fingerprint), the
training state is saved after every epoch and a requeued job resumes from it; at
Slurm's warning signal it stops at the next step, saves there and hands the signal
to submitit, which requeues the job; at SIGTERM (``scontrol requeue``, ``scancel``, an
end without a warning) it stops and saves the same way within Slurm's KillWait
(``hpcpipe.ml.stopping``).

Several tasks (the job side sets torchrun's ``RANK``, ``WORLD_SIZE``... in each):
DistributedDataParallel over them (``hpcpipe.ml.distributed``), ``train.batch_size``
and ``train.lr`` stay the global batch and its learning rate whatever the task
count (each rank takes batch_size / tasks images of every step), and only rank 0
prints, logs to W&B and writes the model, metrics, history and checkpoint.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcpipe import tracking
from hpcpipe.config import Params, TrainParams
from hpcpipe.stage_function import stage_function

if TYPE_CHECKING:
    from hpcpipe.ml.distributed import Ranks
    from hpcpipe.ml.training import EpochStats

HISTORY_FIELDS = ("epoch", "loss", "accuracy", "lr", "images_per_s")


@stage_function(schema={"train": TrainParams}, requires=("torch", "torchvision"))
def train(
    params: Params,
    *,
    prepared: Path,
    model: Path,
    metrics: Path,
    history: Path,
    checkpoint: Path | None = None,
) -> dict[str, Any]:
    # torch and the recipe are imported here, in the job: the launcher imports this module
    # on the login node only to read the declaration above (see hpcpipe.stage_function)
    from hpcpipe.ml.distributed import read_env, session
    from hpcpipe.ml.stopping import EndSignal, WarningSignal

    tasks = read_env().world_size  # checked before joining the others: a refusal must not hang
    if params.train.batch_size % tasks:
        raise ValueError(
            f"train.batch_size: {params.train.batch_size} does not split evenly over this job's {tasks} "
            f"tasks; make it a multiple of {tasks} (it is the global batch)"
        )
    with session() as ranks, WarningSignal() as warning, EndSignal() as ending:

        def stop() -> bool:
            return warning.requested() or ending.requested()

        return _train(params.train, ranks, stop, prepared, model, metrics, history, checkpoint)


def _train(
    p: TrainParams,
    ranks: Ranks,
    stop: Callable[[], bool],
    prepared: Path,
    model: Path,
    metrics: Path,
    history: Path,
    checkpoint: Path | None,
) -> dict[str, Any]:
    import torch

    from hpcpipe.ml.data import load_split, read_manifest, torch_save, write_json
    from hpcpipe.ml.recipe import build
    from hpcpipe.ml.training import fit

    if ranks.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: pick the fastest conv kernels once
    manifest = read_manifest(prepared)
    classes = manifest["classes"]
    data = load_split(prepared, "train")
    run = build(p, data.images, data.labels, mean=manifest["mean"], std=manifest["std"],
                num_classes=len(classes), ranks=ranks)  # fmt: skip

    def report(s: EpochStats) -> None:
        if not ranks.primary:
            return
        print(
            f"epoch {s.epoch}/{p.epochs}  loss {s.loss:.4f}  acc {s.accuracy:.4f}  lr {s.lr:.4f}  "
            f"{s.images_per_s:.0f} img/s  {s.seconds:.1f} s",
            flush=True,
        )
        tracking.log_epoch(
            epoch=s.epoch, loss=s.loss, accuracy=s.accuracy, lr=s.lr, images_per_s=s.images_per_s
        )

    # with a checkpoint, fit resumes from it (and says so) or sets an unusable one aside
    stats = fit(
        *run, epochs=p.epochs, device=ranks.device, on_epoch=report, checkpoint=checkpoint,
        ranks=ranks, stop=stop,
    )  # fmt: skip
    seconds = sum(s.seconds for s in stats)
    result = {
        "train_loss": round(stats[-1].loss, 4),
        "train_accuracy": round(stats[-1].accuracy, 4),
        "epochs": p.epochs,
        "images_per_s": round(sum(s.images_per_s * s.seconds for s in stats) / seconds, 1),
        "seconds": round(seconds, 2),
    }
    if not ranks.primary:
        return result  # the job side publishes rank 0's outputs and result only

    state = {k: v.detach().cpu().contiguous() for k, v in run.model.state_dict().items()}
    torch_save(
        {
            "model": p.model,
            "width": p.width,
            "state_dict": state,
            "classes": classes,
            "mean": manifest["mean"],
            "std": manifest["std"],
        },
        model,
    )
    write_json(metrics, result)
    _write_history(history, stats)
    tracking.log_summary(result)
    return result


def _write_history(path: Path, stats: list[EpochStats]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HISTORY_FIELDS)
        for s in stats:
            writer.writerow(
                [s.epoch, f"{s.loss:.6f}", f"{s.accuracy:.6f}", f"{s.lr:.6g}", f"{s.images_per_s:.1f}"]
            )
