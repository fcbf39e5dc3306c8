"""``train`` and ``evaluate`` on two tasks: DistributedDataParallel over gloo, on this machine's CPUs.

Two real processes, each with the torchrun environment the job side gives a task
(RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR=127.0.0.1, a free
MASTER_PORT), run the real stage functions on 300 real CIFAR-10 images; no Slurm is
needed for what is checked here (issue 14, points 2, 4 and 5, the train parts). The
two processes run everything once (``two_tasks``), the checks are split over two tests.

Nothing is faked. The worker only watches: it copies each rank's final weights out
of ``fit`` (the stage does not return them), and sends itself Slurm's warning
signal (SIGUSR2) on rank 1 only, mid-epoch, so the stop must be agreed by the ranks.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from hpcpipe.config import DataParams, EvaluateParams, Params, PrepareParams, TrainParams

REPO = Path(__file__).resolve().parents[2]
# fast, narrow, every stateful piece on (lookahead, alternating flips, triangle schedule):
# 300 images / global batch 20 = 15 steps an epoch: a stop agreed at step 20 is mid-epoch 2 of 2
FAST = TrainParams(
    model="fast", width=0.25, epochs=2, batch_size=20, lr=0.5, momentum=0.85, weight_decay=5e-4,
    bias_lr_scale=16, label_smoothing=0.2, lookahead=True, schedule="triangle", translate=2,
    alternating_flip=True,
)  # fmt: skip
# no BatchNorm: one task and two differ only by the order of the sums (see test_two_tasks_train_...)
TUTORIAL = TrainParams(model="tutorial", epochs=1, batch_size=20, lr=0.05, seed=0)
SIGNAL_AT = (1, 3)  # rank 1 is warned once batch 3 of epoch 1 (0-based) is trained: step 19 of 30
ROLES = ("model", "metrics", "history")


def params(data: Path, train: TrainParams) -> Params:
    return Params(
        data=DataParams(source="imagefolder", path=str(data)),
        prepare=PrepareParams(train_size=0, test_size=0, seed=0),
        train=train,
        evaluate=EvaluateParams(batch_size=30),
    )


def outputs(folder: Path) -> dict[str, Path]:
    return {"model": folder / "model.pt", "metrics": folder / "train.json", "history": folder / "history.csv"}


def worker(spec_path: str) -> None:
    """One rank: what the job side would run in each task, four times over (see ``two_tasks``)."""
    from hpcpipe.ml import loader, training
    from hpcpipe.stages.evaluate import evaluate
    from hpcpipe.stages.train import train

    torch.set_num_threads(1)  # two ranks on two shared cores
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ["RANK"])
    root, states = Path(spec["root"]), Path(spec["states"])
    mine = root / f"rank{rank}"  # each rank's output paths: the files rank 1 writes would show here
    finals: list[dict[str, torch.Tensor]] = []
    real_fit, real_epoch = training.fit, loader.BatchLoader.epoch

    def fit(model, *args, **kwargs):  # the weights each rank ends with
        history = real_fit(model, *args, **kwargs)
        finals.append({k: v.clone() for k, v in model.state_dict().items()})
        return history

    armed = {"on": False}

    def epoch(self, number, start=0):
        for i, batch in enumerate(real_epoch(self, number, start), start):
            yield batch
            if armed["on"] and rank == 1 and (number, i) == SIGNAL_AT:
                armed["on"] = False
                os.kill(os.getpid(), signal.SIGUSR2)

    training.fit, loader.BatchLoader.epoch = fit, epoch
    ports = iter(spec["ports"])

    def next_job() -> None:  # each call is a fresh job's: its own process group, on a port of its own
        os.environ["MASTER_PORT"] = str(next(ports))

    fast = params(Path(spec["data"]), FAST)
    prepared = Path(spec["prepared"])
    # 1. uninterrupted, with a checkpoint path of its own per rank
    next_job()
    train(fast, prepared=prepared, **outputs(mine / "whole"), checkpoint=mine / "whole.pt")
    torch.save(finals[-1], states / f"whole-{rank}.pt")
    # 2. warned mid-epoch on rank 1 only; then resumed from the one checkpoint both share
    armed["on"] = True
    next_job()
    try:
        train(fast, prepared=prepared, **outputs(mine / "cut"), checkpoint=root / "shared.pt")
    except training.Stopped as stop:
        (states / f"stopped-{rank}.txt").write_text(str(stop))
    next_job()
    train(fast, prepared=prepared, **outputs(mine / "cut"), checkpoint=root / "shared.pt")
    torch.save(finals[-1], states / f"resumed-{rank}.pt")
    # 3. the BatchNorm-free tutorial net, to compare with one task
    next_job()
    train(params(Path(spec["data"]), TUTORIAL), prepared=prepared, **outputs(mine / "tutorial"))
    torch.save(finals[-1], states / f"tutorial-{rank}.pt")
    # 4. evaluation of the uninterrupted run's model, gathered over the ranks
    next_job()
    evaluate(fast, prepared=prepared, model=root / "rank0" / "whole" / "model.pt",
             metrics=mine / "evaluate.json", confusion=mine / "confusion.csv")  # fmt: skip


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on loopback now (held open together so none comes twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


@pytest.fixture(scope="module")
def prepared_mini(mini_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mini_raw`` (300 train / 100 test images) through the real prepare stage."""
    from hpcpipe.stages.prepare import prepare

    out = tmp_path_factory.mktemp("prepared-mini") / "prepared"
    prepare(params(mini_raw, TUTORIAL), prepared=out)
    return out


