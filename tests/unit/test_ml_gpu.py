"""The GPU path of ``train`` and ``evaluate`` on one real CUDA GPU; skipped where there is none.

CI and most sessions have no GPU: ``benchmarks/gpu_checks.sh`` runs this module on a lent
GPU machine, with ``--noconftest`` (that machine has torch but not dvc, submitit or wandb,
so nothing here takes a shared fixture: it unpacks its own images from the committed
sample). What one GPU can show of issue 14, each run a real process of the real stages:

- ``cpu``: the one-task stage with the GPU hidden (``CUDA_VISIBLE_DEVICES=``), the reference;
- ``gpu``: the same stage on the GPU (bf16 autocast, channels_last, cuDNN): the same recipe,
  so the same accuracy up to what bf16 and other kernels change (not bitwise);
- ``two``: two tasks sharing the GPU, each bound to it as Slurm's ``--gpus-per-task``
  binds (``CUDA_VISIBLE_DEVICES=0``, ``LOCAL_RANK`` 0 and 1: each must take device 0),
  DistributedDataParallel with SyncBatchNorm over the global batch, rank 0 writing. NCCL
  refuses two ranks on one GPU, so the two join a gloo group (CUDA tensors) before the
  stage starts; the stage uses a group that is already up (``ml.distributed.session``).
  NCCL itself, across GPUs, needs a machine with two.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from hpcpipe.config import DataParams, EvaluateParams, Params, PrepareParams, load_params
from tests.support import REPO
from tests.support.sample import extract

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

IMAGES = {"train": 500, "test": 100}  # per class: 5,000 train and 1,000 test images
# one run's test accuracy moves by about a point from seed noise alone; bf16 adds little
SAME_ACCURACY = 0.05


def params(raw: Path) -> Params:
    """params.yaml's recipe (the committed ``fast`` at width 0.5, 10 epochs) on ``raw``."""
    base = load_params(REPO / "params.yaml")
    return Params(
        data=DataParams(source="imagefolder", path=str(raw)),
        prepare=PrepareParams(train_size=0, test_size=0, seed=0),
        train=base.train,
        evaluate=EvaluateParams(batch_size=500),
    )


def worker(spec_path: str) -> None:
    """One task of one run: train, then evaluate the model rank 0 wrote; every rank saves the
    weights it ended with (the stage does not return them)."""
    from hpcpipe.ml import training
    from hpcpipe.stages.evaluate import evaluate
    from hpcpipe.stages.train import train

    spec = json.loads(Path(spec_path).read_text())
    out, rank = Path(spec["out"]), int(os.environ.get("RANK", "0"))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.distributed.init_process_group("gloo", init_method="env://")  # see the module docstring
    real_fit = training.fit

    def fit(model: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        history = real_fit(model, *args, **kwargs)
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out / f"final-{rank}.pt")
        (out / f"device-{rank}.txt").write_text(str(next(model.parameters()).device))
        return history

    training.fit = fit
    p = params(Path(spec["raw"]))
    prepared = Path(spec["prepared"])
    train(
        p, prepared=prepared, model=out / "model.pt", metrics=out / "train.json", history=out / "history.csv"
    )
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # two jobs on a cluster: evaluate starts once train's model is out
    evaluate(p, prepared=prepared, model=out / "model.pt", metrics=out / "evaluate.json",
             confusion=out / "confusion.csv")  # fmt: skip


def start(spec: Path, visible: str, task: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, **task, "CUDA_VISIBLE_DEVICES": visible,
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}  # fmt: skip
    code = f"from tests.unit.test_ml_gpu import worker; worker({str(spec)!r})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The three runs of the module docstring, at once (the CPU one is the longest)."""
    from hpcpipe.stages.prepare import prepare

    root = tmp_path_factory.mktemp("gpu")
    raw = extract(root / "sample", IMAGES)
    prepared = root / "prepared"
    prepare(params(raw), prepared=prepared)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = []
    for name in ("cpu", "gpu", "two"):
        (root / name).mkdir()
        spec = root / f"{name}.json"
        spec.write_text(json.dumps({"out": str(root / name), "raw": str(raw), "prepared": str(prepared)}))
        if name != "two":
            procs.append(start(spec, "" if name == "cpu" else "0", {}))
            continue
        for rank in range(2):
            task = {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": "2",
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}  # fmt: skip
            procs.append(start(spec, "0", task))
    logs = [p.communicate(timeout=900)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * len(procs), "\n".join(logs)
    return {name: root / name for name in ("cpu", "gpu", "two")}


def accuracy(folder: Path) -> float:
    return json.loads((folder / "evaluate.json").read_text())["test_accuracy"]


def test_one_gpu_trains_the_recipe_to_the_cpus_accuracy(runs):
    assert (runs["cpu"] / "device-0.txt").read_text() == "cpu"
    assert (runs["gpu"] / "device-0.txt").read_text() == "cuda:0"
    cpu, gpu = accuracy(runs["cpu"]), accuracy(runs["gpu"])
    assert cpu > 0.4, cpu  # well above chance (0.1): the reference itself learned
    assert abs(gpu - cpu) <= SAME_ACCURACY, (gpu, cpu)
    weights = torch.load(runs["gpu"] / "final-0.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_two_tasks_on_one_gpu_train_as_one_with_syncbatchnorm(runs):
    two = runs["two"]
    assert [(two / f"device-{r}.txt").read_text() for r in range(2)] == ["cuda:0", "cuda:0"]
    finals = [torch.load(two / f"final-{r}.pt", weights_only=True) for r in range(2)]
    assert finals[0].keys() == finals[1].keys()
    # DDP's averaged gradients and rank 0's BatchNorm statistics at the end: the same bits everywhere
    assert [k for k in finals[0] if not torch.equal(finals[0][k], finals[1][k])] == []
    saved = torch.load(two / "model.pt", weights_only=True)["state_dict"]
    assert saved.keys() == finals[0].keys()  # no "module." prefix: the model, not its DDP wrapper
    assert all(torch.equal(saved[k], finals[0][k]) for k in saved)
    # SyncBatchNorm normalises over the global batch, so two tasks train as one GPU does
    assert abs(accuracy(two) - accuracy(runs["gpu"])) <= SAME_ACCURACY, (accuracy(two), accuracy(runs["gpu"]))
    metrics = [json.loads((d / "train.json").read_text()) for d in (two, runs["gpu"])]
    assert metrics[0]["epochs"] == metrics[1]["epochs"]
