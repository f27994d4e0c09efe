#!/usr/bin/env bash
# The GPU figures of docs/benchmarks.md on one GPU, synthetic data (no
# TensorFlow needed): B/16 side by side with timm + torch.compile, the XLA
# flag sweep on B/16, and L/16 and H/14 with their default remat policies.
#
#   launch/gpu_benchmark.sh [--dry-run] [--out DIR] [--steps N] [--only STAGE]
#
# STAGE: b16 | sweep | large | all (default). Each run writes DIR/<name>.json
# and prints its table; timm/torch come from `pip install -e ".[peers]"`.

set -euo pipefail

DRY_RUN=0
OUT="benchmark_results"
STEPS=50
ONLY="all"
PYTHON="${PYTHON:-python3}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    --steps) STEPS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    *) echo "gpu_benchmark.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
case "${ONLY}" in
  b16|sweep|large|all) ;;
  *) echo "gpu_benchmark.sh: --only '${ONLY}' is not one of b16, sweep, large, all" >&2
     exit 2 ;;
esac

run() {  # name, then benchmark flags
  local name="$1"; shift
  local cmd=("${PYTHON}" -m vit_jax.benchmark --steps "${STEPS}" --warmup 5
             --output_json "${OUT}/${name}.json" "$@")
  echo "+ ${cmd[*]}"
  if [[ "${DRY_RUN}" == 0 ]]; then
    mkdir -p "${OUT}"
    "${cmd[@]}"
  fi
}

common=(--config.model.dtype=bfloat16)
if [[ "${ONLY}" == b16 || "${ONLY}" == all ]]; then
  run b16_bs256 --config configs/pretrain.py:model=B/16,batch_size=256 \
    "${common[@]}" --peer timm
fi
if [[ "${ONLY}" == sweep || "${ONLY}" == all ]]; then
  run b16_bs256_xla_flags --config configs/pretrain.py:model=B/16,batch_size=256 \
    "${common[@]}" --sweep_xla_flag=gpu
fi
if [[ "${ONLY}" == large || "${ONLY}" == all ]]; then
  run l16_bs128 --config configs/pretrain.py:model=L/16,batch_size=128 "${common[@]}"
  run h14_bs64 --config configs/pretrain.py:model=H/14,batch_size=64 "${common[@]}"
fi
