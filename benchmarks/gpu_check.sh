#!/usr/bin/env bash
# GPU checks for one lent machine, in one script that ends within 7.7 minutes (a shared deadline caps
# every step's timeout; steps are ordered by how much their figures are needed):
#   1. the GPU-marked tests (bf16, CUDA episode, NCCL + BatchNorm under torchrun, no host sync inside
#      the iteration, CUDA graphs via torch.compile reduce-overhead, the batched vector env on CUDA);
#   2. a 1-GPU NCCL smoke run of the env under torchrun;
#   3. benchmarks.vector_env on the embedded default, K = 1 .. 64 (batched vs K envs in turn vs async);
#   4. benchmarks.vector_env on the paper's CIFAR pool, bf16 + channels_last, batched K = 8 with shared
#      batches (teachers' forward shared) vs one env;
#   5. benchmarks.step_overhead, paper pool, batch 128, bf16 + channels_last + cudnn.benchmark (eager),
#      then the same with torch.compile(mode="reduce-overhead"), then fp32 (TFLOP/s beside the times);
#   6. the loader benchmark; 7. the row per weighting method (fp32, batch 64);
#   8.-9. one row per dense task (segmentation, detection): step overhead on the embedded scenes, and a
#      10-step episode of torchvision segmentation networks / FPN detectors (weights=None).
# Usage: benchmarks/gpu_check.sh OUTDIR        (figures: OUTDIR/*.json, log: OUTDIR/gpu_check.log)
set -uo pipefail
OUT=${1:?usage: benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled MTKD_CACHE_DIR="${MTKD_CACHE_DIR:-$OUT/cache}"
DEADLINE=$(( $(date +%s) + 460 ))
step() {  # step SECONDS command...: run with min(SECONDS, time left before the deadline)
  local limit=$1; shift
  local left=$(( DEADLINE - $(date +%s) ))
  (( left < limit )) && limit=$left
  if (( limit < 10 )); then echo "### skipped (deadline): $*"; return; fi
  echo "### timeout $limit $*"; local t0; t0=$(date +%s)
  timeout "$limit" "$@"; echo "### exit $? after $(( $(date +%s) - t0 ))s"
}
PAPER="--config paper-cifar --batch 128 --device cuda"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  git rev-parse --short HEAD 2>/dev/null
  step 100 $PY -m pytest -q -m gpu -p no:cacheprovider tests/test_perf.py tests/test_vector_env.py
  step 35 $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m mtkd_env --env device=cuda \
       dataset=synthetic "teachers=[resnet32x4=random,wrn_28_4=random]" student=ShuffleV2 max_steps=10 \
       batch_size=128 show_progress=false "dataset_kwargs={shape: [3, 32, 32], num_classes: 100, n_train: 1280}"
  step 60 $PY -m benchmarks.vector_env --device cuda --k 1 2 4 8 16 64 --async-max-k 4 --warmup 3 --rounds 3 \
       --per-block 10 --json "$OUT/vector_env_digits.json"
  step 60 $PY -m benchmarks.vector_env --config paper-cifar --device cuda --amp bf16 --channels-last \
       --cudnn-benchmark --shared-batches --k 1 8 --modes batched sync --warmup 2 --rounds 3 --per-block 3 \
       --json "$OUT/vector_env_paper.json"
  step 45 $PY -m benchmarks.step_overhead $PAPER --amp bf16 --channels-last --cudnn-benchmark --methods \
       --warmup 10 --blocks 5 --per-block 15 --json "$OUT/step_overhead_bf16.json"
  step 110 $PY -m benchmarks.step_overhead $PAPER --amp bf16 --channels-last --cudnn-benchmark \
       --compile-mode reduce-overhead --methods --warmup 15 --blocks 3 --per-block 15 \
       --json "$OUT/step_overhead_bf16_graphs.json"
  step 50 $PY -m benchmarks.step_overhead $PAPER --methods --warmup 5 --blocks 3 --per-block 10 \
       --json "$OUT/step_overhead_fp32.json"
  step 20 $PY -m benchmarks.loader --device cuda --workers 4 --images 20000 --batches 100 --json "$OUT/loader.json"
  step 60 $PY -m benchmarks.step_overhead --config paper-cifar --batch 64 --device cuda --warmup 3 \
       --blocks 2 --per-block 6 --json "$OUT/step_overhead_methods.json"
  # 8./9. one row per dense task: the env's step vs the hand-written equal-weight dense KD step on the
  # embedded scenes, then a short episode of torchvision models (weights=None, random teachers)
  step 30 $PY -m benchmarks.step_overhead --config scenes --batch 32 --device cuda --methods --warmup 5 \
       --blocks 3 --per-block 10 --json "$OUT/step_overhead_segmentation.json"
  step 30 $PY -m benchmarks.step_overhead --config scene_boxes --batch 32 --device cuda --methods --warmup 5 \
       --blocks 3 --per-block 10 --json "$OUT/step_overhead_detection.json"
  step 40 $PY -m mtkd_env --env device=cuda task=segmentation dataset=scenes max_steps=10 batch_size=8 \
       "teachers=[deeplabv3_resnet50=random,fcn_resnet50=random]" student=deeplabv3_mobilenet_v2 show_progress=false \
       "dataset_kwargs={size: 128, n_train: 64, n_val: 16, n_test: 16}" eval_batch_size=8 probe_size=8
  step 40 $PY -m mtkd_env --env device=cuda task=detection dataset=scene_boxes max_steps=10 batch_size=8 \
       "teachers=[det_resnet50_fpn=random,det_resnet101_fpn=random]" student=det_mobilenet_v3_fpn show_progress=false \
       "dataset_kwargs={size: 128, n_train: 64, n_val: 16, n_test: 16}" eval_batch_size=8 probe_size=8
} 2>&1 | tee "$OUT/gpu_check.log"
