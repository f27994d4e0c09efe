#!/usr/bin/env bash
# Pre-training on a Cloud TPU VM slice: one command per stage, every worker.
#
#   launch/tpu_pod.sh [--dry-run] SUBCOMMAND [options] [-- training flags]
#
# Subcommands:
#   create   create the slice (or a queued resource with --queued); --spot for
#            spot capacity
#   setup    copy this checkout to every worker and install it with jax[tpu]
#   train    start --module on every worker (the same command on all hosts;
#            each finds the others through the TPU metadata). Rerunning it
#            after a preemption resumes from the newest checkpoint in --workdir.
#   logs     follow worker 0's log
#   stop     stop training on every worker
#   delete   delete the slice (or the queued resource)
#
# Options (or environment variables):
#   --name NAME          TPU name                          ($TPU_NAME)
#   --zone ZONE          e.g. us-east5-a                    ($TPU_ZONE)
#   --project PROJECT    GCP project                        ($TPU_PROJECT)
#   --accelerator TYPE   e.g. v5p-128, v4-64, v5litepod-256 ($TPU_ACCELERATOR)
#   --runtime VERSION    TPU VM image, e.g. v2-alpha-tpuv5  ($TPU_RUNTIME)
#   --workdir gs://...   checkpoints and logs, shared by all hosts
#   --tfds-data-dir gs://...  TFDS_DATA_DIR on the workers
#   --config SPEC        e.g. configs/pretrain.py:model=B/16,dataset=imagenet2012
#   --module MODULE      the entry point: vit_jax.train (default),
#                        vit_jax.finetune, vit_jax.fewshot, ...
#   --spot, --queued     capacity options for create / delete
#
# --dry-run prints every command instead of running it.

set -euo pipefail

DRY_RUN=0
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR="${TPU_ACCELERATOR:-v5p-8}"
RUNTIME="${TPU_RUNTIME:-v2-alpha-tpuv5}"
WORKDIR=""
TFDS_DATA_DIR_REMOTE="${TFDS_DATA_DIR:-}"
CONFIG="configs/pretrain.py"
MODULE="vit_jax.train"
SPOT=0
QUEUED=0
REMOTE_DIR="vit_jax"
LOG="train.log"

usage() {
  sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}

if [[ "${1:-}" == "--dry-run" ]]; then
  DRY_RUN=1
  shift
fi
SUBCOMMAND="${1:-}"
[[ -n "$SUBCOMMAND" ]] || usage 2
shift

TRAIN_FLAGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator) ACCELERATOR="$2"; shift 2 ;;
    --runtime) RUNTIME="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --tfds-data-dir) TFDS_DATA_DIR_REMOTE="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --module) MODULE="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; TRAIN_FLAGS=("$@"); break ;;
    *) die "unknown option '$1'; see --help" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name (or TPU_NAME) is required"
repo_root="$(cd "$(dirname "$0")/.." && pwd)"
# Any entry point of the package whose module is in this checkout.
if [[ "$MODULE" != vit_jax.* || ! -f "$repo_root/${MODULE//.//}.py" ]]; then
  die "--module $MODULE: no ${MODULE//.//}.py in this checkout; pass an entry point such as vit_jax.train or vit_jax.finetune"
fi
[[ -n "$ZONE" ]] || die "--zone (or TPU_ZONE) is required"
GCLOUD_COMMON=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then
  GCLOUD_COMMON+=(--project="$PROJECT")
fi

on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_COMMON[@]}" \
    --worker=all --command="$1"
}

case "$SUBCOMMAND" in
  create)
    capacity=()
    if [[ "$SPOT" == 1 ]]; then
      capacity+=(--spot)
    fi
    if [[ "$QUEUED" == 1 ]]; then
      run gcloud compute tpus queued-resources create "$NAME" \
        "${GCLOUD_COMMON[@]}" --node-id="$NAME" \
        --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME" \
        "${capacity[@]}"
    else
      run gcloud compute tpus tpu-vm create "$NAME" "${GCLOUD_COMMON[@]}" \
        --accelerator-type="$ACCELERATOR" --version="$RUNTIME" \
        "${capacity[@]}"
    fi
    ;;
  setup)
    run gcloud compute tpus tpu-vm scp --recurse "$repo_root" \
      "$NAME:~/$REMOTE_DIR" "${GCLOUD_COMMON[@]}" --worker=all
    on_all_workers "cd ~/$REMOTE_DIR && python3 -m pip install -q -U pip && python3 -m pip install -q -e . 'jax[tpu]'"
    ;;
  train)
    # Every host writes the same workdir (the entry point says if it needs one).
    if [[ -n "$WORKDIR" ]]; then
      [[ "$WORKDIR" == gs://* ]] || die "--workdir must be a gs:// path that every host can reach (got '$WORKDIR')"
    fi
    flags=""
    for flag in "${TRAIN_FLAGS[@]}"; do
      flags+=" $(printf '%q' "$flag")"
    done
    env_prefix=""
    if [[ -n "$TFDS_DATA_DIR_REMOTE" ]]; then
      env_prefix="TFDS_DATA_DIR=$(printf '%q' "$TFDS_DATA_DIR_REMOTE") "
    fi
    # nohup: the job outlives the ssh session. The same command on every
    # worker; a rerun resumes from the newest checkpoint in the workdir.
    workdir_flag=""
    if [[ -n "$WORKDIR" ]]; then
      workdir_flag=" --workdir=$(printf '%q' "$WORKDIR")"
    fi
    on_all_workers "cd ~/$REMOTE_DIR && ${env_prefix}nohup python3 -m $MODULE --config=$(printf '%q' "$CONFIG")$workdir_flag$flags > ~/$LOG 2>&1 &"
    ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$NAME" "${GCLOUD_COMMON[@]}" \
      --worker=0 --command="tail -n 100 -f ~/$LOG"
    ;;
  stop)
    on_all_workers "pkill -TERM -f $MODULE || true"
    ;;
  delete)
    if [[ "$QUEUED" == 1 ]]; then
      run gcloud compute tpus queued-resources delete "$NAME" \
        "${GCLOUD_COMMON[@]}" --force --quiet
    else
      run gcloud compute tpus tpu-vm delete "$NAME" "${GCLOUD_COMMON[@]}" --quiet
    fi
    ;;
  *)
    die "unknown subcommand '$SUBCOMMAND'; expected create, setup, train, logs, stop or delete"
    ;;
esac
