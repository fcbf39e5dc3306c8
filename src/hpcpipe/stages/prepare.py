"""Stage ``prepare``: raw images -> a stratified subset as uint8 tensors + manifest.

    hpcpipe run prepare        # reads params.yaml: data.*, prepare.*

Writes ``prepared/{train.pt,test.pt,manifest.json}`` (see ``hpcpipe.ml.data``).
About 4 s for the 12k-image sample and 15 s for all 60k CIFAR-10 JPEGs (mostly decoding).
The output is byte-identical for identical input, so a rerun changes nothing downstream.
"""

from __future__ import annotations

from pathlib import Path

from hpcpipe.config import DataParams, Params, PrepareParams
from hpcpipe.stage_function import stage_function


@stage_function(
    schema={"data": DataParams, "prepare": PrepareParams}, tracked=False, requires=("torch", "torchvision")
)
def prepare(params: Params, *, prepared: Path) -> dict[str, int]:
    # in the job, not on the login node (see hpcpipe.stage_function)
    from hpcpipe.ml.data import Dataset, load_source, save_prepared, stratified_subset

    raw = load_source(params.data.source, params.data.path)
    seed = params.prepare.seed
    subset = Dataset(
        classes=raw.classes,
        train=raw.train.subset(stratified_subset(raw.train.labels, params.prepare.train_size, seed)),
        # A different seed for test, so a test subset is not correlated with the train pick.
        test=raw.test.subset(
            stratified_subset(raw.test.labels, params.prepare.test_size, seed + 1, split="test")
        ),
    )
    manifest = save_prepared(prepared, subset, source=params.data.source)
    print(
        f"prepared {manifest['train']['count']} train + {manifest['test']['count']} test images, "
        f"{len(raw.classes)} classes, from {params.data.source} '{params.data.path}'",
        flush=True,
    )
    return {"train_images": manifest["train"]["count"], "test_images": manifest["test"]["count"]}