@pytest.fixture(scope="module")
def two_tasks(
    prepared_mini: Path, mini_raw: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Both ranks' runs (``worker``), and the one-task runs to compare with, done once."""
    root = tmp_path_factory.mktemp("ddp")
    states = tmp_path_factory.mktemp("ddp-states")
    spec = root.parent / "ddp-spec.json"
    ports = free_ports(5)  # a process group per stage call (see worker)
    spec.write_text(json.dumps({"root": str(root), "states": str(states), "prepared": str(prepared_mini),
                                "data": str(mini_raw), "ports": ports}))  # fmt: skip
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}  # fmt: skip
        code = f"from tests.unit.test_ml_distributed import worker; worker({str(spec)!r})"
        out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, **out))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)

    from hpcpipe.stages.evaluate import evaluate
    from hpcpipe.stages.train import train

    one = tmp_path_factory.mktemp("one-task")
    train(params(mini_raw, TUTORIAL), prepared=prepared_mini, **outputs(one / "tutorial"))
    evaluate(params(mini_raw, FAST), prepared=prepared_mini, model=root / "rank0" / "whole" / "model.pt",
             metrics=one / "evaluate.json", confusion=one / "confusion.csv")  # fmt: skip
    return {"root": root, "states": states, "one": one, "logs": logs}


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def unequal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


@pytest.mark.slow  # the shared fixture: two real processes training, ~20 s on 2 cores
def test_two_tasks_train_as_one_and_resume_bitwise_from_rank_0s_checkpoint(two_tasks):
    root, states, one = two_tasks["root"], two_tasks["states"], two_tasks["one"]
    whole = [load(states / f"whole-{r}.pt") for r in range(2)]
    assert unequal(whole[0], whole[1]) == []  # weights and BatchNorm statistics, every rank
    saved = torch.load(root / "rank0" / "whole" / "model.pt", weights_only=True)["state_dict"]
    assert unequal(saved, whole[0]) == []

    # the warning reached rank 1 only; both stopped at the step they agreed on, mid-epoch 2
    stops = {(states / f"stopped-{r}.txt").read_text() for r in range(2)}
    assert stops == {"stopped at the warning signal in epoch 2, after batch 5"}, stops
    assert "resuming from" in two_tasks["logs"][0] and "batch 5 of epoch 2" in two_tasks["logs"][0]
    for rank in range(2):
        assert unequal(load(states / f"resumed-{rank}.pt"), whole[0]) == []
    histories = [(root / "rank0" / run / "history.csv").read_text().splitlines() for run in ("cut", "whole")]
    assert (
        len(histories[0]) == 3
        and [[row.rsplit(",", 1)[0] for row in h] for h in histories]
        == [[row.rsplit(",", 1)[0] for row in histories[1]]] * 2
    )  # every epoch's loss, accuracy and lr; not the images/s

    # only rank 0 wrote: rank 1's output and checkpoint paths stay empty
    assert sorted(p.name for p in (root / "rank0" / "whole").iterdir()) == [
        "history.csv",
        "model.pt",
        "train.json",
    ]
    assert (root / "rank0" / "whole.pt").exists()
    assert not (root / "rank1").exists() or list((root / "rank1").rglob("*")) == []

    # one task, same global batch: equal up to the order of float32 sums (DDP averages the two
    # ranks' gradients of 10 images each, one task sums all 20 at once; the epoch's loss is summed
    # by rank). Measured: 2e-8 after these 15 steps; 1e-5 leaves room for other CPUs' kernels,
    # while a lost, doubled or misplaced shard changes the gradients themselves, not their last bits.
    two = load(states / "tutorial-0.pt")
    single = torch.load(one / "tutorial" / "model.pt", weights_only=True)["state_dict"]
    assert unequal(two, load(states / "tutorial-1.pt")) == []
    worst = max((two[k] - single[k]).abs().max().item() for k in two)
    assert 0 <= worst < 1e-5, worst
    metrics = [
        json.loads((d / "train.json").read_text()) for d in (root / "rank0" / "tutorial", one / "tutorial")
    ]
    assert metrics[0]["train_loss"] == pytest.approx(metrics[1]["train_loss"], abs=2e-4)
    assert metrics[0]["train_accuracy"] == metrics[1]["train_accuracy"]


