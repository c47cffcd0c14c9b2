#!/usr/bin/env bash
# GPU checks for one lent machine, sized to finish in about 5 minutes: the step-overhead benchmark on
# the paper's CIFAR pool (fp32, batch 128), the loader benchmark, a 1-GPU NCCL smoke run of the env
# under torchrun, the GPU-marked tests, the bf16 + channels_last variant of the benchmark, then the
# benchmark's row per weighting method (fp32, batch 64: the paper's cost-table setting).
# Usage: benchmarks/gpu_check.sh OUTDIR        (figures: OUTDIR/*.json, log: OUTDIR/gpu_check.log)
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled MTKD_CACHE_DIR="${MTKD_CACHE_DIR:-$OUT/cache}"
step() { echo "### $*"; local t0; t0=$(date +%s); "$@"; echo "### exit $? after $(( $(date +%s) - t0 ))s"; }
BENCH="--config paper-cifar --batch 128 --device cuda --warmup 10 --blocks 5 --per-block 15"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  step timeout 75 $PY -m benchmarks.step_overhead $BENCH --methods --json "$OUT/step_overhead_fp32.json"
  step timeout 45 $PY -m benchmarks.loader --device cuda --workers 4 --images 20000 --batches 100 --json "$OUT/loader.json"
  step timeout 40 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m mtkd_env --env device=cuda \
       dataset=synthetic "teachers=[resnet32x4=random,wrn_28_4=random]" student=ShuffleV2 max_steps=10 \
       batch_size=128 show_progress=false "dataset_kwargs={shape: [3, 32, 32], num_classes: 100, n_train: 1280}"
  step timeout 40 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_perf.py
  step timeout 60 $PY -m benchmarks.step_overhead $BENCH --amp bf16 --channels-last --methods \
       --json "$OUT/step_overhead_bf16.json"
  step timeout 150 $PY -m benchmarks.step_overhead --config paper-cifar --batch 64 --device cuda --warmup 5 \
       --blocks 3 --per-block 10 --json "$OUT/step_overhead_methods.json"
} 2>&1 | tee "$OUT/gpu_check.log"
