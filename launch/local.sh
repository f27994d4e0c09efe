#!/usr/bin/env bash
# N processes of an entry point on this machine, as if they were N hosts
# (one per GPU, or CPU processes to try a multi-host setup).
#
#   launch/local.sh [--dry-run] [--processes N] [--port P] [--module M] \
#       --workdir DIR --config configs/demo.py [-- more flags]
#
# --module: the entry point (vit_jax.train by default, vit_jax.finetune,
# vit_jax.fewshot, ...). Process 0 coordinates on 127.0.0.1:PORT. With GPUs,
# process i sees only GPU i. Rerunning the same command resumes from the
# workdir. The interpreter is $PYTHON, else the checkout's .venv (where the
# README's set-up installs), else python3.

set -euo pipefail

DRY_RUN=0
PROCESSES=1
PORT=12355
WORKDIR=""
CONFIG="configs/demo.py"
MODULE="vit_jax.train"
venv_python="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$venv_python" ]]; then PYTHON="$venv_python"; else PYTHON=python3; fi
fi
TRAIN_FLAGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --processes) PROCESSES="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --module) MODULE="$2"; shift 2 ;;
    --) shift; TRAIN_FLAGS=("$@"); break ;;
    *) echo "local.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
die() {
  echo "local.sh: $*" >&2
  exit 2
}
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
# Any entry point of the package whose module is in this checkout.
if [[ "$MODULE" != vit_jax.* || ! -f "$repo_root/${MODULE//.//}.py" ]]; then
  die "--module $MODULE: no ${MODULE//.//}.py in this checkout; pass an entry point such as vit_jax.train or vit_jax.finetune"
fi

gpus=0
if command -v nvidia-smi > /dev/null 2>&1; then
  gpus="$(nvidia-smi -L | wc -l)"
fi

pids=()
for ((i = 0; i < PROCESSES; i++)); do
  command=("$PYTHON" -m "$MODULE" "--config=$CONFIG")
  if [[ -n "$WORKDIR" ]]; then
    command+=("--workdir=$WORKDIR")
  fi
  if [[ "$PROCESSES" -gt 1 ]]; then
    command+=("--coordinator_address=127.0.0.1:$PORT"
              "--num_processes=$PROCESSES" "--process_id=$i")
  fi
  command+=("${TRAIN_FLAGS[@]}")
  visible=()
  if [[ "$PROCESSES" -gt 1 && "$gpus" -ge "$PROCESSES" ]]; then
    visible=(env "CUDA_VISIBLE_DEVICES=$i")
  fi
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "${visible[@]}" "${command[@]}"
    printf '\n'
  else
    "${visible[@]}" "${command[@]}" &
    pids+=("$!")
  fi
done

status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
