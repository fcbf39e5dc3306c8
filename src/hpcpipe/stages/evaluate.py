"""Stage ``evaluate``: a trained model on the prepared test split.

    hpcpipe run evaluate       # reads params.yaml: evaluate.*

Writes test metrics (overall and per class) and a confusion CSV with one
``actual,predicted`` row per image, the layout DVC's confusion plot template reads.
Normalisation comes from the model file, so the test images are treated exactly
as the training images were. With W&B on, its run gets the metrics as summary, the
confusion matrix as a chart and a table of sample predictions. On several tasks
(``hpcpipe.ml.distributed``) each predicts its share of the test images, every one
gets all the predictions, and only rank 0 writes and logs.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpcpipe import tracking
from hpcpipe.config import EvaluateParams, Params
from hpcpipe.stage_function import stage_function

if TYPE_CHECKING:
    from hpcpipe.ml.distributed import Ranks


@stage_function(schema={"evaluate": EvaluateParams}, requires=("torch", "torchvision"))
def evaluate(
    params: Params, *, prepared: Path, model: Path, metrics: Path, confusion: Path
) -> dict[str, Any]:
    from hpcpipe.ml.distributed import session  # in the job, not on the login node (see stage_function)

    with session() as ranks:
        return _evaluate(params, ranks, prepared, model, metrics, confusion)


def _evaluate(
    params: Params, ranks: Ranks, prepared: Path, model: Path, metrics: Path, confusion: Path
) -> dict[str, Any]:
    import torch

    from hpcpipe.ml.data import load_split, read_manifest, write_json
    from hpcpipe.ml.loader import BatchLoader
    from hpcpipe.ml.models import build_model
    from hpcpipe.ml.training import memory_format, predict

    device = ranks.device
    checkpoint = torch.load(model, map_location="cpu", weights_only=True)
    classes = checkpoint["classes"]
    prepared_classes = read_manifest(prepared)["classes"]
    if prepared_classes != classes:
        raise ValueError(f"{model}: trained on classes {classes}, but {prepared} has {prepared_classes}")
    net = build_model(checkpoint["model"], num_classes=len(classes), width=checkpoint.get("width", 1.0))
    net.load_state_dict(checkpoint["state_dict"])
    net.to(device, memory_format=memory_format(device))

    test = load_split(prepared, "test")
    loader = BatchLoader(
        test.images.to(device),
        test.labels.to(device),
        batch_size=params.evaluate.batch_size,
        mean=checkpoint["mean"],
        std=checkpoint["std"],
    )
    predictions, loss = predict(net, loader, device, ranks)
    labels = test.labels
    hits = predictions == labels
    per_class = {
        name: round(hits[labels == k].float().mean().item(), 4)
        for k, name in enumerate(classes)
        if (labels == k).any()  # a tiny test subset can leave a class out
    }
    result = {
        "test_accuracy": round(hits.float().mean().item(), 4) if len(labels) else 0.0,
        "test_loss": round(loss, 4),
        "test_images": len(labels),
        "per_class_accuracy": per_class,
    }
    if not ranks.primary:
        return result  # the job side publishes rank 0's outputs and result only
    write_json(metrics, result)
    _write_confusion(confusion, labels.tolist(), predictions.tolist(), classes)
    tracking.log_confusion(labels.tolist(), predictions.tolist(), classes)
    tracking.log_samples(test.images[: tracking.SAMPLE_COUNT], labels.tolist(), predictions.tolist(), classes)
    tracking.log_summary(result)
    print(f"test accuracy: {result['test_accuracy']:.4f} ({len(labels)} images)", flush=True)
    return result


def _write_confusion(path: Path, actual: list[int], predicted: list[int], classes: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(("actual", "predicted"))
        writer.writerows((classes[a], classes[p]) for a, p in zip(actual, predicted, strict=True))
