#!/usr/bin/env bash
# GPU check for users with a GPU: measures the search step and retraining throughput and
# writes one JSON report, OUT_DIR/gpu_check.json (README, Performance, "On a GPU").
#
#   bash bench/gpu_check.sh OUT_DIR [--smoke]
#
# Parts, each under its own time limit (`timeout`), each recorded as ok, failed, timeout
# with its command and output:
#   search_fp32   the bilevel search step at 321x321, batch 2, F=8, L=12, 19 classes:
#                 median step, trace + first step, peak GPU memory (get_memory_info)
#   search_mixed  the same in mixed precision (--mixed_precision=fp16; bf16 with --smoke)
#   retrain       retraining throughput (images/s) of Auto-DeepLab-S at 769x769
# and projected_search: the paper's 40-epoch search time from the fp32 step.
# --smoke runs on the CPU at tiny sizes (crop 33, F=2, L=2, B=1, 2 steps), for the test.
# PYTHON (default: python) and GPU_CHECK_TIMEOUT_S (per part; default 1800, smoke 600).
set -u
if [ $# -lt 1 ] || [ $# -gt 2 ] || { [ $# -eq 2 ] && [ "$2" != "--smoke" ]; }; then
  echo "usage: bash bench/gpu_check.sh OUT_DIR [--smoke]" >&2
  exit 2
fi
OUT_DIR=$1
SMOKE=${2:-}
PY=${PYTHON:-python}
cd "$(dirname "$0")/.."
mkdir -p "$OUT_DIR/parts"
PARTS="$OUT_DIR/parts"

if [ "$SMOKE" = "--smoke" ]; then
  LIMIT=${GPU_CHECK_TIMEOUT_S:-600}
  DEVICE=cpu
  MIXED=bf16
  SEARCH_SIZES="--filter_multiplier=2 --num_layers=2 --num_blocks=1 --num_classes=3 --batch_size=2 --crop_size=33 --steps=2"
  RETRAIN_SIZES="--filter_multiplier=2 --num_classes=3 --batch_size=2 --crop_size=33 --steps=2"
else
  LIMIT=${GPU_CHECK_TIMEOUT_S:-1800}
  DEVICE=gpu
  MIXED=fp16
  SEARCH_SIZES="--filter_multiplier=8 --num_layers=12 --num_classes=19 --batch_size=2 --crop_size=321 --steps=5"
  RETRAIN_SIZES="--filter_multiplier=20 --num_classes=19 --batch_size=2 --crop_size=769 --steps=5"
fi

# run_part NAME COMMAND...: runs COMMAND under the time limit; writes NAME.{cmd,out,status}.
run_part() {
  local name=$1
  shift
  echo "$*" > "$PARTS/$name.cmd"
  echo "gpu_check: $name: $*" >&2
  timeout "$LIMIT" "$@" > "$PARTS/$name.out" 2>&1
  local rc=$?
  if [ $rc -eq 0 ]; then
    echo ok > "$PARTS/$name.status"
  elif [ $rc -eq 124 ]; then
    echo timeout > "$PARTS/$name.status"
  else
    echo failed > "$PARTS/$name.status"
  fi
  echo "gpu_check: $name: $(cat "$PARTS/$name.status")" >&2
}

# shellcheck disable=SC2086  # the size flags are meant to split
run_part search_fp32 "$PY" -m bench.search_step $SEARCH_SIZES --device=$DEVICE
# shellcheck disable=SC2086
run_part search_mixed "$PY" -m bench.search_step $SEARCH_SIZES --device=$DEVICE \
  --mixed_precision=$MIXED
# shellcheck disable=SC2086
run_part retrain "$PY" -m bench.retrain_step $RETRAIN_SIZES --device=$DEVICE

"$PY" -m bench.gpu_report "$OUT_DIR" $SMOKE
