#!/usr/bin/env bash
# Multi-node training with torchrun's c10d rendezvous. Run the same command on every node:
#   NNODES=4 GPUS_PER_NODE=8 RDZV_HOST=node0.example RDZV_ID=pretrain-1 \
#   CONFIG=trainer/configs/pretrain-kosmos-1.json deploy/train/torchrun.sh [--resume] [--set k=v ...]
# Shards are read from the config's object-storage paths (gs://, s3:// through fsspec) and
# checkpoints written to run.checkpoint_dir; a restarted job continues with --resume.
set -euo pipefail
: "${NNODES:?}" "${RDZV_HOST:?}"
GPUS_PER_NODE="${GPUS_PER_NODE:-8}"
RDZV_PORT="${RDZV_PORT:-29500}"
RDZV_ID="${RDZV_ID:-kosmos}"
CONFIG="${CONFIG:-trainer/configs/pretrain-kosmos-1.json}"
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-8}"
exec scripts/in-venv torchrun \
  --nnodes "${NNODES}" \
  --nproc_per_node "${GPUS_PER_NODE}" \
  --rdzv_backend c10d \
  --rdzv_endpoint "${RDZV_HOST}:${RDZV_PORT}" \
  --rdzv_id "${RDZV_ID}" \
  --max_restarts "${MAX_RESTARTS:-3}" \
  -m pipeline.cli train --config "${CONFIG}" "$@"
