#!/usr/bin/env bash
# Every check that needs a GPU, as one prepared run for a lent GPU machine.
#
# A session lent one has 15 minutes of device time in all, the machine's start included:
# one run of this script, then give the machine back. Before it, on the machine you work on:
#
#     bash benchmarks/gpu_checks.sh --prepare      # airbench's sdist and CIFAR-10 into .gpu/ (git-ignored)
#
# then run `bash benchmarks/gpu_checks.sh` there (the device tool: carry [".gpu"],
# timeout_s 540). It uses that machine's own python3, which has torch but no package
# index and none of dvc, submitit or wandb: nothing below needs them.
#
#  1. tests/unit/test_ml_gpu.py (-m gpu, --noconftest): the train and evaluate stages on
#     the GPU against the CPU, and two tasks sharing it with SyncBatchNorm (issue 14);
#  2. benchmarks/scale.py part b: 1-GPU images/s and time to 94% (issue 14, point 7);
#  3. benchmarks/train_speed.py part d: `fast` against airbench94 on the same GPU and data.
#
# Each step has its own time cap, so a hang costs that step only. Logs go to $OUT (the
# folder the device tool brings back), one per step; paste the Markdown blocks of steps
# 2 and 3 into benchmarks/RESULTS.md.
set -uo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == --prepare ]]; then
    shared=${HPCPIPE_SHARED:-../shared}
    mkdir -p .gpu
    cp "$shared/gpu/airbench-0.1.8.tar.gz" "$shared/data/cifar10-jpeg.tar.xz" .gpu/
    git check-ignore -q .gpu || { echo "gpu_checks: .gpu/ is not git-ignored; it must not be committed" >&2; exit 1; }
    du -sh .gpu
    exit 0
fi

out=${OUT:-$(mktemp -d)}
export PYTHONPATH="$PWD/src:$PWD" PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
failed=0

step() {  # step NAME CAP_SECONDS COMMAND...: run it capped, its output to the terminal and $out/NAME.log
    local name=$1 cap=$2
    shift 2
    echo "== $name (at most ${cap} s): $*"
    timeout "$cap" "$@" 2>&1 | tee "$out/$name.log"
    local status=${PIPESTATUS[0]}
    echo "== $name: exit $status"
    [[ $status == 0 ]] || failed=1
}

nvidia-smi -L | tee "$out/gpu.txt"
"$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$out/gpu.txt"
"$python" -m pip install -q --no-index --no-deps --no-build-isolation .gpu/airbench-0.1.8.tar.gz
mkdir -p .bench-data && tar -xJf .gpu/cifar10-jpeg.tar.xz -C .bench-data

step tests 240 "$python" -m pytest --noconftest -p no:cacheprovider -m gpu -v tests/unit/test_ml_gpu.py
step scale 120 "$python" benchmarks/scale.py --parts b --data .bench-data
step train_speed 240 "$python" benchmarks/train_speed.py d --seeds 3
exit $failed
