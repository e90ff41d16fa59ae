#!/usr/bin/env bash
# GPU readiness in one go (<= 10 minutes on one H100/H200), figures written to a file.
#
#   bash benchmarks/gpu_check.sh [--out FILE] [--device cuda] [--dry-run]
#
# Runs, in order, each under its own time limit so that the whole script stays within 10 minutes:
#   1. python -m pytest -m gpu                     the probe's CUDA path against CPU fp32 (tests/test_probe_gpu.py)
#   2. probe throughput and MFU at LLaVA-1.5-7B shape (random weights) against the plain loop
#   3. the same at Qwen2.5-VL-7B shape
#   4. mmsift bench --quick --device cuda
# Every step's output is appended to --out (default gpu_check_<date>.txt) with its command, exit status and wall
# time; a failing step does not stop the later ones. --dry-run prints the commands, checks that each entry point
# parses its arguments (--help) and exits without touching a GPU (tests/test_gpu_check.py runs it on CPU).
set -u

OUT="gpu_check_$(date -u +%Y%m%dT%H%M%SZ).txt"
DEVICE=cuda
DRY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --dry-run) DRY=1; shift ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python}"
WORK="$(mktemp -d -t mmsift-gpu-check-XXXXXX)"

# name | time limit (s) | command
STEPS=(
  "pytest-gpu|150|$PY -m pytest -q -m gpu $ROOT/tests"
  "llava-7b-shape|150|$PY $HERE/probe_throughput.py --model llava-7b-shape --device $DEVICE --dtype bfloat16 --n 256 --batch-size 16 --repeats 2 --workdir $WORK/llava"
  "qwen2.5-vl-7b-shape|150|$PY $HERE/probe_throughput.py --model qwen2.5-vl-7b-shape --device $DEVICE --dtype bfloat16 --n 256 --batch-size 16 --repeats 2 --workdir $WORK/qwen"
  "bench-quick|120|mmsift bench --quick --device $DEVICE --out $WORK/bench"
)
# Entry points checked by --dry-run (argument parsing only).
CHECKS=(
  "$PY -m pytest --version"
  "$PY $HERE/probe_throughput.py --help"
  "mmsift bench --help"
)

if [ "$DRY" = 1 ]; then
  status=0
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit cmd <<< "$step"
    echo "step $name (limit ${limit}s): $cmd"
  done
  for cmd in "${CHECKS[@]}"; do
    if $cmd > /dev/null 2>&1; then echo "ok: $cmd"; else echo "FAILED: $cmd"; status=1; fi
  done
  if ! grep -q "qwen2.5-vl-7b-shape" <("$PY" "$HERE/probe_throughput.py" --help 2>&1); then
    echo "FAILED: probe_throughput.py has no qwen2.5-vl-7b-shape model"; status=1
  fi
  echo "dry run: nothing was run on $DEVICE; figures would go to $OUT"
  rm -rf "$WORK"
  exit $status
fi

{
  echo "# mmsift GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# host $(hostname); $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'nvidia-smi not found')"
  echo "# $($PY -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda, "transformers", transformers.__version__)' 2>&1)"
} > "$OUT"

for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit cmd <<< "$step"
  echo "== $name: $cmd" | tee -a "$OUT"
  start=$(date +%s)
  timeout "$limit" bash -c "$cmd" >> "$OUT" 2>&1
  rc=$?
  echo "== $name: exit $rc, $(( $(date +%s) - start )) s" | tee -a "$OUT"
done
rm -rf "$WORK"
echo "figures in $OUT"