@pytest.mark.slow  # the shared fixture: two real processes training, ~20 s on 2 cores
def test_evaluation_gathered_over_two_tasks_is_the_one_task_evaluation(two_tasks):
    root, one = two_tasks["root"], two_tasks["one"]
    assert (root / "rank0" / "confusion.csv").read_bytes() == (one / "confusion.csv").read_bytes()
    two_m, one_m = (json.loads((d / "evaluate.json").read_text()) for d in (root / "rank0", one))
    assert two_m.pop("test_loss") == pytest.approx(one_m.pop("test_loss"), abs=1e-4)  # sums in another order
    assert two_m == one_m and two_m["test_images"] == 100
    assert not (root / "rank1" / "evaluate.json").exists()


def test_a_global_batch_that_does_not_split_over_the_tasks_is_refused_in_one_line(make_params, monkeypatch):
    """Refused before joining the process group (which would wait for the other tasks)."""
    from hpcpipe.stages.train import train

    env = {"RANK": "0", "WORLD_SIZE": "3", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "3",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}  # fmt: skip
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as err:
        train(make_params(train={"batch_size": 32}), prepared=Path("x"), model=Path("m"),
              metrics=Path("t"), history=Path("h"))  # fmt: skip
    assert str(err.value) == (
        "train.batch_size: 32 does not split evenly over this job's 3 tasks; "
        "make it a multiple of 3 (it is the global batch)"
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2", "RANK": "0"}, "LOCAL_RANK=None: a stage with WORLD_SIZE=2 needs"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2"}, "inconsistent"),
        (
            {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
            "MASTER_ADDR is not set",
        ),
    ],
)
def test_the_torchrun_environment_is_read_or_refused_in_one_line(env, message):
    from hpcpipe.ml.distributed import Ranks, read_env

    assert read_env({}) == Ranks() and read_env({"WORLD_SIZE": "1"}) == Ranks()
    with pytest.raises(ValueError, match=message):
        read_env(env)


def test_only_rank_0_opens_the_stages_wandb_run(make_params, tmp_path, monkeypatch):
    """Every task runs the job side's ``start_run``; two offline runs of one id would clash."""
    import dataclasses

    from hpcpipe import tracking
    from hpcpipe.config import WandbParams
    from hpcpipe.tracking.run import runs_root

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    on = dataclasses.replace(make_params(), wandb=WandbParams(enabled=True, project="test"))
    context = tracking.RunContext(stage="train", fingerprint="0123456789abcdef", profile="p", resources={})
    monkeypatch.setenv("RANK", "1")
    with tracking.start_run(on, context, ("train",), tmp_path):
        tracking.log_epoch(epoch=1, loss=1.0)
    assert not runs_root(tmp_path).exists()
    monkeypatch.setenv("RANK", "0")
    with tracking.start_run(on, context, ("train",), tmp_path):
        tracking.log_epoch(epoch=1, loss=1.0)
    assert len(list(runs_root(tmp_path).iterdir())) == 1
